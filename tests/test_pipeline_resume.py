"""Resuming without Ray: a crashed run finished under its own run id, and the merged index view.

The crashed attempt is simulated by what it leaves under OUT (an early records part and a staged
asset), so these tests need no cluster: nothing is left to texture.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from core.examples import write_example_mesh
from pipeline.config import RunConfig
from pipeline.graph import run_pipeline
from pipeline.index import read_index, read_merged_index, write_records_part
from pipeline.records import STATUS_FAILED, STATUS_OK, STATUS_SKIPPED, AssetRecord
from pipeline.shards import commit_asset
from pipeline.storage import Storage

CK = "ab" * 32


def _manifest(tmp_path) -> str:
    mesh = write_example_mesh("box", tmp_path / "box.obj")
    table = pa.table({"asset_id": ["a", "b", "c"], "mesh_uri": [str(mesh)] * 3,
                      "prompt": ["a crate", "  ", "a chest"], "seed": pa.array([0, 1, 2], pa.int64())})
    path = tmp_path / "manifest.parquet"
    pq.write_table(table, path)
    return str(path)


def _crashed_attempt(out: str, run_id: str) -> None:
    """What a killed attempt leaves: its validation failure indexed, 'a' and 'c' committed to
    staging (ok, and a failure), nothing packed."""
    storage = Storage(out)
    write_records_part(storage, run_id, [AssetRecord(run_id=run_id, asset_id="b", key="b", status=STATUS_FAILED,
                                                     row_index=1, error_code="empty_field", error="empty prompt")])
    commit_asset(storage, AssetRecord(run_id=run_id, asset_id="a", key="a", status=STATUS_OK, row_index=0,
                                      content_key=CK), {"albedo.png": b"png"})
    commit_asset(storage, AssetRecord(run_id=run_id, asset_id="c", key="c", status=STATUS_FAILED, row_index=2,
                                      error_code="oom", error="out of memory"))


def test_same_run_id_finishes_the_crashed_attempt(tmp_path):
    out = str(tmp_path / "out")
    _crashed_attempt(out, "r1")
    config = RunConfig(manifest=_manifest(tmp_path), out=out, run_id="r1", device="cpu",
                       cache_dir=str(tmp_path / "cache"))
    for _ in range(2):  # finishing, then re-running the complete run: both leave each row once
        summary = run_pipeline(config)
        assert summary["counts"] == {"total": 3, "ok": 1, "failed": 2, "skipped": 0}
        rows = read_index(out, run_ids=["r1"]).to_pylist()
        assert sorted(r["row_index"] for r in rows) == [0, 1, 2]
        ok = next(r for r in rows if r["key"] == "a")
        assert ok["status"] == STATUS_OK and ok["content_key"] == CK and ok["shard"].startswith("run=r1/shards/")
    assert not list((tmp_path / "out" / "run=r1" / "staging").glob("*.tar"))


def test_new_run_id_skips_staged_content_and_merged_view_has_each_asset_once(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    _crashed_attempt(out, "r1")
    # The crashed attempt staged 'a' with content CK: make the new run compute the same key for it.
    import pipeline.graph as graph

    real = graph.compute_content_key
    monkeypatch.setattr(graph, "compute_content_key",
                        lambda row, **kw: {**real(row, **kw), **({"content_key": CK} if row["key"] == "a" else {})})
    config = RunConfig(manifest=_manifest(tmp_path), out=out, run_id="r2", device="cpu",
                       cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(graph, "_texture_stage", lambda rows, *a, **k: [
        {"row_index": r["row_index"], "asset_id": r["asset_id"], "status": "failed", "error_code": "x",
         "error": "not textured in this test", "committed": False, "seconds": 0.0} for r in rows])
    summary = run_pipeline(config)
    assert summary["counts"] == {"total": 3, "ok": 0, "failed": 2, "skipped": 1}
    r2 = {r["key"]: r for r in read_index(out, run_ids=["r2"]).to_pylist()}
    assert (r2["a"]["status"], r2["a"]["shard"]) == (STATUS_SKIPPED, "run=r1/staging/" + CK + ".a.tar")
    assert r2["c"]["error_code"] == "x"  # a staged failure of another run is not "committed": retried

    merged = read_merged_index(out).to_pylist()
    assert sorted((r["key"], r["run_id"]) for r in merged) == [("a", "r2"), ("b", "r2"), ("c", "r2")]
    assert (tmp_path / "out" / r2["a"]["shard"]).is_file()  # the skipped row points at a real bundle

    # Later the crashed run is finished under its own id: its staged bundle moves into a shard,
    # and the merged view follows it there.
    run_pipeline(RunConfig(manifest=config.manifest, out=out, run_id="r1", device="cpu",
                           cache_dir=str(tmp_path / "cache")))
    assert not (tmp_path / "out" / r2["a"]["shard"]).exists()
    a = next(r for r in read_merged_index(out).to_pylist() if r["key"] == "a")
    assert (a["run_id"], a["status"]) == ("r2", STATUS_SKIPPED)
    assert a["shard"].startswith("run=r1/shards/") and "a.albedo.png" in a["members"]
    assert (tmp_path / "out" / a["shard"]).is_file()


def test_row_without_status_is_indexed_once_whether_or_not_it_committed(tmp_path, monkeypatch):
    """Retries exhausted: 'a' committed before its actor died for good, 'c' never committed.
    'a' must be indexed once (as ok, not also as actor_died); 'c' as actor_died."""
    import pipeline.graph as graph

    out = str(tmp_path / "out")

    def texture_stage(rows, run_id, *args, **kwargs):
        storage = Storage(out)
        for r in rows:
            if r["key"] == "a":
                commit_asset(storage, AssetRecord(run_id=run_id, asset_id="a", key="a", status=STATUS_OK,
                                                  row_index=r["row_index"], content_key=r["content_key"]),
                             {"albedo.png": b"png"})
        return []  # no status row came back for any of them

    monkeypatch.setattr(graph, "_texture_stage", texture_stage)
    config = RunConfig(manifest=_manifest(tmp_path), out=out, run_id="r", device="cpu",
                       cache_dir=str(tmp_path / "cache"), actor_task_retries=1)
    summary = run_pipeline(config)
    assert summary["counts"] == {"total": 3, "ok": 1, "failed": 2, "skipped": 0}
    rows = {r["key"]: r for r in read_index(out, run_ids=["r"]).to_pylist()}
    assert len(rows) == 3 and rows["a"]["status"] == STATUS_OK
    assert (rows["c"]["status"], rows["c"]["error_code"]) == (STATUS_FAILED, "actor_died")
    assert "2 attempt" in rows["c"]["error"]


def test_merged_index_prefers_the_newest_run_per_key(tmp_path):
    storage = Storage(str(tmp_path / "out"))

    def rec(run_id, key, row_index, status, at, **kw):
        return AssetRecord(run_id=run_id, asset_id=key, key=key, status=status, row_index=row_index,
                           finished_at=at, **kw)

    # old: a ok, b failed, z ok (z only in the old run); new: a skipped, b ok, and a duplicate-id
    # row of b (same key, another row) that must survive with its run.
    write_records_part(storage, "old", [rec("old", "a", 0, STATUS_OK, 10.0), rec("old", "b", 1, STATUS_FAILED, 11.0),
                                        rec("old", "z", 2, STATUS_OK, 12.0)])
    write_records_part(storage, "new", [rec("new", "a", 0, STATUS_SKIPPED, 20.0), rec("new", "b", 1, STATUS_OK, 21.0),
                                        rec("new", "b", 2, STATUS_FAILED, 5.0, error_code="duplicate_id")])
    merged = sorted((r["run_id"], r["key"], r["row_index"], r["status"])
                    for r in read_merged_index(storage).to_pylist())
    assert merged == [("new", "a", 0, STATUS_SKIPPED), ("new", "b", 1, STATUS_OK), ("new", "b", 2, STATUS_FAILED),
                      ("old", "z", 2, STATUS_OK)]
    assert read_merged_index(str(tmp_path / "empty")).num_rows == 0
