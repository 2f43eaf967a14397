"""End-to-end batch run on local Ray (2 CPUs) with the shipped demo cascade (cpu-demo): index, shards, resume.

One Ray instance for the whole module (start-up costs seconds). The preset is cpu-demo shrunk by
per-row options so each asset takes seconds; the manifest mixes good rows with a bad mesh, an
empty prompt, a duplicate id, a missing file and an unsafe asset id.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trimesh

from core.examples import write_example_mesh
from pipeline.config import RunConfig
from pipeline.graph import run_pipeline
from pipeline.index import read_index
from pipeline.keys import safe_key
from pipeline.layout import success_path

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FAST = json.dumps({"stage_1.steps": 2, "stage_2.steps": 1, "texture_size": 32, "render_size": 32,
                   "preview_size": 32, "views": 1, "preview_views": 1})
UNSAFE_ID = "../weird id/ü?*"


def _manifest(tmp: Path) -> tuple[str, dict[str, str]]:
    """Manifest of 9 rows; returns its path and the expected status (or error code) per row."""
    meshes = tmp / "meshes"
    meshes.mkdir()
    vase = write_example_mesh("vase", meshes / "vase.obj")
    box = write_example_mesh("box", meshes / "box.obj")
    torus = write_example_mesh("torus", meshes / "torus.obj")
    sphere = write_example_mesh("sphere", meshes / "sphere.obj")
    bad = meshes / "points.ply"
    trimesh.PointCloud([[0, 0, 0], [1, 0, 0], [0, 1, 0]]).export(bad)
    rows = [
        ("vase-1", str(vase), "a red vase", "ok"),
        ("box-1", str(box), "a wooden crate", "ok"),
        ("torus-1", str(torus), "a golden ring", "ok"),
        (UNSAFE_ID, str(sphere), "a marble ball", "ok"),
        ("bad-mesh", str(bad), "a broken thing", "mesh_no_faces"),
        ("empty-prompt", str(box), "   ", "empty_field"),
        ("vase-1", str(vase), "a second vase with the same id", "duplicate_id"),
        ("missing", str(meshes / "nope.obj"), "a ghost", "unreachable"),
        ("bad-option", str(box), "a box", "bad_override"),
    ]
    options = [FAST] * len(rows)
    options[-1] = json.dumps({"no_such_knob": 1})
    table = pa.table({"asset_id": [r[0] for r in rows], "mesh_uri": [r[1] for r in rows],
                      "prompt": [r[2] for r in rows], "seed": pa.array(list(range(len(rows))), pa.int64()),
                      "options": options})
    path = tmp / "manifest.parquet"
    pq.write_table(table, path)
    expected = {f"{i}": r[3] for i, r in enumerate(rows)}
    return str(path), expected


def _shard_members(out: Path, run_id: str) -> set[str]:
    names: set[str] = set()
    for shard in (out / f"run={run_id}" / "shards").glob("*.tar"):
        with tarfile.open(shard) as tar:
            names.update(tar.getnames())
    return names


def test_run_index_shards_and_resume(ray_local, models_root, tmp_path):
    manifest, expected = _manifest(tmp_path)
    out = tmp_path / "out"
    config = RunConfig(manifest=manifest, out=str(out), preset="cpu-demo", run_id="first", models_root=models_root,
                       device="cpu", rasterizer="torch", actors=2, cache_dir=str(tmp_path / "cache"), pack_every=2)
    summary = run_pipeline(config)
    assert summary["counts"] == {"total": 9, "ok": 4, "failed": 5, "skipped": 0}
    assert (out / success_path("first")).is_file()

    index = read_index(str(out), run_ids=["first"]).to_pylist()
    assert sorted(r["row_index"] for r in index) == list(range(9))  # every row exactly once
    for r in index:
        want = expected[str(r["row_index"])]
        if want == "ok":
            assert r["status"] == "ok", r
            assert r["shard"] and r["content_key"] and r["members"]
        else:
            assert (r["status"], r["error_code"]) == ("failed", want), r
            assert r["error"]
    unsafe = next(r for r in index if r["asset_id"] == UNSAFE_ID)
    assert unsafe["key"] == safe_key(UNSAFE_ID) and "/" not in unsafe["key"]

    members = _shard_members(out, "first")
    ok_keys = {r["key"] for r in index if r["status"] == "ok"}
    assert {m.split(".", 1)[0] for m in members} == ok_keys  # shards hold exactly the ok assets
    for key in ok_keys:
        for ext in ("albedo.png", "orm.png", "normal.png", "glb", "preview.png", "json"):
            assert f"{key}.{ext}" in members
    assert not list((out / "run=first" / "staging").glob("*.tar"))

    # Second run over the same OUT (through the CLI entry point): every ok row is skipped.
    from jobs.run import main

    code = main(["--manifest", manifest, "--out", str(out), "--run-id", "second", "--models", models_root,
                 "--device", "cpu", "--rasterizer", "torch", "--actors", "1", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    second = read_index(str(out), run_ids=["second"]).to_pylist()
    assert sorted(r["row_index"] for r in second) == list(range(9))
    by_row = {r["row_index"]: r for r in second}
    for i, want in expected.items():
        r = by_row[int(i)]
        if want == "ok":
            assert (r["status"], r["error_code"]) == ("skipped", "already_committed"), r
            assert r["shard"].startswith("run=first/shards/")
        else:
            assert r["status"] == "failed" and r["error_code"] == want
    assert not _shard_members(out, "second")
