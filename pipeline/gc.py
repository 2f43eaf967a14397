"""`gc`: remove the debris crashed runs leave under OUT, never data a reader can reach.

What counts as debris (paths are listed in the report; `dry_run=True`, the default, only lists):

* temp files of interrupted local writes (`*.tmp-<uuid>`), older than `older_than_s`;
* staging objects whose outcome is already in their run's index (a crash between writing an
  index part and deleting the staging objects): no age limit, they are duplicates by definition;
* shards no index row references (a crash between writing a shard and its index part), older
  than `older_than_s` so a packer that is between those two steps right now is left alone;
* run directories without `_SUCCESS` that hold nothing else any more, older than `older_than_s`.

Never removed: index parts, `summary.json`, `_SUCCESS`, shards an index row references, and
staging objects not yet indexed (they are committed assets waiting to be packed; a later
attempt packs them). So in a complete run gc deletes nothing the index points at, and the age
threshold keeps it from racing a run in progress.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.index import RESUME_COLUMNS, as_storage, list_runs, read_records
from pipeline.layout import SHARD_RE, STAGING_DIR, SHARDS_DIR, SUCCESS_NAME, parse_staging_name, run_dir
from pipeline.shards import indexed_outcomes, is_packed
from pipeline.storage import TMP_MARKER, FileInfo, Storage

DEFAULT_OLDER_THAN_S = 24 * 3600.0


@dataclass
class GcReport:
    """Paths (relative to OUT) that were removed, or would be with `dry_run`."""

    dry_run: bool
    tmp_files: list[str] = field(default_factory=list)
    packed_staging: list[str] = field(default_factory=list)
    orphan_shards: list[str] = field(default_factory=list)
    empty_runs: list[str] = field(default_factory=list)
    bytes: int = 0

    @property
    def paths(self) -> list[str]:
        return [*self.tmp_files, *self.packed_staging, *self.orphan_shards]


def _old(info: FileInfo, cutoff: float) -> bool:
    # Unknown age counts as young: when in doubt, keep.
    return info.mtime is not None and info.mtime < cutoff


def _run_is_old(storage: Storage, rdir: str, files: list[FileInfo], cutoff: float) -> bool:
    """True when nothing in the run directory (nor the directory itself) changed since `cutoff`."""
    if files and not all(_old(f, cutoff) for f in files):
        return False
    try:
        info = storage.fs.info(storage.path(rdir))
    except FileNotFoundError:
        return True
    mtime = info.get("mtime")
    return (mtime is None and bool(files)) or (mtime is not None and mtime < cutoff)


def gc(out: Storage | str, storage_options: Mapping[str, Any] | None = None, *, dry_run: bool = True,
       older_than_s: float = DEFAULT_OLDER_THAN_S, now: float | None = None) -> GcReport:
    """Find (and unless `dry_run`, delete) the debris described in the module doc."""
    storage = as_storage(out, storage_options)
    cutoff = (time.time() if now is None else now) - older_than_s
    report = GcReport(dry_run=dry_run)
    for run_id in list_runs(storage):
        rdir = run_dir(run_id)
        files = storage.list(rdir)
        complete = any(f.path == f"{rdir}/{SUCCESS_NAME}" for f in files)
        records = read_records(storage, run_ids=[run_id], columns=RESUME_COLUMNS)
        indexed = indexed_outcomes(records)
        referenced = {r.shard for r in records if r.shard}
        doomed: list[FileInfo] = []
        for info in files:
            name = info.path.rsplit("/", 1)[-1]
            parent = info.path[len(rdir) + 1:].split("/", 1)[0] if "/" in info.path[len(rdir) + 1:] else ""
            if TMP_MARKER in name:
                if _old(info, cutoff):
                    report.tmp_files.append(info.path)
                    doomed.append(info)
            elif parent == STAGING_DIR:
                parsed = parse_staging_name(name)
                if parsed and is_packed(parsed, indexed.get(parsed.key, set())):
                    report.packed_staging.append(info.path)
                    doomed.append(info)
            elif parent == SHARDS_DIR and SHARD_RE.fullmatch(name):
                if info.path not in referenced and _old(info, cutoff):
                    report.orphan_shards.append(info.path)
                    doomed.append(info)
        report.bytes += sum(f.size for f in doomed)
        run_is_old = not complete and _run_is_old(storage, rdir, files, cutoff)  # before deleting
        if not dry_run:
            storage.delete_many([f.path for f in doomed])
        left = [f for f in files if f not in doomed]
        if run_is_old and not left:
            if dry_run or storage.remove_empty_dirs(rdir):
                report.empty_runs.append(rdir)
    return report
