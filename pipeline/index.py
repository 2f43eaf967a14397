"""The metadata index: Parquet parts per run, what is already committed, and the run summary.

Readers take the index as the truth about a run: a shard counts only once an index part names
it. Parts are written atomically (`Storage.write_atomic`) *after* their shard, so no index row
ever points at a missing shard. `summary.json` and then `_SUCCESS` are written last by
`write_summary`, which refuses while the run's staging area still holds unpacked assets, so a
run with `_SUCCESS` has every row in its index.
"""

from __future__ import annotations

import collections
import io
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import IncompleteRunError
from pipeline.layout import (
    INDEX_PART_RE,
    STAGING_DIR,
    index_dir,
    new_attempt_id,
    records_part_name,
    parse_staging_name,
    run_dir,
    run_id_of,
    staging_dir,
    success_path,
    summary_path,
)
from pipeline.manifest import ManifestRow
from pipeline.records import (
    INDEX_SCHEMA,
    SKIP_ALREADY_COMMITTED,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_SKIPPED,
    AssetRecord,
    records_to_table,
)
from pipeline.redact import redact
from pipeline.storage import Storage


# Enough of a row to resume, dedupe and collect garbage; reading only these is much cheaper.
RESUME_COLUMNS = ("run_id", "asset_id", "key", "status", "content_key", "shard", "members")


def as_storage(out: Storage | str, storage_options: Mapping[str, Any] | None = None) -> Storage:
    """Accept either a ready `Storage` or a URI (+ options)."""
    return out if isinstance(out, Storage) else Storage(out, storage_options)


def list_runs(storage: Storage) -> list[str]:
    """Run ids under the output root, sorted (run ids from `new_run_id` sort by start time)."""
    return sorted(r for r in (run_id_of(d) for d in storage.list_dirs("")) if r)


def is_complete(storage: Storage, run_id: str) -> bool:
    return storage.exists(success_path(run_id))


# -- index parts -------------------------------------------------------------------------------


def write_index_part(storage: Storage, run_id: str, records: Iterable[AssetRecord], name: str) -> str:
    """Write `records` as `run=<id>/index/<name>` atomically; returns the relative path.

    Rows are sorted by key then row index, so parts are reproducible for the same records.
    """
    if not INDEX_PART_RE.fullmatch(name):
        raise ValueError(f"index part name {name!r} does not match the layout")
    recs = sorted(records, key=lambda r: (r.key or "", r.row_index if r.row_index is not None else -1))
    for r in recs:
        if r.run_id != run_id:
            raise ValueError(f"record of run {r.run_id!r} written into run {run_id!r}")
    buf = io.BytesIO()
    pq.write_table(records_to_table(recs), buf, compression="zstd")
    rel = f"{index_dir(run_id)}/{name}"
    storage.write_atomic(rel, buf.getvalue())
    return rel


def write_records_part(storage: Storage, run_id: str, records: Iterable[AssetRecord]) -> str:
    """Write rows that have no shard of their own (validation failures and resume skips, known
    before any GPU work) as one index part with a fresh unique name; returns its path."""
    return write_index_part(storage, run_id, records, records_part_name(new_attempt_id(), 0))


def _index_parts(storage: Storage, run_ids: Iterable[str]) -> list[str]:
    parts = []
    for run_id in run_ids:
        for info in storage.list(index_dir(run_id), suffix=".parquet"):
            if INDEX_PART_RE.fullmatch(info.path.rsplit("/", 1)[-1]):
                parts.append(info.path)
    return parts


