"""TextureActor without Ray: per-row failures become status rows, the actor keeps serving."""

from __future__ import annotations

import json

import numpy as np
import trimesh

from actors.texture_actor import CODE_COMMIT, CODE_INTERNAL, CODE_OOM, STATUS_COLUMNS, TextureActor, classify_error
from core.errors import MeshReadError


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[dict, str | None]] = []
        self.fail = fail

    def __call__(self, result: dict, bundle_dir: str | None) -> None:
        self.calls.append((result, bundle_dir))
        if self.fail:
            raise OSError("bucket gone")


def _batch(**cols) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=object) for k, v in cols.items()}


def _row_batch(mesh: str, asset_id: str = "a1") -> dict[str, np.ndarray]:
    return _batch(asset_id=[asset_id], key=[asset_id], row_index=[3], mesh_uri=[mesh], prompt=["x"],
                  negative_prompt=[""], seed=[1], preset=["cpu-demo"], options=[json.dumps({"views": 1})],
                  content_key=["0" * 64])


def test_bad_mesh_becomes_failed_row_and_is_committed(tmp_path):
    bad = tmp_path / "points.ply"
    trimesh.PointCloud([[0, 0, 0], [1, 0, 0], [0, 1, 0]]).export(bad)
    commit = Recorder()
    actor = TextureActor(preset="cpu-demo", commit=commit, device="cpu", cache_dir=str(tmp_path / "c"))
    out = actor(_row_batch(str(bad)))
    assert set(out) == set(STATUS_COLUMNS)
    assert out["status"] == ["failed"] and out["error_code"] == ["mesh_no_faces"] and out["committed"] == [True]
    result, bundle = commit.calls[0]
    assert bundle is None and result["status"] == "failed" and result["content_key"] == "0" * 64
    assert result["row_index"] == 3 and isinstance(result["seed"], int)


def test_unexpected_errors_and_oom_are_isolated(tmp_path, monkeypatch):
    commit = Recorder()
    actor = TextureActor(preset="cpu-demo", commit=commit, device="cpu")
    errors = iter([RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), KeyError("boom")])

    def explode(row, work_dir):
        raise next(errors)

    monkeypatch.setattr(actor, "_texture_one", explode)
    first = actor(_row_batch("m.obj", "a1"))
    second = actor(_row_batch("m.obj", "a2"))
    assert first["error_code"] == [CODE_OOM] and second["error_code"] == [CODE_INTERNAL]
    assert "KeyError" in second["error"][0]
    assert len(commit.calls) == 2


def test_commit_failure_is_reported_not_raised(tmp_path):
    actor = TextureActor(preset="cpu-demo", commit=Recorder(fail=True), device="cpu")
    out = actor(_row_batch(str(tmp_path / "missing.obj")))
    assert out["status"] == ["failed"] and out["error_code"] == [CODE_COMMIT] and out["committed"] == [False]


def test_classify_error_keeps_castex_codes():
    assert classify_error(MeshReadError("nope")) == ("mesh_unreadable", "nope")
