"""Typed errors of the batch pipeline, each with a stable `code` that lands in the index.

The index and the run summary group failures by `code` ("failures by reason"), so codes are part
of the output format: never rename one, add a new class instead. Messages are meant for users and
must already be redacted (see `pipeline.redact`) when they mention URIs or options.
"""

from __future__ import annotations

from core.errors import CastexError


class PipelineError(CastexError):
    """Base class for failures of the storage / manifest side of a run."""

    code = "pipeline_error"


class ManifestError(PipelineError):
    """The manifest as a whole is unusable (unreadable, no files, a required column missing):
    no row can be trusted, so the run stops before any GPU work."""

    code = "manifest_invalid"


class RowError(PipelineError):
    """One manifest row is invalid; it becomes a `failed` index row and the run goes on."""

    code = "row_invalid"


class MissingFieldError(RowError):
    """A required field is null (or the column is absent in this row's file)."""

    code = "missing_field"


class EmptyFieldError(RowError):
    """A required string field is empty or only whitespace."""

    code = "empty_field"


class BadValueError(RowError):
    """A field has the wrong type or an out-of-range value (e.g. a negative seed)."""

    code = "bad_value"


class DuplicateIdError(RowError):
    """Another row uses the same `asset_id` (see `pipeline.manifest` for the policy)."""

    code = "duplicate_id"


class KeyCollisionError(RowError):
    """Two different asset ids map to the same storage key (a hash collision; never expected)."""

    code = "key_collision"


class UnknownPresetError(RowError):
    """The row names a preset that does not exist."""

    code = "unknown_preset"


class BadOverrideError(RowError):
    """`options` or `texture_size` hold an override the preset rejects."""

    code = "bad_override"


class BadOptionsError(RowError):
    """`options` is not a JSON object."""

    code = "bad_options"


class UnsupportedSchemeError(RowError):
    """`mesh_uri` uses a scheme we cannot read (only local, file, s3, gs, http, https)."""

    code = "unsupported_scheme"


class FetchError(RowError):
    """The mesh object cannot be reached or downloaded (missing, forbidden, network error)."""

    code = "unreachable"


class StorageError(PipelineError):
    """Output storage cannot be used (bad URI, missing filesystem driver, write failed)."""

    code = "storage"


class IncompleteRunError(PipelineError):
    """A run cannot be marked complete: staging still holds unpacked assets, or the index does
    not hold exactly one row per manifest row."""

    code = "run_incomplete"
