"""Per-asset commit and shard packing: durable the moment an asset finishes, sharded later.

Commit. When an asset finishes, `commit_asset` writes ONE small tar,
`run=<id>/staging/<content_key>.<key>.tar` (failures: `failed.<key>.tar`, record only), with the
asset's members in WebDataset layout (`<key>.albedo.png`, `<key>.orm.png`, `<key>.normal.png`,
`<key>.glb`, `<key>.preview.png`, `<key>.json` = its `AssetRecord`). One atomic write: after a
crash the asset is either fully committed or not at all, and only assets in progress are lost.
Committing the same asset again (a retried task) rewrites the same name with equivalent content.

Pack. `ShardPacker.pack` groups staged assets (sorted by key) into shards of at most
`target_count` assets / about `target_bytes` bytes. For each shard, in this order:
1. the shard tar is written atomically (`shards/shard-NNNNN-<attempt>.tar`),
2. its index part (`index/part-NNNNN-<attempt>.parquet`) atomically,
3. its staging objects are deleted.
A crash after 1 leaves an unindexed shard (debris for `gc`; readers go through the index) and
the assets still staged, so they are packed again. A crash after 2 leaves staging objects whose
rows are already indexed: the next pack (and `gc`) recognises and deletes them, so an asset is in
staging *and* a shard only until then, and never indexed twice.

Dedupe. Within a run, staged assets whose content key is already packed (or packed in the same
call under a smaller key) are not stored again: they get a `skipped` row
(`error_code="duplicate_content"`) pointing at the existing members. For one key, an `ok` object
beats a `failed` one (a retry that succeeded), and among several `ok` objects with different
content keys (only possible when a run id is reused with a changed manifest) the newest wins.

Without `final`, only full shards are written and the remainder stays staged for the next call,
so the driver can pack periodically while the run goes on; `final=True` flushes everything.
One packer per run directory at a time (the driver); a crashed attempt's staging can be flushed
by a packer of a later attempt once the crashed one is known dead.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import StorageError
from pipeline.index import RESUME_COLUMNS, read_records, write_index_part
from pipeline.layout import (
    INDEX_PART_RE,
    SHARD_RE,
    StagingName,
    index_dir,
    index_part_name,
    new_attempt_id,
    parse_staging_name,
    records_part_name,
    shard_name,
    shards_dir,
    staging_dir,
)
from pipeline.records import (
    SKIP_DUPLICATE_CONTENT,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_SKIPPED,
    AssetRecord,
)
from pipeline.storage import FileInfo, Storage

# Bundle file (core.export.write_bundle) -> WebDataset member extension.
BUNDLE_MEMBERS: dict[str, str] = {
    "albedo.png": "albedo.png",
    "orm.png": "orm.png",
    "normal.png": "normal.png",
    "model.glb": "glb",
    "preview.png": "preview.png",
}
BUNDLE_METADATA = "metadata.json"
JSON_EXT = "json"


@dataclass(frozen=True)
class ShardConfig:
    """Shard size targets. A shard closes when it has `target_count` assets or the next asset
    would push it past `target_bytes`; one asset larger than that gets a shard of its own."""

    target_count: int = 256
    target_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if self.target_count < 1 or self.target_bytes < 1:
            raise ValueError("shard targets must be >= 1")


@dataclass
class PackReport:
    """What one `pack` call did (paths relative to the output root)."""

    shards: list[str] = field(default_factory=list)
    index_parts: list[str] = field(default_factory=list)
    packed: int = 0       # ok assets written into shards
    failed: int = 0       # failed records indexed
    skipped: int = 0      # duplicate-content records indexed
    pending: int = 0      # staged objects left for a later call (shard not full yet)
    removed: int = 0      # staging objects deleted as already indexed / superseded


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    """Member header with fixed owner, mode and time: identical inputs give identical tars."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _check_ext(ext: str) -> None:
    if not ext or ext.startswith(".") or ext.endswith(".") or "/" in ext or ".." in ext or ext == JSON_EXT:
        raise ValueError(f"bad member extension {ext!r} (e.g. 'albedo.png'; 'json' is the record)")


