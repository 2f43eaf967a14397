"""Typed errors for everything a user can get wrong or a run can hit.

Batch code catches `CastexError` per asset and records `code` + message in the index, so each
subclass carries a stable machine-readable `code` next to a human sentence.
"""

from __future__ import annotations


class CastexError(Exception):
    """Base class: an expected failure with a message meant for the user, never a traceback."""

    code = "castex_error"


class MeshError(CastexError):
    """The input mesh cannot be textured. Subclasses say why."""

    code = "mesh_error"


class MeshReadError(MeshError):
    """Unreadable file: unknown format, corrupt bytes, missing file."""

    code = "mesh_unreadable"


class EmptyMeshError(MeshError):
    """The file holds no geometry at all."""

    code = "mesh_empty"


class NoFacesError(MeshError):
    """Only points or lines: nothing to put a texture on."""

    code = "mesh_no_faces"


class InvalidFaceIndexError(MeshError):
    """Face indices out of range or negative."""

    code = "mesh_bad_indices"


class NonFiniteVertexError(MeshError):
    """NaN or inf in vertex positions."""

    code = "mesh_nonfinite"


class DegenerateMeshError(MeshError):
    """Every face has zero area."""

    code = "mesh_degenerate"


class TooManyFacesError(MeshError):
    """More faces than the configured limit (we reject rather than silently simplify)."""

    code = "mesh_too_large"


class UnwrapError(MeshError):
    """Automatic UV unwrapping (xatlas) failed, crashed or ran past its time limit."""

    code = "mesh_unwrap_failed"


class NonFiniteError(CastexError):
    """NaN/inf appeared in the loss or the textures during optimization; nothing is exported."""

    code = "nonfinite"


class ModelLoadError(CastexError):
    """A diffusion model or text encoder could not be loaded from the given id or directory."""

    code = "model_load"


class ConfigError(CastexError):
    """Unknown preset, bad override, or inconsistent options."""

    code = "config"