def _read_part(storage: Storage, rel: str, schema: pa.Schema) -> pa.Table:
    with storage.open_read(rel) as f:
        present = set(pq.read_schema(f).names)
        f.seek(0)
        table = pq.read_table(f, columns=[n for n in schema.names if n in present])
    # Parts written by older versions may lack newer columns: align to today's schema.
    arrays = [table.column(fld.name) if fld.name in present else pa.nulls(table.num_rows, fld.type)
              for fld in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def read_index(out: Storage | str, storage_options: Mapping[str, Any] | None = None, *,
               run_ids: Iterable[str] | None = None, columns: Sequence[str] | None = None) -> pa.Table:
    """All index rows of the given runs (default: every run under OUT), in `INDEX_SCHEMA`
    (or its `columns` subset, which reads only those column chunks).

    Rows are returned as stored, in run then part order; parts are fetched in parallel (one
    GET each on object stores). Staging objects of unfinished runs are not rows yet (see
    `committed_content_keys` for those).
    """
    storage = as_storage(out, storage_options)
    schema = pa.schema([INDEX_SCHEMA.field(c) for c in columns]) if columns else INDEX_SCHEMA
    runs = list(run_ids) if run_ids is not None else list_runs(storage)
    parts = _index_parts(storage, runs)
    if not parts:
        return schema.empty_table()
    with ThreadPoolExecutor(max_workers=min(8, len(parts))) as pool:
        tables = list(pool.map(lambda rel: _read_part(storage, rel, schema), parts))
    return pa.concat_tables(tables)


def read_merged_index(out: Storage | str, storage_options: Mapping[str, Any] | None = None, *,
                      run_ids: Iterable[str] | None = None) -> pa.Table:
    """The catalog across runs: for every asset key, the rows of the newest run that indexed it.

    Why: each run indexes *its* manifest rows, so after a crash and a re-run (a new run id by
    default) the union of runs holds an asset twice: the crashed run's row (if its packer got
    that far) and the re-run's row (`skipped` / `already_committed`, pointing at the bundle the
    crashed run committed). Readers who want one answer per asset take, per key, the rows of the
    run whose rows for that key finished last (`finished_at`, then run id): a re-run supersedes
    what an earlier, possibly crashed, run said about the same assets, while assets that only an
    older run mentions keep that run's rows. All rows of the winning run are kept, so a manifest
    with a duplicate asset id still shows both of its rows (ok + `duplicate_id`), and a complete
    run's manifest rows are each present exactly once. Rows without a key (no usable asset id)
    are grouped together the same way. `skipped` rows say where the bundle is (`shard`,
    `members`); one that points at another run's staging object which that run has packed since
    (it was finished under its own run id) is pointed at the shard now indexed for its content.
    """
    storage = as_storage(out, storage_options)
    table = read_index(storage, run_ids=run_ids)
    if table.num_rows == 0:
        return table
    keys = table.column("key").to_pylist()
    runs = table.column("run_id").to_pylist()
    finished = [f if f is not None else float("-inf") for f in table.column("finished_at").to_pylist()]
    newest: dict[str | None, tuple[float, str]] = {}
    for key, run, at in zip(keys, runs, finished):
        if (at, run) > newest.get(key, (float("-inf"), "")):
            newest[key] = (at, run)
    merged = table.filter(pa.array([newest[key][1] == run for key, run in zip(keys, runs)]))
    return _resolve_moved_staging(storage, merged, table)


def _resolve_moved_staging(storage: Storage, merged: pa.Table, everything: pa.Table) -> pa.Table:
    """Re-point `skipped` rows whose staged bundle has moved into a shard (see read_merged_index)."""
    rows = merged.to_pylist()
    stale = [r for r in rows if r["status"] == STATUS_SKIPPED and r["shard"]
             and f"/{STAGING_DIR}/" in r["shard"] and not storage.exists(r["shard"])]
    if not stale:
        return merged
    packed = {}
    for r in everything.filter(pc.equal(everything.column("status"), STATUS_OK)).to_pylist():
        if r["content_key"] and r["shard"]:
            packed.setdefault(r["content_key"], r)
    for r in stale:
        if (ok := packed.get(r["content_key"])) is not None:
            r["shard"], r["members"] = ok["shard"], ok["members"]
    return pa.Table.from_pylist(rows, schema=merged.schema)


def read_records(out: Storage | str, storage_options: Mapping[str, Any] | None = None, *,
                 run_ids: Iterable[str] | None = None, columns: Sequence[str] | None = None) -> list[AssetRecord]:
    """`read_index` as `AssetRecord`s (fields outside `columns` keep their defaults)."""
    table = read_index(out, storage_options, run_ids=run_ids, columns=columns)
    return [AssetRecord.from_dict(row) for row in table.to_pylist()]


# -- resume ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """Where the bundle of a content key already is.

    `shard` is relative to the output root: a shard tar for indexed assets, or the staging tar
    of a run that has not packed it (yet) when `staged` is True; `members` are the tar member
    names (empty for staged assets: the staging tar holds exactly that asset's members).
    """

    content_key: str
    run_id: str
    key: str
    shard: str
    members: tuple[str, ...] = field(default_factory=tuple)
    asset_id: str | None = None
    staged: bool = False


def committed_content_keys(out: Storage | str, storage_options: Mapping[str, Any] | None = None
                           ) -> dict[str, Location]:
    """Every content key already committed under OUT, by any run, with where its bundle is.

    Sources: `ok` rows of every run's index, and staging objects of runs that crashed (or are
    still running) before packing them. An indexed location wins over a staged one, and among
    several the earliest run (then shard) wins, so the answer is deterministic. A staged
    location can later move into a shard of its run; `read_index` filtered by content key
    resolves it then.
    """
    storage = as_storage(out, storage_options)
    runs = list_runs(storage)
    found: dict[str, Location] = {}
    index = read_index(storage, run_ids=runs, columns=RESUME_COLUMNS)
    ok = index.filter(pc.equal(index.column("status"), STATUS_OK))
    rows = sorted(ok.to_pylist(),
                  key=lambda r: (r["run_id"], r["shard"] or "", r["key"] or ""))
    for r in rows:
        ck = r["content_key"]
        if ck and r["shard"] and ck not in found:
            found[ck] = Location(ck, r["run_id"], r["key"], r["shard"], tuple(r["members"] or ()), r["asset_id"])
    for run_id in runs:
        for info in storage.list(staging_dir(run_id), suffix=".tar"):
            parsed = parse_staging_name(info.path.rsplit("/", 1)[-1])
            if parsed and parsed.ok and parsed.content_key not in found:
                found[parsed.content_key] = Location(parsed.content_key, run_id, parsed.key, info.path, staged=True)
    return found


def skipped_record(row: ManifestRow, run_id: str, location: Location) -> AssetRecord:
    """`skipped` record for a manifest row whose content is already committed at `location`."""
    where = "staged in" if location.staged else "in"
    return AssetRecord.from_row(row, run_id, STATUS_SKIPPED, error_code=SKIP_ALREADY_COMMITTED,
                                error=f"same content already committed {where} run {location.run_id!r} "
                                      f"as {location.key!r}",
                                content_key=location.content_key, shard=location.shard,
                                members=list(location.members))


# -- summary -----------------------------------------------------------------------------------


def summarize(records: Iterable[AssetRecord], *, wall_seconds: float | None = None) -> dict[str, Any]:
    """Counts, failures by reason, GPU-hours and throughput of a run's records.

    GPU-hours = sum of per-asset `gpu_seconds` (ok and failed: failed work used the GPU too) /
    3600. `assets_per_hour` = ok assets per wall-clock hour of the run (skipped rows cost
    nothing and are not throughput); `assets_per_gpu_hour` normalises by GPU time instead.
    """
    recs = list(records)
    counts = collections.Counter(r.status for r in recs)
    failures = collections.Counter(r.error_code or "unknown" for r in recs if r.status == STATUS_FAILED)
    skips = collections.Counter(r.error_code or "unknown" for r in recs if r.status == STATUS_SKIPPED)
    gpu_seconds = sum(float(r.gpu_seconds or 0.0) for r in recs if r.status != STATUS_SKIPPED)
    gpu_hours = gpu_seconds / 3600.0
    ok = counts.get(STATUS_OK, 0)
    summary: dict[str, Any] = {
        "counts": {"total": len(recs), STATUS_OK: ok, STATUS_FAILED: counts.get(STATUS_FAILED, 0),
                   STATUS_SKIPPED: counts.get(STATUS_SKIPPED, 0)},
        "failures_by_reason": dict(sorted(failures.items())),
        "skipped_by_reason": dict(sorted(skips.items())),
        "gpu_hours": gpu_hours,
        "assets_per_gpu_hour": ok / gpu_hours if gpu_hours > 0 else None,
        "wall_seconds": wall_seconds,
        "assets_per_hour": ok / (wall_seconds / 3600.0) if wall_seconds else None,
    }
    return summary


def write_summary(storage: Storage, run_id: str, *, started_at: float, finished_at: float | None = None,
                  expected_rows: int | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Finish a run: write `summary.json` from its index, then `_SUCCESS` (both atomic).

    Raises `IncompleteRunError` when staging still holds assets (pack with `final=True` first),
    or when `expected_rows` (the manifest's row count) differs from the number of index rows:
    a run is only marked complete when every row is committed exactly once.
    """
    if storage.list(staging_dir(run_id), suffix=".tar"):
        raise IncompleteRunError(f"run {run_id!r} still has staged assets; pack them before finishing")
    records = read_records(storage, run_ids=[run_id])
    if expected_rows is not None and len(records) != expected_rows:
        raise IncompleteRunError(f"run {run_id!r} has {len(records)} index rows for {expected_rows} manifest rows")
    finished_at = time.time() if finished_at is None else finished_at
    summary = {"run_id": run_id, "started_at": started_at, "finished_at": finished_at,
               **summarize(records, wall_seconds=max(finished_at - started_at, 0.0))}
    if extra:
        summary["extra"] = redact(dict(extra))
    storage.write_atomic(summary_path(run_id), json.dumps(summary, indent=1, sort_keys=True).encode())
    storage.write_atomic(success_path(run_id), b"")
    return summary


__all__ = ["RESUME_COLUMNS", "Location", "as_storage", "committed_content_keys", "is_complete", "list_runs",
           "read_index", "read_merged_index", "read_records", "run_dir", "skipped_record", "summarize", "write_index_part",
           "write_records_part", "write_summary"]