def build_asset_tar(record: AssetRecord, files: Mapping[str, bytes]) -> bytes:
    """Tar of one asset: `<key>.<ext>` per file plus `<key>.json` (the record, its `members`
    filled in), members sorted by name."""
    if not record.key:
        raise ValueError("record has no key")
    for ext in files:
        _check_ext(ext)
    names = {f"{record.key}.{ext}": data for ext, data in files.items()}
    record = record.with_(members=sorted([*names, f"{record.key}.{JSON_EXT}"]))
    names[f"{record.key}.{JSON_EXT}"] = record.to_json_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(names):
            data = names[name]
            tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
    return buf.getvalue()


def commit_asset(storage: Storage, record: AssetRecord, files: Mapping[str, bytes] | None = None) -> str:
    """Durably commit one finished asset to its run's staging area; returns the object path.

    `ok` records need a `content_key` and their files (`{"albedo.png": b"...", "glb": ...}`);
    `failed` records carry no files. Skipped rows are not staged: the driver writes them with
    `write_index_part` since they cost nothing to recompute.
    """
    if record.status == STATUS_OK:
        if not record.content_key or not files:
            raise ValueError("an ok record needs a content_key and files")
        name = StagingName(record.key or "", record.content_key)
    elif record.status == STATUS_FAILED:
        name = StagingName(record.key or "", None)
        files = {}
    else:
        raise ValueError(f"only ok/failed records are staged, not {record.status!r}")
    if parse_staging_name(name.name) != name:
        raise ValueError(f"record key {record.key!r} / content key {record.content_key!r} are not storage-safe")
    if record.finished_at is None:
        record = record.with_(finished_at=time.time())
    rel = f"{staging_dir(record.run_id)}/{name.name}"
    storage.write_atomic(rel, build_asset_tar(record, files or {}))
    return rel


def commit_bundle_dir(storage: Storage, record: AssetRecord, bundle_dir: str | os.PathLike,
                      members: Mapping[str, str] = BUNDLE_MEMBERS) -> str:
    """`commit_asset` for a directory written by `core.export.write_bundle`: the files named in
    `members` become tar members, and its metadata.json goes into the record's `extra`."""
    bundle = Path(bundle_dir)
    files = {}
    for fname, ext in members.items():
        path = bundle / fname
        if path.is_file():
            files[ext] = path.read_bytes()
    meta = bundle / BUNDLE_METADATA
    if meta.is_file():
        record = record.with_(extra={**record.extra, "bundle": json.loads(meta.read_text("utf-8"))})
    return commit_asset(storage, record, files)


def is_packed(name: StagingName, indexed: set[tuple[str, str | None]]) -> bool:
    """True when a staging object's outcome is already in its run's index (so it is debris):
    a row for its key with the same content key (ok, or skipped as a duplicate), or any row for
    a failed object's key."""
    if name.ok:
        return any(ck == name.content_key for _, ck in indexed)
    return bool(indexed)


def indexed_outcomes(records: list[AssetRecord]) -> dict[str, set[tuple[str, str | None]]]:
    """key -> {(status, content_key)} of a run's index rows, the input of `is_packed`."""
    out: dict[str, set[tuple[str, str | None]]] = {}
    for r in records:
        if r.key:
            out.setdefault(r.key, set()).add((r.status, r.content_key))
    return out


@dataclass
class _Unit:
    """One ok asset to put into a shard, plus staged duplicates of its content."""

    name: StagingName
    info: FileInfo
    duplicates: list[tuple[StagingName, FileInfo]] = field(default_factory=list)


