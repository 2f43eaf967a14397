"""Storage side of the batch pipeline: manifest validation, storage keys, content keys, atomic
writes, staging -> shard packing, the index, resume bookkeeping, gc and redaction; on the local
filesystem and, for the main flows, on a moto S3 server."""

from __future__ import annotations

import functools
import http.server
import io
import json
import logging
import os
import tarfile
import threading
import time
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("fsspec")

from core.presets import PRESETS, get_preset  # noqa: E402
from pipeline import errors as perr  # noqa: E402
from pipeline.content_key import content_key  # noqa: E402
from pipeline.fetch import fetch_mesh, make_exists_checker  # noqa: E402
from pipeline.gc import gc  # noqa: E402
from pipeline.index import (  # noqa: E402
    committed_content_keys,
    read_index,
    read_records,
    skipped_record,
    write_index_part,
    write_records_part,
    write_summary,
)
from pipeline.keys import is_safe_key, safe_key  # noqa: E402
from pipeline.layout import staging_dir  # noqa: E402
from pipeline.manifest import ManifestRow, read_manifest, validate_rows  # noqa: E402
from pipeline.records import AssetRecord  # noqa: E402
from pipeline.redact import RedactingFilter, redact  # noqa: E402
from pipeline.shards import ShardConfig, ShardPacker, commit_asset  # noqa: E402
from pipeline.storage import Storage  # noqa: E402
from s3_server import SECRET_KEY, s3  # noqa: E402,F401

CK = "ab" * 32
MESH = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"
BUNDLE_EXTS = ("albedo.png", "orm.png", "normal.png", "glb", "preview.png")


# ---------------------------------------------------------------------------------------------
# helpers


