"""Where everything lives under the output root `OUT` (names are part of the output format).

    OUT/run=<run_id>/staging/<content_key>.<key>.tar   one finished asset, until packed
    OUT/run=<run_id>/staging/failed.<key>.tar          one failed asset (record only)
    OUT/run=<run_id>/shards/shard-<NNNNN>-<attempt>.tar
    OUT/run=<run_id>/index/part-<NNNNN>-<attempt>.parquet   rows of the shard with that name
    OUT/run=<run_id>/index/records-<attempt>-<NNNNN>.parquet rows without a shard (failures...)
    OUT/run=<run_id>/summary.json
    OUT/run=<run_id>/_SUCCESS                           written last

Staging names carry the content key so that `committed_content_keys` learns what a crashed run
finished from a listing alone, without reading the objects. Keys never contain `.` (see
`pipeline.keys`) and content keys are hex, so a staging name splits unambiguously at its dots.

Shard names: `NNNNN` continues after the highest number already in the run directory (so a
resumed run keeps counting up) and `<attempt>` is 8 random hex digits chosen per packer. The
listing is not atomic, so two packers (a crashed attempt still flushing, and its resume) may
pick the same `NNNNN`; the attempt suffix keeps their names distinct, and no shard is ever
overwritten. Readers find shards through the index or `shards/shard-*.tar`.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

from pipeline.content_key import is_content_key
from pipeline.keys import is_safe_key

RUN_PREFIX = "run="
STAGING_DIR = "staging"
SHARDS_DIR = "shards"
INDEX_DIR = "index"
SUMMARY_NAME = "summary.json"
SUCCESS_NAME = "_SUCCESS"
FAILED_PREFIX = "failed"

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
SHARD_RE = re.compile(r"shard-(?P<seq>\d{5,})-(?P<attempt>[0-9a-f]{8})\.tar")
INDEX_PART_RE = re.compile(r"(?:part-(?P<seq>\d{5,})-(?P<attempt>[0-9a-f]{8})|records-[0-9a-f]{8}-\d{5,})\.parquet")


def new_run_id() -> str:
    """Sortable, unique run id: UTC time plus 6 random hex digits (`20260101T120000Z-1a2b3c`)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def new_attempt_id() -> str:
    """8 random hex digits naming one packer's shards."""
    return secrets.token_hex(4)


def check_run_id(run_id: str) -> str:
    """Refuse run ids that would escape or confuse the layout (`/`, `=`, `..`, spaces)."""
    if not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise ValueError(f"invalid run id {run_id!r}: use letters, digits, '_', '-', '.'")
    return run_id


def run_dir(run_id: str) -> str:
    return f"{RUN_PREFIX}{check_run_id(run_id)}"


def run_id_of(dir_name: str) -> str | None:
    """Run id of a `run=<id>` directory name, None for anything else."""
    if not dir_name.startswith(RUN_PREFIX):
        return None
    run_id = dir_name[len(RUN_PREFIX):]
    return run_id if _RUN_ID.fullmatch(run_id) and ".." not in run_id else None


def staging_dir(run_id: str) -> str:
    return f"{run_dir(run_id)}/{STAGING_DIR}"


def shards_dir(run_id: str) -> str:
    return f"{run_dir(run_id)}/{SHARDS_DIR}"


def index_dir(run_id: str) -> str:
    return f"{run_dir(run_id)}/{INDEX_DIR}"


def summary_path(run_id: str) -> str:
    return f"{run_dir(run_id)}/{SUMMARY_NAME}"


def success_path(run_id: str) -> str:
    return f"{run_dir(run_id)}/{SUCCESS_NAME}"


def shard_name(seq: int, attempt: str) -> str:
    return f"shard-{seq:05d}-{attempt}.tar"


def index_part_name(shard: str) -> str:
    """Index part holding the rows of `shard` (same number and attempt)."""
    m = SHARD_RE.fullmatch(shard)
    if not m:
        raise ValueError(f"not a shard name: {shard!r}")
    return f"part-{m.group('seq')}-{m.group('attempt')}.parquet"


def records_part_name(attempt: str, seq: int) -> str:
    return f"records-{attempt}-{seq:05d}.parquet"


@dataclass(frozen=True)
class StagingName:
    """A parsed staging object name: `content_key` is None for failed assets."""

    key: str
    content_key: str | None

    @property
    def ok(self) -> bool:
        return self.content_key is not None

    @property
    def name(self) -> str:
        return f"{self.content_key or FAILED_PREFIX}.{self.key}.tar"


def parse_staging_name(name: str) -> StagingName | None:
    """Parse `<content_key>.<key>.tar` / `failed.<key>.tar`; None for anything else (temp
    files, foreign objects), which packers and readers then ignore."""
    if not name.endswith(".tar"):
        return None
    parts = name[:-len(".tar")].split(".")
    if len(parts) != 2 or not is_safe_key(parts[1]):
        return None
    head, key = parts
    if head == FAILED_PREFIX:
        return StagingName(key, None)
    if is_content_key(head):
        return StagingName(key, head)
    return None