class ShardPacker:
    """Packs one run's staging area into shards + index parts (see module doc)."""

    def __init__(self, storage: Storage, run_id: str, config: ShardConfig | None = None,
                 attempt: str | None = None) -> None:
        self.storage = storage
        self.run_id = run_id
        self.config = config or ShardConfig()
        self.attempt = attempt or new_attempt_id()
        self._loaded = False
        self._indexed: dict[str, set[tuple[str, str | None]]] = {}
        self._content: dict[str, AssetRecord] = {}  # content key -> ok record in this run
        self._next_seq = 0
        self._records_seq = 0

    # -- state ---------------------------------------------------------------------------------

    def _load(self) -> None:
        """Read this run's index once; later updates are tracked in memory (single packer)."""
        records = read_records(self.storage, run_ids=[self.run_id], columns=RESUME_COLUMNS)
        self._indexed = indexed_outcomes(records)
        for r in records:
            if r.status == STATUS_OK and r.content_key:
                self._content.setdefault(r.content_key, r)
        seqs = [int(m.group("seq")) for info in self.storage.list(shards_dir(self.run_id), suffix=".tar")
                if (m := SHARD_RE.fullmatch(info.path.rsplit("/", 1)[-1]))]
        seqs += [int(m.group("seq")) for info in self.storage.list(index_dir(self.run_id), suffix=".parquet")
                 if (m := INDEX_PART_RE.fullmatch(info.path.rsplit("/", 1)[-1])) and m.group("seq")]
        self._next_seq = max(seqs, default=-1) + 1
        self._loaded = True

    def indexed_keys(self) -> set[str]:
        """Keys that have a row in this run's index (this packer's view: what it read at its
        first pack plus what it wrote since). The driver checks it before indexing a row whose
        status never came back: its actor may have committed it before dying."""
        if not self._loaded:
            self._load()
        return set(self._indexed)

    def _remember(self, records: list[AssetRecord]) -> None:
        for r in records:
            if r.key:
                self._indexed.setdefault(r.key, set()).add((r.status, r.content_key))
            if r.status == STATUS_OK and r.content_key:
                self._content.setdefault(r.content_key, r)

    # -- reading staged objects ----------------------------------------------------------------

    def _read_record(self, rel: str, key: str) -> AssetRecord:
        with self.storage.open_read(rel) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            member = tar.extractfile(f"{key}.{JSON_EXT}")
            if member is None:
                raise KeyError(key)
            return AssetRecord.from_dict(json.loads(member.read()))

    def _record(self, rel: str, key: str) -> AssetRecord:
        try:
            record = self._read_record(rel, key)
        except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
            raise StorageError(f"staging object {rel!r} is unreadable ({type(exc).__name__}); "
                               f"inspect or delete it") from None
        if record.key != key or record.run_id != self.run_id:
            raise StorageError(f"staging object {rel!r} holds the record of {record.key!r} in run {record.run_id!r}")
        return record

    def _duplicate_record(self, name: StagingName, info: FileInfo, original: AssetRecord) -> AssetRecord:
        record = self._record(info.path, name.key)
        return record.with_(status=STATUS_SKIPPED, error_code=SKIP_DUPLICATE_CONTENT,
                            error=f"same content as asset {original.asset_id!r}",
                            shard=original.shard, members=list(original.members), gpu_seconds=0.0)

    # -- packing -------------------------------------------------------------------------------

    def _plan(self, infos: list[FileInfo]) -> tuple[list[_Unit], list[tuple[StagingName, FileInfo]],
                                                    list[tuple[StagingName, FileInfo, AssetRecord]], list[str]]:
        by_key: dict[str, list[tuple[StagingName, FileInfo]]] = {}
        debris: list[str] = []
        for info in infos:
            parsed = parse_staging_name(info.path.rsplit("/", 1)[-1])
            if parsed is None:
                continue  # not ours (temp file, foreign object): gc's business
            if is_packed(parsed, self._indexed.get(parsed.key, set())):
                debris.append(info.path)
            else:
                by_key.setdefault(parsed.key, []).append((parsed, info))
        units: list[_Unit] = []
        failed: list[tuple[StagingName, FileInfo]] = []
        dup_of_indexed: list[tuple[StagingName, FileInfo, AssetRecord]] = []
        unit_by_content: dict[str, _Unit] = {}
        newest = lambda e: (e[1].mtime or 0.0, e[0].name)  # noqa: E731
        for key in sorted(by_key):
            entries = by_key[key]
            oks = [e for e in entries if e[0].ok]
            pool = oks or entries
            winner = max(pool, key=newest)
            debris += [e[1].path for e in entries if e is not winner]
            name, info = winner
            if not name.ok:
                failed.append(winner)
            elif name.content_key in self._content:
                dup_of_indexed.append((name, info, self._content[name.content_key]))
            elif name.content_key in unit_by_content:
                unit_by_content[name.content_key].duplicates.append(winner)
            else:
                unit = _Unit(name, info)
                unit_by_content[name.content_key] = unit
                units.append(unit)
        return units, failed, dup_of_indexed, debris

    def _group(self, units: list[_Unit], final: bool) -> tuple[list[list[_Unit]], int]:
        cfg = self.config
        groups: list[list[_Unit]] = []
        current: list[_Unit] = []
        size = 0
        for unit in units:
            if current and (len(current) >= cfg.target_count or size + unit.info.size > cfg.target_bytes):
                groups.append(current)
                current, size = [], 0
            current.append(unit)
            size += unit.info.size
        if current and (final or len(current) >= cfg.target_count or size >= cfg.target_bytes):
            groups.append(current)
            current = []
        return groups, len(current)

    def _write_shard(self, group: list[_Unit], shard_rel: str) -> list[AssetRecord]:
        """Stream every member of the group's staging tars into one shard tar (atomic)."""
        records: list[AssetRecord] = []
        with self.storage.atomic_writer(shard_rel) as out, \
                tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as shard:
            for unit in group:
                key = unit.name.key
                record: AssetRecord | None = None
                members: list[str] = []
                try:
                    with self.storage.open_read(unit.info.path) as f, tarfile.open(fileobj=f, mode="r:") as src:
                        for m in sorted(src.getmembers(), key=lambda m: m.name):
                            if not m.isfile() or not m.name.startswith(f"{key}.") or "/" in m.name:
                                raise ValueError(f"unexpected member {m.name!r}")
                            data = src.extractfile(m)
                            if m.name == f"{key}.{JSON_EXT}":
                                raw = data.read()
                                record = AssetRecord.from_dict(json.loads(raw))
                                shard.addfile(_tar_info(m.name, len(raw)), io.BytesIO(raw))
                            else:
                                shard.addfile(_tar_info(m.name, m.size), data)
                            members.append(m.name)
                except (OSError, tarfile.TarError, ValueError) as exc:
                    raise StorageError(f"staging object {unit.info.path!r} is unreadable: {exc}") from None
                if record is None or record.key != key or record.content_key != unit.name.content_key:
                    raise StorageError(f"staging object {unit.info.path!r} has no matching {key}.json record")
                records.append(record.with_(run_id=self.run_id, status=STATUS_OK, shard=shard_rel, members=members))
        return records

    def pack(self, final: bool = False) -> PackReport:
        """Move staged assets into shards + index parts; `final=True` also writes the last,
        partly filled shard. Safe to call again after a crash at any point."""
        if not self._loaded:
            self._load()
        report = PackReport()
        infos = self.storage.list(staging_dir(self.run_id), suffix=".tar")
        units, failed, dup_of_indexed, debris = self._plan(infos)
        self.storage.delete_many(debris)
        report.removed = len(debris)

        groups, report.pending = self._group(units, final)
        # Records that need no shard (failures, duplicates of already-packed content) ride along
        # with the first index part written in this call. Alone, they get a part only when there
        # are enough of them or the run ends: they are as durable in staging, and this avoids a
        # tiny index part per call.
        loose: list[AssetRecord] = []
        loose_paths: list[str] = []
        if groups or final or len(failed) + len(dup_of_indexed) >= self.config.target_count:
            loose = [self._record(info.path, name.key) for name, info in failed]
            loose += [self._duplicate_record(name, info, original) for name, info, original in dup_of_indexed]
            loose_paths = [info.path for _, info in failed] + [info.path for _, info, _ in dup_of_indexed]
        else:
            report.pending += len(failed) + len(dup_of_indexed)
        for group in groups:
            seq = self._next_seq
            self._next_seq += 1
            shard = shard_name(seq, self.attempt)
            shard_rel = f"{shards_dir(self.run_id)}/{shard}"
            records = self._write_shard(group, shard_rel)
            by_content = {r.content_key: r for r in records}
            paths = [u.info.path for u in group]
            for unit in group:
                for name, info in unit.duplicates:
                    records.append(self._duplicate_record(name, info, by_content[unit.name.content_key]))
                    paths.append(info.path)
            records += loose
            paths += loose_paths
            report.index_parts.append(write_index_part(self.storage, self.run_id, records, index_part_name(shard)))
            report.shards.append(shard_rel)
            self._remember(records)
            self.storage.delete_many(paths)
            self._count(report, records)
            loose, loose_paths = [], []

        if loose:
            name = records_part_name(self.attempt, self._records_seq)
            self._records_seq += 1
            report.index_parts.append(write_index_part(self.storage, self.run_id, loose, name))
            self._remember(loose)
            self.storage.delete_many(loose_paths)
            self._count(report, loose)
        return report

    @staticmethod
    def _count(report: PackReport, records: list[AssetRecord]) -> None:
        for r in records:
            if r.status == STATUS_OK:
                report.packed += 1
            elif r.status == STATUS_FAILED:
                report.failed += 1
            else:
                report.skipped += 1