def write_manifest(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def ok_record(run_id: str, asset_id: str, ck: str, gpu_seconds: float = 36.0) -> AssetRecord:
    return AssetRecord(run_id=run_id, asset_id=asset_id, key=safe_key(asset_id), status="ok", prompt="a chair",
                       seed=1, preset="cpu-demo", content_key=ck, model_ids={"stage_1": "m1"},
                       timings={"optimize": 30.0}, losses={"final": 0.5}, gpu_seconds=gpu_seconds)


def files_for(asset_id: str, size: int = 100) -> dict[str, bytes]:
    return {ext: (asset_id + ext).encode() * (size // 10) for ext in BUNDLE_EXTS}


def ck_of(i: int) -> str:
    return f"{i:064x}"


def tar_members(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [m.name for m in tar.getmembers()]


def webdataset_samples(names: list[str]) -> list[tuple[str, list[str]]]:
    """Group member names the way WebDataset does: key = name up to its first dot; a sample is
    a run of consecutive members with the same key."""
    samples: list[tuple[str, list[str]]] = []
    for name in names:
        key, ext = name.split(".", 1)
        if samples and samples[-1][0] == key:
            samples[-1][1].append(ext)
        else:
            samples.append((key, [ext]))
    return samples


def run_flow(storage: Storage, run_id: str, n: int, cfg: ShardConfig) -> list[str]:
    """Commit n distinct assets and pack them all; returns the asset ids."""
    ids = [f"asset_{i:02d}" for i in range(n)]
    for i, asset_id in enumerate(ids):
        commit_asset(storage, ok_record(run_id, asset_id, ck_of(i)), files_for(asset_id))
    ShardPacker(storage, run_id, cfg).pack(final=True)
    return ids


# ---------------------------------------------------------------------------------------------
# manifest


def test_read_manifest_file_dir_glob_and_missing_column(tmp_path: Path) -> None:
    rows = [{"asset_id": "a", "mesh_uri": "/m/a.obj", "prompt": "p"}]
    write_manifest(tmp_path / "m" / "part-0.parquet", rows)
    # Second file lacks nothing required but adds an optional column: schemas are promoted.
    write_manifest(tmp_path / "m" / "part-1.parquet", [{**rows[0], "asset_id": "b", "seed": 3}])
    (tmp_path / "m" / "_SUCCESS").write_bytes(b"")
    assert read_manifest(str(tmp_path / "m" / "part-0.parquet")).num_rows == 1
    table = read_manifest(str(tmp_path / "m"))
    assert table.column("asset_id").to_pylist() == ["a", "b"]
    assert table.column("seed").to_pylist() == [None, 3]
    assert read_manifest(f"file://{tmp_path}/m/part-*.parquet").num_rows == 2

    write_manifest(tmp_path / "bad.parquet", [{"asset_id": "a", "mesh_uri": "/m/a.obj"}])
    with pytest.raises(perr.ManifestError, match="prompt"):
        read_manifest(str(tmp_path / "bad.parquet"))
    with pytest.raises(perr.ManifestError, match="no Parquet files"):
        read_manifest(str(tmp_path / "nothing-here"))


def test_validate_rows_every_reason(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.obj"
    mesh.write_bytes(MESH)
    good = {"asset_id": "chair", "mesh_uri": str(mesh), "prompt": "a wooden chair", "preset": "cpu-demo"}
    rows = [
        good,                                                         # 0 ok
        {**good, "asset_id": None},                                   # 1 missing asset_id
        {**good, "asset_id": "e1", "prompt": "  "},                   # 2 empty prompt
        {**good, "asset_id": "e2", "mesh_uri": None},                 # 3 missing mesh_uri
        {**good, "prompt": "other"},                                  # 4 duplicate of row 0
        {**good, "asset_id": "p1", "preset": "no-such-preset"},       # 5 unknown preset
        {**good, "asset_id": "o1", "options": '{"bogus": 1}'},        # 6 unknown override
        {**good, "asset_id": "o2", "options": '{"texture_size": 512'},  # 7 bad JSON
        {**good, "asset_id": "o3", "options": "[1, 2]"},              # 8 JSON but not an object
        {**good, "asset_id": "s1", "mesh_uri": "ftp://host/x.obj"},   # 9 unsupported scheme
        {**good, "asset_id": "u1", "mesh_uri": str(tmp_path / "gone.obj")},  # 10 unreachable
        {**good, "asset_id": "v1", "seed": -5},                       # 11 bad value
        {**good, "asset_id": "t1", "texture_size": 4},                # 12 override rejected by preset
        {**good, "asset_id": "ok/2", "seed": 7, "texture_size": 512,
         "options": '{"views": 2}', "negative_prompt": "blurry"},     # 13 ok, unsafe id
        {**good, "asset_id": "d1", "preset": None},                   # 14 ok via default preset
    ]
    schema = pa.schema([("asset_id", pa.string()), ("mesh_uri", pa.string()), ("prompt", pa.string()),
                        ("negative_prompt", pa.string()), ("seed", pa.int64()), ("preset", pa.string()),
                        ("texture_size", pa.int64()), ("options", pa.string())])
    table = pa.Table.from_pylist(rows, schema=schema)
    valid, errors = validate_rows(table, known_presets=set(PRESETS), validate_overrides=get_preset,
                                  check_exists=make_exists_checker(), default_preset="cpu-demo")
    assert len(valid) + len(errors) == len(rows)
    codes = {e.row_index: e.code for e in errors}
    assert codes == {1: "missing_field", 2: "empty_field", 3: "missing_field", 4: "duplicate_id",
                     5: "unknown_preset", 6: "bad_override", 7: "bad_options", 8: "bad_options",
                     9: "unsupported_scheme", 10: "unreachable", 11: "bad_value", 12: "bad_override"}
    reasons = {e.row_index: e.reason for e in errors}
    assert "first used by row 0" in reasons[4] and "unreachable object" in reasons[10]
    assert [r.row_index for r in valid] == [0, 13, 14]
    row = valid[1]
    assert row.key == safe_key("ok/2") and row.seed == 7 and row.negative_prompt == "blurry"
    assert row.options == {"views": 2, "texture_size": 512}
    assert valid[2].preset == "cpu-demo"
    # Error records become failed index rows with their reason.
    rec = AssetRecord.from_error(errors[0], "r1")
    assert rec.status == "failed" and rec.error_code == "missing_field"


def test_validate_rows_rejects_missing_column_for_whole_manifest() -> None:
    table = pa.table({"asset_id": ["a"], "prompt": ["p"]})
    with pytest.raises(perr.ManifestError, match="mesh_uri"):
        validate_rows(table, known_presets={"cpu-demo"})


# ---------------------------------------------------------------------------------------------
# keys


def test_safe_key_maps_unsafe_ids_deterministically_and_distinctly() -> None:
    assert safe_key("chair_0001") == "chair_0001"
    assert safe_key("3f2b9c1e-0d5a-4c1e-9a7b-2b8f0e6d4c3a") == "3f2b9c1e-0d5a-4c1e-9a7b-2b8f0e6d4c3a"
    long_id = "x" * 300
    unsafe = ["..", ".", "a/b", "a\\b", "a\x00b", "a\nb", "tab\there", long_id, long_id + "y", "a.b",
              "café", "", "a--b", "-lead", "A/B", "a_b", "a b"]
    keys = [safe_key(i) for i in unsafe]
    assert keys == [safe_key(i) for i in unsafe]                     # deterministic
    assert len(set(keys)) == len(unsafe)                             # distinct (a/b vs a_b vs a b)
    for k in keys:
        assert is_safe_key(k) and "." not in k and "/" not in k and len(k) <= 100
        assert k.isascii() and k.isprintable()
    assert safe_key("a_b") == "a_b"
    # A kept id never looks like a mapped key: ids containing "--" are mapped themselves.
    mapped = safe_key("a.b")
    assert "--" in mapped and safe_key(mapped) != mapped
    assert safe_key("café").startswith("cafe--")


# ---------------------------------------------------------------------------------------------
# content key


def test_content_key_stable_and_sensitive_to_every_input() -> None:
    mesh = "0f" * 32
    base = dict(mesh_sha256=mesh, prompt="a chair", negative_prompt="", preset={"views": 4, "stages": [1, 2]},
                seed=0, model_ids={"stage_1": "m1", "text_encoder": "t"}, pipeline_version="0.1.0")
    key = content_key(**base)
    assert len(key) == 64 and key == content_key(**base)
    reordered = {**base, "preset": {"stages": [1, 2], "views": 4},
                 "model_ids": {"text_encoder": "t", "stage_1": "m1"}}
    assert content_key(**reordered) == key
    assert content_key(**{**base, "negative_prompt": None}) == key
    variants = [
        {"mesh_sha256": "1f" * 32}, {"prompt": "a chair "}, {"negative_prompt": "blurry"},
        {"preset": {"views": 5, "stages": [1, 2]}}, {"seed": 1}, {"model_ids": {"stage_1": "m2", "text_encoder": "t"}},
        {"pipeline_version": "0.1.1"},
    ]
    keys = {content_key(**{**base, **v}) for v in variants}
    assert len(keys) == len(variants) and key not in keys


# ---------------------------------------------------------------------------------------------
# atomic writes


def test_atomic_write_never_exposes_partial_content(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "out"))
    storage.write_atomic("a/b.bin", b"old")
    with pytest.raises(RuntimeError):
        with storage.atomic_writer("a/b.bin") as f:
            f.write(b"half of the new")
            raise RuntimeError("crash midway")
    assert storage.read_bytes("a/b.bin") == b"old"                    # old content intact
    with pytest.raises(RuntimeError):
        with storage.atomic_writer("a/new.bin") as f:
            f.write(b"partial")
            raise RuntimeError("crash midway")
    assert not storage.exists("a/new.bin")
    assert [f.path for f in storage.list("a")] == ["a/b.bin"]         # no temp file left behind
    storage.write_atomic("a/b.bin", b"new")
    assert storage.read_bytes("a/b.bin") == b"new"
    storage.delete("a/b.bin")
    assert not storage.exists("a/b.bin")


# ---------------------------------------------------------------------------------------------
# staging, shards, index


def test_pack_makes_webdataset_shards_respecting_count_target(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    run = "r1"
    ids = ["c", "a/1", "b", "d", "e"]
    for i, asset_id in enumerate(ids):
        commit_asset(storage, ok_record(run, asset_id, ck_of(i)), files_for(asset_id))
    failed = AssetRecord(run_id=run, asset_id="f", key="f", status="failed", error_code="nonfinite",
                         error="NaN in loss", gpu_seconds=10.0)
    commit_asset(storage, failed)
    packer = ShardPacker(storage, run, ShardConfig(target_count=2))
    report = packer.pack()
    assert len(report.shards) == 2 and report.packed == 4 and report.pending == 1 and report.failed == 1
    report = packer.pack(final=True)
    assert len(report.shards) == 1 and report.packed == 1 and report.pending == 0
    assert storage.list(staging_dir(run)) == []

    shards = storage.list(f"run={run}/shards", suffix=".tar")
    assert len(shards) == 3 and [s.path.split("/")[-1][:11] for s in shards] == [
        "shard-00000", "shard-00001", "shard-00002"]
    all_keys = []
    for s in shards:
        names = tar_members(storage.read_bytes(s.path))
        assert names == sorted(names)                                    # key order, contiguous samples
        samples = webdataset_samples(names)
        for _key, exts in samples:
            assert sorted(exts) == sorted([*BUNDLE_EXTS, "json"])
        all_keys += [k for k, _ in samples]
    assert sorted(all_keys) == sorted(safe_key(i) for i in ids)

    index = read_index(str(tmp_path))
    assert index.num_rows == 6 and index.schema.field("members").type == pa.list_(pa.string())
    rows = {r["asset_id"]: r for r in index.to_pylist()}
    assert rows["f"]["status"] == "failed" and rows["f"]["shard"] is None
    ok = rows["a/1"]
    assert ok["status"] == "ok" and ok["key"] == safe_key("a/1") and ok["content_key"] == ck_of(1)
    assert ok["members"][0] == f"{safe_key('a/1')}.albedo.png" and dict(ok["timings"]) == {"optimize": 30.0}
    # The json member is the asset's record.
    with storage.open_read(ok["shard"]) as f, tarfile.open(fileobj=f) as tar:
        meta = json.loads(tar.extractfile(f"{ok['key']}.json").read())
    assert meta["asset_id"] == "a/1" and meta["content_key"] == ck_of(1)


def test_pack_respects_byte_target(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    for i in range(4):
        commit_asset(storage, ok_record("r", f"a{i}", ck_of(i)), files_for(f"a{i}", size=2000))
    one = storage.list(staging_dir("r"))[0].size
    report = ShardPacker(storage, "r", ShardConfig(target_count=100, target_bytes=int(one * 2.5))).pack(final=True)
    assert len(report.shards) == 2                                       # 2 + 2 assets
    assert all(len(webdataset_samples(tar_members(storage.read_bytes(s)))) == 2 for s in report.shards)


def test_pack_dedupes_content_and_recovers_from_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = Storage(str(tmp_path))
    run = "r"
    commit_asset(storage, ok_record(run, "a", CK), files_for("a"))
    commit_asset(storage, ok_record(run, "b", CK), files_for("b"))      # same content as a
    commit_asset(storage, ok_record(run, "c", ck_of(3)), files_for("c"))
    # A retried task fails after an earlier attempt succeeded: ok wins.
    commit_asset(storage, AssetRecord(run_id=run, asset_id="c", key="c", status="failed", error_code="x"))

    # Crash after shard + index part, before their staging objects are deleted (the first
    # delete, of the superseded failure, goes through).
    real_delete = storage.delete_many
    calls = []

    def crash(paths: list[str]) -> None:
        calls.append(paths)
        if len(calls) > 1:
            raise KeyboardInterrupt("killed")
        real_delete(paths)

    monkeypatch.setattr(storage, "delete_many", crash)
    with pytest.raises(KeyboardInterrupt):
        ShardPacker(storage, run).pack(final=True)
    monkeypatch.undo()
    assert calls[0] == [f"{staging_dir(run)}/failed.c.tar"]
    assert len(storage.list(staging_dir(run))) == 3
    report = ShardPacker(storage, run).pack(final=True)                  # a fresh attempt
    assert report.shards == [] and report.removed == 3
    assert storage.list(staging_dir(run)) == []
    rows = read_index(str(tmp_path)).to_pylist()
    assert sorted((r["asset_id"], r["status"]) for r in rows) == [("a", "ok"), ("b", "skipped"), ("c", "ok")]
    b = next(r for r in rows if r["asset_id"] == "b")
    a = next(r for r in rows if r["asset_id"] == "a")
    assert b["error_code"] == "duplicate_content" and b["shard"] == a["shard"] and b["members"] == a["members"]
    assert len(storage.list(f"run={run}/shards")) == 1


def test_committed_content_keys_sees_indexed_and_staged(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    run_flow(storage, "r1", 2, ShardConfig())
    commit_asset(storage, ok_record("r2", "late", CK), files_for("late"))   # r2 crashed before packing
    found = committed_content_keys(str(tmp_path))
    assert set(found) == {ck_of(0), ck_of(1), CK}
    assert not found[ck_of(0)].staged and found[ck_of(0)].shard.startswith("run=r1/shards/shard-")
    assert found[CK].staged and found[CK].run_id == "r2" and found[CK].key == "late"

    # Resume as run r3: a row whose content is committed is skipped, pointing at the bundle.
    row = ManifestRow(row_index=0, asset_id="again", key="again", mesh_uri="/m.obj", prompt="a chair")
    write_records_part(storage, "r3", [skipped_record(row, "r3", found[ck_of(1)])])
    commit_asset(storage, ok_record("r3", "fresh", ck_of(9)), files_for("fresh"))
    packer = ShardPacker(storage, "r3", ShardConfig(target_count=2))
    assert packer.pack().shards == []                                    # not full: stays staged
    assert packer.pack(final=True).packed == 1
    write_summary(storage, "r3", started_at=0.0, expected_rows=2)
    rows = {r.asset_id: r for r in read_records(storage, run_ids=["r3"])}
    assert rows["again"].status == "skipped" and rows["again"].error_code == "already_committed"
    assert rows["again"].shard == found[ck_of(1)].shard and rows["again"].members == list(found[ck_of(1)].members)
    assert rows["fresh"].status == "ok" and rows["fresh"].shard.startswith("run=r3/shards/")


def test_summary_and_success_written_last(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    commit_asset(storage, ok_record("r", "a", CK, gpu_seconds=1800.0), files_for("a"))
    with pytest.raises(perr.IncompleteRunError):
        write_summary(storage, "r", started_at=0.0, finished_at=3600.0)
    ShardPacker(storage, "r").pack(final=True)
    skipped = AssetRecord(run_id="r", asset_id="old", key="old", status="skipped", error_code="already_committed")
    bad = AssetRecord(run_id="r", asset_id="x", key="x", status="failed", error_code="unreachable",
                      error="unreachable object 'https://***@h/x.obj'", gpu_seconds=1800.0)
    write_index_part(storage, "r", [skipped, bad], "records-00000000-00000.parquet")
    with pytest.raises(perr.IncompleteRunError):
        write_summary(storage, "r", started_at=0.0, finished_at=3600.0, expected_rows=4)
    assert not storage.exists("run=r/_SUCCESS")
    summary = write_summary(storage, "r", started_at=0.0, finished_at=7200.0, expected_rows=3)
    assert summary["counts"] == {"total": 3, "ok": 1, "failed": 1, "skipped": 1}
    assert summary["failures_by_reason"] == {"unreachable": 1}
    assert summary["gpu_hours"] == pytest.approx(1.0) and summary["assets_per_hour"] == pytest.approx(0.5)
    assert storage.exists("run=r/_SUCCESS") and json.loads(storage.read_bytes("run=r/summary.json")) == summary


# ---------------------------------------------------------------------------------------------
# gc


def test_gc_removes_debris_and_keeps_complete_runs(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    run_flow(storage, "done", 2, ShardConfig())
    write_summary(storage, "done", started_at=0.0)
    complete_files = {f.path for f in storage.list("run=done")}
    # Crashed run: an indexed staging leftover, an unindexed shard, a temp file; a second crashed
    # run that never got past a temp file; and a young temp file of a write in progress.
    run_flow(storage, "crashed", 1, ShardConfig())
    part = storage.list("run=crashed/index")[0].path
    shard = storage.list("run=crashed/shards")[0].path
    leftover = f"{staging_dir('crashed')}/{ck_of(0)}.asset_00.tar"
    storage.write_atomic(leftover, b"packed already")
    orphan = "run=crashed/shards/shard-00007-deadbeef.tar"
    storage.write_atomic(orphan, b"unindexed")
    for rel in ("run=crashed/shards/shard-00008-deadbeef.tar.tmp-1", "run=empty/index/part.tmp-2",
                "run=done/shards/x.tar.tmp-3"):
        storage.write_atomic(rel, b"partial")
    old = time.time() - 10 * 3600
    for rel in (orphan, "run=crashed/shards/shard-00008-deadbeef.tar.tmp-1", "run=empty/index/part.tmp-2",
                "run=done/shards/x.tar.tmp-3"):
        os.utime(storage.path(rel), (old, old))
    for d in ("run=empty/index", "run=empty"):
        os.utime(storage.path(d), (old, old))
    storage.write_atomic("run=crashed/index/young.tmp-4", b"in progress")

    dry = gc(str(tmp_path), older_than_s=3600)
    assert storage.exists(orphan) and storage.exists(leftover)
    report = gc(str(tmp_path), dry_run=False, older_than_s=3600)
    assert report.paths == dry.paths and report.empty_runs == dry.empty_runs == ["run=empty"]
    assert sorted(report.tmp_files) == ["run=crashed/shards/shard-00008-deadbeef.tar.tmp-1",
                                        "run=done/shards/x.tar.tmp-3", "run=empty/index/part.tmp-2"]
    assert report.packed_staging == [leftover] and report.orphan_shards == [orphan]
    assert not storage.exists(orphan) and not storage.exists(leftover) and not storage.exists("run=empty")
    assert storage.exists(part) and storage.exists(shard) and storage.exists("run=crashed/index/young.tmp-4")
    assert {f.path for f in storage.list("run=done")} == complete_files
    assert read_index(str(tmp_path)).num_rows == 3


# ---------------------------------------------------------------------------------------------
# redaction and fetching


def test_redact_removes_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENVSECRETvalue123")
    options = {"key": "AKIAEXAMPLE", "secret": "opt-secret-xyz", "client_kwargs": {"endpoint_url": "http://h:1"},
               "token": "tok-abc-123", "anon": False}
    Storage("memory://castex-redact", options)  # registers the option secrets
    clean = redact(options)
    assert clean["key"] == clean["secret"] == clean["token"] == "***"
    assert clean["client_kwargs"] == {"endpoint_url": "http://h:1"} and clean["anon"] is False
    text = redact("boto said opt-secret-xyz / ENVSECRETvalue123 for https://user:pa55@host/x.obj "
                  "and https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F&X-Amz-Signature=abcdef&v=1")
    for secret in ("opt-secret-xyz", "ENVSECRETvalue123", "pa55", "user:", "abcdef", "AKIA%2F"):
        assert secret not in text
    assert "https://***@host/x.obj" in text and "v=1" in text
    assert "pa55" not in repr(Storage("memory://castex-redact2", {"secret": "pa55word"}))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("castex.test.redact")
    log.addHandler(handler)
    try:
        try:
            raise OSError("denied for opt-secret-xyz")
        except OSError:
            log.exception("fetch %s failed", "s3://b/k?token=tok-abc-123")
    finally:
        log.removeHandler(handler)
    assert "fetch s3://b/k?token=*** failed" in stream.getvalue() and "OSError: denied for ***" in stream.getvalue()
    assert "tok-abc-123" not in stream.getvalue() and "opt-secret-xyz" not in stream.getvalue()
    rec = AssetRecord(run_id="r", asset_id="a", key="a", status="failed", mesh_uri="https://u:pa55@h/a.obj",
                      error="fetch failed for https://u:pa55@h/a.obj with opt-secret-xyz")
    assert "pa55" not in json.dumps(rec.to_index_row()) and "opt-secret-xyz" not in rec.error


@pytest.fixture()
def http_root(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_fetch_mesh_local_http_and_errors(tmp_path: Path, http_root) -> None:
    pytest.importorskip("aiohttp")  # fsspec's HTTP filesystem
    local = tmp_path / "m.obj"
    local.write_bytes(MESH)
    assert fetch_mesh(str(local), tmp_path / "dl") == local
    assert fetch_mesh(f"file://{local}", tmp_path / "dl") == local
    root, base = http_root
    (root / "chair.obj").write_bytes(b"mtllib chair.mtl\n" + MESH)
    (root / "chair.mtl").write_bytes(b"newmtl m\nmap_Kd tex/wood.png\n")
    (root / "tex").mkdir()
    (root / "tex" / "wood.png").write_bytes(b"png")
    got = fetch_mesh(f"{base}/chair.obj", tmp_path / "dl")
    assert got.suffix == ".obj" and got.read_bytes().endswith(MESH)
    assert (got.parent / "chair.mtl").is_file() and (got.parent / "tex" / "wood.png").read_bytes() == b"png"
    with pytest.raises(perr.FetchError, match="unreachable object") as exc:
        fetch_mesh(f"http://user:pa55@127.0.0.1:{base.rsplit(':', 1)[1]}/missing.glb", tmp_path / "dl")
    assert exc.value.code == "unreachable" and "pa55" not in str(exc.value)
    with pytest.raises(perr.FetchError):
        fetch_mesh(str(tmp_path / "nope.glb"), tmp_path / "dl")
    with pytest.raises(perr.UnsupportedSchemeError):
        fetch_mesh("ftp://h/x.obj", tmp_path / "dl")


# ---------------------------------------------------------------------------------------------
# the same flows on S3 (moto)


def test_s3_manifest_fetch_and_validation(s3, tmp_path: Path) -> None:  # noqa: F811
    opts = s3.storage_options
    storage = Storage(s3.uri(), opts)
    storage.write_atomic("meshes/chair.obj", MESH)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([
        {"asset_id": "chair", "mesh_uri": s3.uri("meshes/chair.obj"), "prompt": "a chair"},
        {"asset_id": "ghost", "mesh_uri": s3.uri("meshes/ghost.obj"), "prompt": "a ghost"},
    ]), buf)
    storage.write_atomic("manifests/m/part-0.parquet", buf.getvalue())
    table = read_manifest(s3.uri("manifests/m"), opts)
    valid, errors = validate_rows(table, known_presets={"cpu-demo"}, default_preset="cpu-demo",
                                  check_exists=make_exists_checker(opts))
    assert [r.asset_id for r in valid] == ["chair"] and [e.code for e in errors] == ["unreachable"]
    path = fetch_mesh(valid[0].mesh_uri, tmp_path / "dl", opts)
    assert path.read_bytes() == MESH and path.name == "chair.obj"
    with pytest.raises(perr.FetchError) as exc:
        fetch_mesh(s3.uri("meshes/ghost.obj"), tmp_path / "dl", opts)
    assert SECRET_KEY not in str(exc.value)


def test_s3_commit_pack_resume_summary_gc(s3) -> None:  # noqa: F811
    out = s3.uri("out")
    storage = Storage(out, s3.storage_options)
    assert storage.list() == []
    with pytest.raises(RuntimeError):
        with storage.atomic_writer("run=r1/shards/partial.tar") as f:
            f.write(b"partial")
            raise RuntimeError("crash midway")
    assert not storage.exists("run=r1/shards/partial.tar")
    ids = run_flow(storage, "r1", 3, ShardConfig(target_count=2))
    write_summary(storage, "r1", started_at=0.0, expected_rows=3)
    commit_asset(storage, ok_record("r2", "new", CK), files_for("new"))  # r2 crashes before packing
    found = committed_content_keys(out, s3.storage_options)
    assert set(found) == {ck_of(0), ck_of(1), ck_of(2), CK} and found[CK].staged
    shard = found[ck_of(2)].shard
    names = tar_members(storage.read_bytes(shard))
    assert webdataset_samples(names)[0][0] == safe_key(ids[2])
    records = read_records(out, s3.storage_options)
    assert sorted(r.asset_id for r in records) == ids and all(r.status == "ok" for r in records)
    leftover = f"run=r1/staging/{ck_of(0)}.{safe_key(ids[0])}.tar"
    orphan = "run=r1/shards/shard-00009-deadbeef.tar"
    storage.write_atomic(leftover, b"already packed")
    storage.write_atomic(orphan, b"never indexed")
    report = gc(out, s3.storage_options, dry_run=False, older_than_s=30, now=time.time() + 60)
    assert report.packed_staging == [leftover] and report.orphan_shards == [orphan]
    assert not storage.exists(leftover) and not storage.exists(orphan)
    assert storage.exists(shard) and storage.exists("run=r2/staging/" + f"{CK}.new.tar")
    ShardPacker(storage, "r2").pack(final=True)
    assert committed_content_keys(storage)[CK].shard.startswith("run=r2/shards/")
    blob = json.dumps([str(r) for r in read_records(storage)]) + storage.read_bytes("run=r1/summary.json").decode()
    assert SECRET_KEY not in blob
