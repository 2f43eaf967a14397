"""`AssetRecord`: the outcome of one manifest row, and the Parquet schema of the index.

One record per manifest row and run, whatever happened: `ok` (bundle in a shard), `failed`
(`error_code` + redacted `error`), or `skipped` (same content already committed, `shard` and
`members` point at the existing bundle). The same record is stored as the `<key>.json` member of
the asset's tar (so a shard is self-describing) and as one row of the index.

Nested values use Parquet maps (`timings`, `losses`, `model_ids`) so they stay queryable, and
`options` is JSON text because override values have mixed types.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import pyarrow as pa

from pipeline.manifest import ErrorRecord, ManifestRow
from pipeline.redact import redact

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"
STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_SKIPPED)

# Codes for skipped rows (kept next to the pipeline.errors codes in the summary's reasons).
SKIP_ALREADY_COMMITTED = "already_committed"
SKIP_DUPLICATE_CONTENT = "duplicate_content"

INDEX_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("row_index", pa.int64()),
    pa.field("asset_id", pa.string()),
    pa.field("key", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error_code", pa.string()),
    pa.field("error", pa.string()),
    pa.field("mesh_uri", pa.string()),
    pa.field("prompt", pa.string()),
    pa.field("negative_prompt", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("preset", pa.string()),
    pa.field("options", pa.string()),
    pa.field("content_key", pa.string()),
    pa.field("shard", pa.string()),
    pa.field("members", pa.list_(pa.string())),
    pa.field("model_ids", pa.map_(pa.string(), pa.string())),
    pa.field("pipeline_version", pa.string()),
    pa.field("timings", pa.map_(pa.string(), pa.float64())),
    pa.field("losses", pa.map_(pa.string(), pa.float64())),
    pa.field("gpu_seconds", pa.float64()),
    pa.field("finished_at", pa.float64()),
])


def _finite_floats(values: Mapping[str, Any]) -> dict[str, float | None]:
    """Map of floats with NaN/inf as null (strict JSON and comparable in Parquet)."""
    out: dict[str, float | None] = {}
    for k, v in values.items():
        f = float(v) if v is not None else None
        out[str(k)] = f if f is not None and math.isfinite(f) else None
    return out


@dataclass
class AssetRecord:
    """What happened to one manifest row in one run (see module doc).

    `shard` is the shard's path relative to the output root (`run=<id>/shards/...tar`) and
    `members` its tar member names for this asset; the packer fills both for `ok` rows.
    `extra` (e.g. the bundle's metadata.json) goes into the `<key>.json` member only.
    """

    run_id: str
    asset_id: str | None
    key: str | None
    status: str
    row_index: int | None = None
    error_code: str | None = None
    error: str | None = None
    mesh_uri: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    preset: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    content_key: str | None = None
    shard: str | None = None
    members: list[str] = field(default_factory=list)
    model_ids: dict[str, str] = field(default_factory=dict)
    pipeline_version: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    gpu_seconds: float = 0.0
    finished_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        # Never store a credential: URIs and messages are redacted on the way in.
        if self.mesh_uri is not None:
            self.mesh_uri = redact(self.mesh_uri)
        if self.error is not None:
            self.error = redact(self.error)

    # -- constructors --------------------------------------------------------------------------

    @classmethod
    def from_row(cls, row: ManifestRow, run_id: str, status: str, **fields_: Any) -> AssetRecord:
        """Record for a validated manifest row; `fields_` add results (content_key, timings...)."""
        base = dict(run_id=run_id, asset_id=row.asset_id, key=row.key, status=status, row_index=row.row_index,
                    mesh_uri=row.mesh_uri, prompt=row.prompt, negative_prompt=row.negative_prompt,
                    seed=row.seed, preset=row.preset, options=dict(row.options))
        base.update(fields_)
        return cls(**base)

    @classmethod
    def from_error(cls, err: ErrorRecord, run_id: str) -> AssetRecord:
        """`failed` record for a row rejected by validation."""
        return cls(run_id=run_id, asset_id=err.asset_id, key=err.key, status=STATUS_FAILED,
                   row_index=err.row_index, error_code=err.code, error=err.reason, mesh_uri=err.mesh_uri,
                   prompt=err.prompt, negative_prompt=err.negative_prompt, seed=err.seed, preset=err.preset,
                   finished_at=time.time())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AssetRecord:
        """Inverse of `to_dict` / of an index row (`options` JSON text and map columns given as
        lists of pairs are accepted); unknown fields are ignored for forward compatibility."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if isinstance(values.get("options"), str):
            values["options"] = json.loads(values["options"]) if values["options"] else {}
        for name in ("model_ids", "timings", "losses"):
            if isinstance(values.get(name), list):
                values[name] = dict(values[name])
            elif values.get(name) is None:
                values[name] = {}
        for name, default in (("members", []), ("options", {}), ("extra", {})):
            if values.get(name) is None:
                values[name] = default
        if values.get("gpu_seconds") is None:
            values["gpu_seconds"] = 0.0
        return cls(**values)

    def with_(self, **changes: Any) -> AssetRecord:
        """Copy with some fields changed."""
        return replace(self, **changes)

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON dict (NaN/inf losses become null)."""
        d = asdict(self)
        d["timings"] = _finite_floats(self.timings)
        d["losses"] = _finite_floats(self.losses)
        return d

    def to_json_bytes(self) -> bytes:
        """The `<key>.json` member: the record, sorted keys, UTF-8."""
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False, allow_nan=False,
                          indent=1).encode("utf-8")

    def to_index_row(self) -> dict[str, Any]:
        """One row matching `INDEX_SCHEMA`."""
        d = self.to_dict()
        d.pop("extra")
        d["options"] = json.dumps(self.options, sort_keys=True, allow_nan=False) if self.options else None
        d["gpu_seconds"] = float(self.gpu_seconds or 0.0)
        return d


def records_to_table(records: list[AssetRecord]) -> pa.Table:
    """Index table for `records` (empty table with the schema when there are none)."""
    return pa.Table.from_pylist([r.to_index_row() for r in records], schema=INDEX_SCHEMA)
