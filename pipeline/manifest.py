"""The manifest: a Parquet table of texturing jobs, read and validated before any GPU work.

Columns: `asset_id` (string, required, unique), `mesh_uri` (required), `prompt` (required,
non-empty); optional `negative_prompt`, `seed` (int64), `preset`, `texture_size`, `options`
(JSON object of preset overrides). A missing *required column* (or a column of the wrong type)
is a `ManifestError` for the whole manifest; everything else is judged per row, and a bad row
becomes an `ErrorRecord` with a stable code and a redacted reason, never an exception.

Duplicate ids (policy): the *first* row with an asset id (in manifest order: files sorted by
path, rows in file order) is processed; every later row with that id becomes a `duplicate_id`
error naming the first row. A later row never replaces an earlier one, so which row wins does
not depend on worker timing, and a manifest concatenated twice still textures every asset once.
The id is claimed by the first row even if that row fails for another reason, so a fix for one
row never silently turns another into the processed one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import CastexError
from pipeline.errors import (
    BadOptionsError,
    BadOverrideError,
    BadValueError,
    DuplicateIdError,
    EmptyFieldError,
    FetchError,
    KeyCollisionError,
    ManifestError,
    MissingFieldError,
    RowError,
    UnknownPresetError,
    UnsupportedSchemeError,
)
from pipeline.keys import safe_key
from pipeline.redact import redact
from pipeline.storage import Storage
from pipeline.uri import MESH_SCHEMES, has_glob, scheme_of

__all__ = ["ErrorRecord", "ManifestRow", "read_manifest", "safe_key", "validate_rows",
           "REQUIRED_COLUMNS", "OPTIONAL_COLUMNS"]

REQUIRED_COLUMNS = ("asset_id", "mesh_uri", "prompt")
OPTIONAL_COLUMNS = ("negative_prompt", "seed", "preset", "texture_size", "options")
_STRING_COLUMNS = ("asset_id", "mesh_uri", "prompt", "negative_prompt", "preset")
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class ManifestRow:
    """One validated job. `preset` is resolved (row value or the run's default); `options`
    holds the overrides including `texture_size` when the row sets it."""

    row_index: int
    asset_id: str
    key: str
    mesh_uri: str
    prompt: str
    negative_prompt: str = ""
    seed: int | None = None
    preset: str | None = None
    texture_size: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorRecord:
    """A rejected row: where it is, what it claimed to be, and why (`code` is stable)."""

    row_index: int
    asset_id: str | None
    key: str | None
    code: str
    reason: str
    mesh_uri: str | None = None  # redacted
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    preset: str | None = None


# -- reading -----------------------------------------------------------------------------------


def _data_files(storage: Storage) -> list[str]:
    """Parquet files of a manifest given as one file, a directory or a glob.

    In a directory, hidden and underscore-prefixed names (`_SUCCESS`, `.tmp` files of a writer)
    and non-`.parquet` files are skipped, as Spark/Arrow dataset readers do.
    """
    fs = storage.fs
    if has_glob(storage.root):
        return sorted(p for p in fs.glob(storage.root) if fs.isfile(p))
    if fs.isdir(storage.root):
        found = fs.find(storage.root, withdirs=False)
        return sorted(p for p in found
                      if p.endswith(".parquet")
                      and not any(part.startswith(("_", ".")) for part in p[len(storage.root):].split("/")))
    if fs.isfile(storage.root):
        return [storage.root]
    return []


def read_manifest(uri: str, storage_options: Mapping[str, Any] | None = None) -> pa.Table:
    """Read a manifest (file, directory or glob; local, file://, s3://, gs://) into one table.

    Files are concatenated in path order with schema promotion, so a file that lacks an optional
    column gets nulls there. Raises `ManifestError` when nothing can be read or a required
    column is missing; row-level checks are `validate_rows`' job.
    """
    try:
        storage = Storage(uri, storage_options)
    except CastexError as exc:
        raise ManifestError(f"cannot open manifest: {exc}") from None
    try:
        paths = _data_files(storage)
    except Exception as exc:  # noqa: BLE001 - backend errors (auth, network)
        raise ManifestError(f"cannot list manifest {redact(uri)!r}: {redact(exc)}") from None
    if not paths:
        raise ManifestError(f"no Parquet files found at {redact(uri)!r}")
    tables = []
    for path in paths:
        try:
            with storage.fs.open(path, "rb") as f:
                tables.append(pq.read_table(f))
        except Exception as exc:  # noqa: BLE001
            raise ManifestError(f"cannot read manifest file {redact(storage.fs.unstrip_protocol(path))!r}: "
                                f"{redact(exc)}") from None
    try:
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ManifestError(f"manifest files have incompatible schemas: {exc}") from None
    check_columns(table.schema)
    return table


def check_columns(schema: pa.Schema) -> None:
    """Whole-manifest checks: required columns present, known columns of a usable type."""
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise ManifestError(f"manifest lacks required column(s) {', '.join(missing)}; "
                            f"it has: {', '.join(schema.names) or 'no columns'}")
    for name in _STRING_COLUMNS:
        if name in schema.names:
            t = schema.field(name).type
            if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
                raise ManifestError(f"manifest column {name!r} must be a string column, not {t}")
    for name in ("seed", "texture_size"):
        if name in schema.names:
            t = schema.field(name).type
            if not (pa.types.is_integer(t) or pa.types.is_null(t)):
                raise ManifestError(f"manifest column {name!r} must be an integer column, not {t}")


# -- validation --------------------------------------------------------------------------------


def _required_str(values: Mapping[str, Any], name: str) -> str:
    value = values.get(name)
    if value is None:
        raise MissingFieldError(f"missing field {name!r}")
    if not isinstance(value, str):
        raise BadValueError(f"field {name!r} must be a string")
    if not value.strip():
        raise EmptyFieldError(f"empty field {name!r}")
    return value


def _parse_options(raw: Any) -> dict[str, Any]:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BadOptionsError(f"options is not valid JSON: {exc.msg} at position {exc.pos}") from None
    elif isinstance(raw, Mapping):  # struct column
        parsed = dict(raw)
    elif isinstance(raw, list) and all(isinstance(p, tuple) and len(p) == 2 for p in raw):  # map column
        parsed = dict(raw)
    else:
        raise BadOptionsError(f"options must be a JSON object, got {type(raw).__name__}")
    if not isinstance(parsed, dict):
        raise BadOptionsError(f"options must be a JSON object, got JSON {type(parsed).__name__}")
    return parsed


def _int_field(values: Mapping[str, Any], name: str, lo: int, hi: int) -> int | None:
    value = values.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadValueError(f"field {name!r} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _check_reachable(mesh_uri: str, check_exists: Callable[[str], bool]) -> None:
    try:
        found = check_exists(mesh_uri)
    except RowError:
        raise
    except Exception as exc:  # noqa: BLE001 - any backend error means we cannot reach it
        raise FetchError(f"unreachable object {redact(mesh_uri)!r}: {redact(exc)}") from None
    if not found:
        raise FetchError(f"unreachable object {redact(mesh_uri)!r}: not found")


def _validate_one(values: Mapping[str, Any], row_index: int, *, default_preset: str | None,
                  known_presets: set[str], validate_overrides: Callable[[str, dict], Any] | None) -> ManifestRow:
    asset_id = _required_str(values, "asset_id")
    mesh_uri = _required_str(values, "mesh_uri")
    prompt = _required_str(values, "prompt")
    negative = values.get("negative_prompt") or ""
    if not isinstance(negative, str):
        raise BadValueError("field 'negative_prompt' must be a string")
    seed = _int_field(values, "seed", 0, _INT64_MAX)
    texture_size = _int_field(values, "texture_size", 1, 1 << 16)
    options = _parse_options(values.get("options"))

    preset = values.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise BadValueError("field 'preset' must be a string")
    preset = (preset or "").strip() or default_preset
    if preset is None:
        raise MissingFieldError("missing field 'preset' and the run sets no default preset")
    if preset not in known_presets:
        raise UnknownPresetError(f"unknown preset {preset!r}; known: {', '.join(sorted(known_presets))}")
    overrides = dict(options)
    if texture_size is not None:
        if "texture_size" in overrides and overrides["texture_size"] != texture_size:
            raise BadOverrideError(f"texture_size column ({texture_size}) disagrees with "
                                   f"options.texture_size ({overrides['texture_size']!r})")
        overrides["texture_size"] = texture_size
    if validate_overrides is not None and overrides:
        try:
            validate_overrides(preset, overrides)
        except RowError:
            raise
        except (CastexError, ValueError, TypeError, KeyError) as exc:
            raise BadOverrideError(f"bad override for preset {preset!r}: {exc}") from None

    scheme = scheme_of(mesh_uri)
    if scheme not in MESH_SCHEMES:
        raise UnsupportedSchemeError(f"unsupported scheme {scheme!r} in mesh_uri {redact(mesh_uri)!r}; "
                                     f"use a local path, file://, s3://, gs://, http:// or https://")
    return ManifestRow(row_index=row_index, asset_id=asset_id, key=safe_key(asset_id), mesh_uri=mesh_uri,
                       prompt=prompt, negative_prompt=negative, seed=seed, preset=preset,
                       texture_size=texture_size, options=overrides)


def _error(values: Mapping[str, Any], row_index: int, exc: RowError) -> ErrorRecord:
    def text(name: str) -> str | None:
        v = values.get(name)
        return v if isinstance(v, str) else None

    asset_id = text("asset_id")
    seed = values.get("seed")
    return ErrorRecord(
        row_index=row_index,
        asset_id=asset_id,
        key=safe_key(asset_id) if asset_id else None,
        code=exc.code,
        reason=redact(str(exc)),
        mesh_uri=redact(text("mesh_uri")) if text("mesh_uri") is not None else None,
        prompt=text("prompt"),
        negative_prompt=text("negative_prompt"),
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        preset=text("preset"),
    )


def validate_rows(table: pa.Table, *, known_presets: set[str],
                  validate_overrides: Callable[[str, dict], Any] | None = None,
                  check_exists: Callable[[str], bool] | None = None,
                  default_preset: str | None = None,
                  max_workers: int = 16) -> tuple[list[ManifestRow], list[ErrorRecord]]:
    """Split the manifest into valid rows and error records (one per rejected row), both in
    manifest order.

    `validate_overrides(preset_name, overrides)` raises for an unknown or ill-typed override
    (pass `core.presets.get_preset`); `check_exists(mesh_uri)` returns False or raises when the
    object cannot be reached (see `pipeline.fetch.make_exists_checker`; None skips the check,
    e.g. when fetching will report it anyway). Rows without a preset use `default_preset`.
    Existence is probed last, only for otherwise valid rows, `max_workers` at a time (each probe
    is a network round trip). `len(valid) + len(errors) == table.num_rows` always.
    """
    check_columns(table.schema)
    candidates: list[tuple[ManifestRow, dict[str, Any]]] = []
    errors: list[ErrorRecord] = []
    first_row: dict[str, int] = {}
    key_owner: dict[str, str] = {}
    row_index = -1
    for batch in table.to_batches(max_chunksize=8192):
        for values in batch.to_pylist():
            row_index += 1
            try:
                asset_id = values.get("asset_id")
                if isinstance(asset_id, str) and asset_id.strip():
                    if asset_id in first_row:
                        raise DuplicateIdError(f"duplicate asset_id {redact(asset_id)!r}: "
                                               f"first used by row {first_row[asset_id]}")
                    first_row[asset_id] = row_index
                    key = safe_key(asset_id)
                    if key_owner.setdefault(key, asset_id) != asset_id:
                        raise KeyCollisionError(f"asset_id {redact(asset_id)!r} maps to key {key!r}, "
                                                f"already used by {redact(key_owner[key])!r}")
                row = _validate_one(values, row_index, default_preset=default_preset, known_presets=known_presets,
                                    validate_overrides=validate_overrides)
            except RowError as exc:
                errors.append(_error(values, row_index, exc))
                continue
            candidates.append((row, values))

    if check_exists is None or not candidates:
        return [row for row, _ in candidates], errors

    def probe(item: tuple[ManifestRow, dict[str, Any]]) -> ErrorRecord | None:
        row, values = item
        try:
            _check_reachable(row.mesh_uri, check_exists)
        except RowError as exc:
            return _error(values, row.row_index, exc)
        return None

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(candidates)))) as pool:
        outcomes = list(pool.map(probe, candidates))
    valid = [row for (row, _), err in zip(candidates, outcomes, strict=True) if err is None]
    errors += [err for err in outcomes if err is not None]
    errors.sort(key=lambda e: e.row_index)
    return valid, errors
