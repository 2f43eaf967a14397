"""Triangle meshes ready for texturing: canonical placement, one UV per vertex, tangent frames.

Conventions (UV origin, tangent handedness) are in docs/architecture.md.

Every input (file via `load_mesh`, arrays via `mesh_from_arrays`) goes through `prepare_mesh`:
validate (empty, no faces, too many faces, bad indices, NaN/inf) -> drop zero-area faces ->
drop unreferenced vertices -> centre + scale (longest bbox side 2) -> keep usable UVs or weld
positions and unwrap with xatlas -> area-weighted normals on the position-welded mesh ->
tangents. Bad input raises a `core.errors.MeshError` subclass, never a bare traceback.

Axes: glTF is +Y up by specification; OBJ/PLY/STL have no axis convention and are taken as-is,
assuming +Y up (no rotation is applied). Meshes above `max_faces` are rejected, not simplified.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import (
    DegenerateMeshError,
    EmptyMeshError,
    InvalidFaceIndexError,
    MeshError,
    MeshReadError,
    NoFacesError,
    NonFiniteVertexError,
    TooManyFacesError,
    UnwrapError,
)


@dataclass
class Mesh:
    """A canonicalized triangle mesh with a single index buffer (glTF style).

    positions: [V,3] float32, centred at the origin, longest bbox side = 2.
    faces:     [F,3] int64 indices into every per-vertex array.
    uvs:       [V,2] float32, glTF convention (origin top-left, v down).
    normals:   [V,3] float32 unit vertex normals.
    tangents:  [V,4] float32, xyz unit tangent along +u, w = handedness (+1/-1).
    uv_source: "existing" when the file's UVs were usable, "xatlas" when we unwrapped.
    stats:     facts for metadata.json (source format, original counts, scale, ...).
    """

    positions: torch.Tensor
    faces: torch.Tensor
    uvs: torch.Tensor
    normals: torch.Tensor
    tangents: torch.Tensor
    uv_source: str
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def num_vertices(self) -> int:
        return int(self.positions.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def to(self, device: torch.device | str) -> "Mesh":
        return Mesh(
            positions=self.positions.to(device),
            faces=self.faces.to(device),
            uvs=self.uvs.to(device),
            normals=self.normals.to(device),
            tangents=self.tangents.to(device),
            uv_source=self.uv_source,
            stats=dict(self.stats),
        )


# --------------------------------------------------------------------------------------------
# Loading and preparation
# --------------------------------------------------------------------------------------------

DEFAULT_MAX_FACES = 500_000

# Hard cap on file size, checked before parsing so a multi-GB upload cannot stall a worker.
# 2 GiB comfortably holds a 500k-face asset with embedded 8k textures.
MAX_FILE_BYTES = 2 * 1024**3

# Formats we read, keyed by the `file_type` trimesh understands.
SUPPORTED_FORMATS = ("obj", "glb", "gltf", "ply", "stl")

# A face whose area is below this fraction of (longest bbox side)^2 counts as degenerate.
DEGENERATE_AREA_RTOL = 1e-12
# A UV triangle with |2*area| below this (UVs live in [0,1]) has no usable UV map.
UV_AREA_EPS = 1e-12
# Existing UVs are kept when at most this fraction of faces has a zero-area UV triangle:
# real assets carry a few collapsed slivers; an all-zero or missing set is rejected.
UV_DEGENERATE_TOLERANCE = 0.01
# Existing UVs outside [0,1] by more than this are tiling/UDIM layouts: one synthesized texture
# cannot serve them, so we unwrap instead.
UV_RANGE_TOL = 1e-3
# xatlas gets very slow on big meshes (measured on one CPU core: 43k faces 2.5 s, 120k 7-9 s,
# 130k 29 s, 160k > 200 s; upstream reports hours at 1M), so meshes WITHOUT usable UVs are
# unwrapped only up to this many faces. Meshes with usable UVs go up to `max_faces`.
DEFAULT_MAX_UNWRAP_FACES = 100_000
# xatlas runs in a forked child killed after this long, so a pathological (e.g. heavily
# non-manifold) mesh cannot hang or crash the worker.
XATLAS_TIMEOUT_S = 300.0
# Charts are capped to about this many faces' worth of surface: unlimited charts on a big
# smooth mesh make xatlas' chart growing superlinear; small meshes keep unlimited charts.
XATLAS_CHART_FACE_BUDGET = 2000
# Gutter between xatlas charts in texels (at xatlas' ~1024 px estimate) so mip-mapped lookups
# near a chart border do not bleed into a neighbouring chart.
XATLAS_PADDING = 4


@dataclass
class _RawGeometry:
    """Triangle soup as read from a file, before any validation or cleanup."""

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray | None  # glTF convention, one per vertex, or None
    uv_reason: str | None  # why the file's UVs cannot be used (None when there are some / none)
    parts: int = 1


def load_mesh(
    path: str | os.PathLike,
    *,
    max_faces: int = DEFAULT_MAX_FACES,
    file_type: str | None = None,
    max_unwrap_faces: int = DEFAULT_MAX_UNWRAP_FACES,
) -> Mesh:
    """Read OBJ(+MTL), GLB/glTF, PLY or STL and return a canonical, UV-mapped, tangent-framed Mesh.

    Scenes are flattened with their node transforms applied. glTF is +Y up by specification;
    OBJ/PLY/STL carry no axis convention, so we take them as-is and assume +Y up.
    Every expected failure raises a `MeshError` subclass with a sentence for the user.
    `max_unwrap_faces` caps meshes that need xatlas (no usable UVs); see DEFAULT_MAX_UNWRAP_FACES.
    """
    p = Path(path)
    fmt = _check_file(p, file_type)
    _prescan(p, fmt, max_faces)
    geom = _read_with_trimesh(p, fmt)
    raw = _flatten(geom, p.name)
    return prepare_mesh(raw.vertices, raw.faces, raw.uvs, max_faces=max_faces, source=str(p),
                        source_format=fmt, uv_reason=raw.uv_reason, parts=raw.parts,
                        max_unwrap_faces=max_unwrap_faces)


def mesh_from_arrays(
    vertices: Any,
    faces: Any,
    uvs: Any = None,
    *,
    max_faces: int = DEFAULT_MAX_FACES,
    source: str = "arrays",
    max_unwrap_faces: int = DEFAULT_MAX_UNWRAP_FACES,
) -> Mesh:
    """Build a Mesh from in-memory arrays (procedural examples, tests, API callers).

    vertices [V,3]; faces [F,3] triangles or [F,4] quads (split into two triangles);
    uvs [V,2] in the glTF convention (v down) or None to unwrap with xatlas.
    Goes through the same validation and preparation as `load_mesh`.
    """
    v = _as_vertex_array(vertices)
    f = _as_face_array(faces)
    uv = None if uvs is None else np.asarray(uvs, dtype=np.float64)
    return prepare_mesh(v, f, uv, max_faces=max_faces, source=source, source_format="arrays",
                        max_unwrap_faces=max_unwrap_faces)


def prepare_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray | None,
    *,
    max_faces: int = DEFAULT_MAX_FACES,
    source: str = "arrays",
    source_format: str = "arrays",
    uv_reason: str | None = None,
    parts: int = 1,
    max_unwrap_faces: int = DEFAULT_MAX_UNWRAP_FACES,
) -> Mesh:
    """Validate raw triangles and turn them into a `Mesh` (the single path every input takes).

    Order matters: cheap rejections (empty, too big, bad indices, NaN) come before anything
    that indexes or allocates per face, and degenerate faces go before UVs and tangents.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    name = Path(source).name if source_format != "arrays" else source
    _validate_counts(vertices, faces, max_faces, name)
    faces = _validate_indices(faces, len(vertices), name)
    _validate_finite(vertices, faces, name)
    original_vertices, original_faces = len(vertices), len(faces)

    faces, dropped = _drop_degenerate(vertices, faces, name)
    vertices, faces, uvs = _remove_unreferenced(vertices, faces, uvs)
    bbox_original = np.stack([vertices.min(0), vertices.max(0)])
    vertices, centre, scale = canonicalize(vertices)
    if uv_reason is None:
        uv_reason = check_uvs(uvs, faces)
    if uv_reason is None:
        uv_source = "existing"
    else:
        _check_unwrap_size(len(faces), max_unwrap_faces, uv_reason, name)
        vertices, faces = weld_positions(vertices, faces)
        vertices, faces, uvs = unwrap_uvs(vertices, faces)
        uv_source = "xatlas"

    normals = compute_vertex_normals(vertices, faces)
    tangents = compute_tangents(vertices, faces, uvs, normals)
    stats = {
        "source": source,
        "source_format": source_format,
        "parts": parts,
        "original_vertices": original_vertices,
        "original_faces": original_faces,
        "vertices": len(vertices),
        "faces": len(faces),
        "degenerate_faces_dropped": dropped,
        "scale": scale,
        "centre": centre.tolist(),
        "uv_source": uv_source,
        "uv_rejected_reason": uv_reason,
        "bbox_original": bbox_original.tolist(),
        "bbox": np.stack([vertices.min(0), vertices.max(0)]).tolist(),
    }
    return Mesh(
        positions=torch.from_numpy(vertices.astype(np.float32)),
        faces=torch.from_numpy(faces.astype(np.int64)),
        uvs=torch.from_numpy(uvs.astype(np.float32)),
        normals=torch.from_numpy(normals.astype(np.float32)),
        tangents=torch.from_numpy(tangents.astype(np.float32)),
        uv_source=uv_source,
        stats=stats,
    )


def _drop_degenerate(vertices: np.ndarray, faces: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """Zero-area faces have no normal and no texels; drop them, but refuse an all-degenerate mesh."""
    keep = ~degenerate_face_mask(vertices, faces)
    if not keep.any():
        raise DegenerateMeshError(
            f"{name}: all {len(faces)} faces have zero area (collapsed or repeated vertices); "
            "there is no surface to texture"
        )
    return faces[keep], int((~keep).sum())


def _check_unwrap_size(n_faces: int, max_unwrap_faces: int, uv_reason: str, name: str) -> None:
    """Fail fast instead of letting xatlas run for minutes to hours (see DEFAULT_MAX_UNWRAP_FACES)."""
    if n_faces > max_unwrap_faces:
        raise TooManyFacesError(
            f"{name}: the mesh has {n_faces:,} triangles and no usable UVs ({uv_reason}); "
            f"automatic UV unwrapping is limited to {max_unwrap_faces:,} triangles because it "
            "gets very slow above that. Give the mesh UVs (textured meshes are accepted up to "
            "max_faces), decimate it, or raise max_unwrap_faces"
        )


# ---- file checks (before trimesh) -------------------------------------------------------------


def _check_file(p: Path, file_type: str | None) -> str:
    """Existence, size and format checks that need no parsing."""
    if not p.exists():
        raise MeshReadError(f"mesh file not found: {p}")
    if not p.is_file():
        raise MeshReadError(f"not a file: {p}")
    fmt = (file_type or p.suffix.lstrip(".")).lower()
    if fmt not in SUPPORTED_FORMATS:
        raise MeshReadError(
            f"{p.name}: unsupported mesh format {fmt or '(no extension)'!r}; "
            f"castex reads {', '.join(SUPPORTED_FORMATS)}"
        )
    size = p.stat().st_size
    if size == 0:
        raise EmptyMeshError(f"{p.name}: the file is empty (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise TooManyFacesError(
            f"{p.name}: the file is {size / 1024**3:.1f} GiB, larger than the "
            f"{MAX_FILE_BYTES / 1024**3:.0f} GiB castex reads; simplify or split the asset"
        )
    return fmt


def _too_many(name: str, count: int, max_faces: int, what: str = "triangles") -> TooManyFacesError:
    return TooManyFacesError(
        f"{name}: the mesh has {count:,} {what}, more than the limit of {max_faces:,}. "
        "castex rejects rather than simplifies (simplifying would change your asset); "
        "decimate it first or raise the limit (max_faces)"
    )


def _prescan(p: Path, fmt: str, max_faces: int) -> None:
    """Cheap format-specific checks that catch huge or malformed files before a full parse."""
    if fmt == "obj":
        _scan_obj(p, max_faces)
    elif fmt == "ply":
        _scan_ply_header(p, max_faces)
    elif fmt == "stl":
        _scan_stl(p, max_faces)
    elif fmt in ("glb", "gltf"):
        _scan_gltf(p, fmt, max_faces)


_OBJ_KEYWORDS = frozenset(
    b"v vt vn vp f l p o g s usemtl mtllib cstype deg curv curv2 surf parm trim hole "
    b"end bmat step con mg lod ctech stech shadow_obj trace_obj maplib usemap".split()
)


def _scan_obj(p: Path, max_faces: int) -> None:
    """Validate OBJ face indices ourselves.

    trimesh's OBJ loader is not safe to hand bad indices: index 0 is silently turned into a
    valid index, out-of-range ones surface as a bare IndexError. So we parse the `f` lines here
    (1-based; negative = relative to the vertices defined so far) and count triangles, which
    also lets a huge file be rejected before the real parse.
    """
    data = p.read_bytes()
    if b"\x00" in data[:65536]:
        raise MeshReadError(f"{p.name}: not a text OBJ file (binary bytes found)")
    if data.count(b"\nf ") > max_faces:  # fast lower bound; every f line is >= 1 triangle
        raise _too_many(p.name, data.count(b"\nf "), max_faces, "faces")
    n_v = n_tri = 0
    recognized = other = 0
    max_index = 0
    for line in data.splitlines():
        tok = line.split()
        if not tok or tok[0].startswith(b"#"):
            continue
        key = tok[0]
        if key in _OBJ_KEYWORDS:
            recognized += 1
        else:
            other += 1
        if key == b"v":
            n_v += 1
        elif key == b"f":
            n_tri += max(len(tok) - 3, 0)
            max_index = max(max_index, _check_obj_face(tok[1:], n_v, p.name))
    if recognized == 0 and other > 0:
        raise MeshReadError(f"{p.name}: not an OBJ file (no OBJ statements found)")
    if max_index > n_v:
        raise InvalidFaceIndexError(
            f"{p.name}: a face refers to vertex {max_index} but the file defines only {n_v} "
            "vertices (face index out of range)"
        )
    if n_tri > max_faces:
        raise _too_many(p.name, n_tri, max_faces)


def _check_obj_face(corners: list[bytes], n_v: int, name: str) -> int:
    """Check one OBJ face's vertex indices; return the largest positive index it uses."""
    top = 0
    for corner in corners:
        head = corner.split(b"/", 1)[0]
        try:
            idx = int(head)
        except ValueError:
            raise MeshReadError(f"{name}: malformed face entry {corner.decode(errors='replace')!r}")
        if idx == 0:
            raise InvalidFaceIndexError(f"{name}: face index 0 is invalid (OBJ indices start at 1)")
        if idx < 0 and -idx > n_v:
            raise InvalidFaceIndexError(
                f"{name}: negative face index {idx} reaches before the first vertex "
                f"(only {n_v} vertices defined so far)"
            )
        top = max(top, idx)
    return top


def _scan_ply_header(p: Path, max_faces: int) -> None:
    """Read the PLY header's element counts: reject huge or empty files without parsing the body."""
    with p.open("rb") as fh:
        head = fh.read(65536)
    if not head.startswith(b"ply"):
        raise MeshReadError(f"{p.name}: not a PLY file (missing 'ply' magic)")
    counts: dict[bytes, int] = {}
    for line in head.split(b"end_header", 1)[0].splitlines():
        tok = line.split()
        if len(tok) == 3 and tok[0] == b"element" and tok[2].isdigit():
            counts[tok[1]] = int(tok[2])
    n_v, n_f = counts.get(b"vertex", 0), counts.get(b"face", 0)
    if n_v == 0 and n_f == 0:
        raise EmptyMeshError(f"{p.name}: the PLY file declares no vertices and no faces")
    if n_f > max_faces:
        raise _too_many(p.name, n_f, max_faces, "faces")


def _scan_stl(p: Path, max_faces: int) -> None:
    """STL has no magic number; check the binary layout or the ASCII keywords ourselves.

    trimesh returns an empty scene for arbitrary bytes, which would read as 'empty' rather
    than 'unreadable'.
    """
    size = p.stat().st_size
    with p.open("rb") as fh:
        head = fh.read(84)
    if len(head) >= 84:
        n = int(np.frombuffer(head[80:84], dtype="<u4")[0])
        if size == 84 + 50 * n:
            if n == 0:
                raise EmptyMeshError(f"{p.name}: the STL file holds no triangles")
            if n > max_faces:
                raise _too_many(p.name, n, max_faces)
            return
    text = p.read_bytes()
    if text.lstrip().startswith(b"solid"):
        if b"facet" not in text:
            raise EmptyMeshError(f"{p.name}: the STL file holds no triangles")
        n = text.count(b"facet normal")
        if n > max_faces:
            raise _too_many(p.name, n, max_faces)
        return
    raise MeshReadError(f"{p.name}: not an STL file (neither binary nor ASCII STL layout)")


def _scan_gltf(p: Path, fmt: str, max_faces: int) -> None:
    """Count triangles from the glTF JSON accessors (lower bound: instancing ignored).

    Any parse problem is left to trimesh, which reports it with more detail.
    """
    try:
        doc = _gltf_json(p, fmt)
        accessors = doc.get("accessors", [])
        total = 0
        for mesh in doc.get("meshes", []):
            for prim in mesh.get("primitives", []):
                if prim.get("mode", 4) not in (4, 5, 6):
                    continue
                acc = prim.get("indices", prim.get("attributes", {}).get("POSITION"))
                count = int(accessors[acc]["count"]) if acc is not None else 0
                total += count // 3 if prim.get("mode", 4) == 4 else max(count - 2, 0)
    except Exception:
        return
    if total > max_faces:
        raise _too_many(p.name, total, max_faces)


def _gltf_json(p: Path, fmt: str) -> dict:
    if fmt == "gltf":
        return json.loads(p.read_bytes())
    with p.open("rb") as fh:
        header = fh.read(20)
        length = int(np.frombuffer(header[12:16], dtype="<u4")[0])
        return json.loads(fh.read(length))


# ---- trimesh reading and scene flattening -----------------------------------------------------


def _read_with_trimesh(p: Path, fmt: str) -> Any:
    """trimesh.load without processing (so raw indices survive), wrapping every failure."""
    import trimesh

    # OBJ: keep one part per material (group_material=False). Otherwise trimesh merges them and
    # repacks their UVs itself; this way `_combined_uvs` applies the same rule as for glTF.
    extra = {"group_material": False} if fmt == "obj" else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return trimesh.load(str(p), file_type=fmt, process=False, force=None, **extra)
    except MeshError:
        raise
    except Exception as exc:  # trimesh raises many types (ValueError, KeyError, struct.error...)
        raise MeshReadError(
            f"{p.name}: could not read as {fmt.upper()}: {type(exc).__name__}: {exc}"
        ) from exc


def _flatten(geom: Any, name: str) -> _RawGeometry:
    """One triangle soup from a Trimesh or a Scene (node transforms applied, instances baked)."""
    import trimesh

    if isinstance(geom, trimesh.Scene):
        for g in geom.geometry.values():  # validate before dump() transforms anything
            if isinstance(g, trimesh.Trimesh):
                _validate_indices(np.asarray(g.faces), len(g.vertices), name)
        try:
            parts = geom.dump()
        except Exception as exc:
            raise MeshReadError(f"{name}: could not flatten the scene: {type(exc).__name__}: {exc}") from exc
    else:
        parts = [geom]
    meshes = [g for g in parts if isinstance(g, trimesh.Trimesh) and len(g.faces) > 0]
    if not meshes:
        has_points = any(len(getattr(g, "vertices", ())) > 0 for g in parts)
        if has_points:
            raise NoFacesError(
                f"{name}: the file holds only points or lines, no faces; there is no surface to texture"
            )
        raise EmptyMeshError(f"{name}: the file holds no geometry")
    return _concatenate(meshes)


def _concatenate(meshes: list[Any]) -> _RawGeometry:
    """Concatenate parts ourselves: trimesh's concatenate would repack textures into an atlas."""
    vertices, faces, offset = [], [], 0
    for m in meshes:
        vertices.append(np.asarray(m.vertices, dtype=np.float64))
        faces.append(np.asarray(m.faces, dtype=np.int64) + offset)
        offset += len(m.vertices)
    uvs, reason = _combined_uvs(meshes)
    return _RawGeometry(np.concatenate(vertices), np.concatenate(faces), uvs, reason, parts=len(meshes))


def _part_uvs(m: Any) -> np.ndarray | None:
    uv = getattr(getattr(m, "visual", None), "uv", None)
    if uv is None:
        return None
    uv = np.asarray(uv, dtype=np.float64)
    if uv.ndim != 2 or uv.shape != (len(m.vertices), 2):
        return None
    return np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1)  # trimesh (v up) -> glTF (v down)


def _combined_uvs(meshes: list[Any]) -> tuple[np.ndarray | None, str | None]:
    """Per-vertex glTF UVs for all parts, or None plus why they cannot be used together.

    Parts with different materials each lay their UVs out in their own [0,1] texture, so their
    UVs would overlap in our single texture: those scenes are unwrapped instead.
    """
    uvs = [_part_uvs(m) for m in meshes]
    if all(u is None for u in uvs):
        return None, None
    if any(u is None for u in uvs):
        return None, "some parts have no usable per-vertex UVs"
    materials = [getattr(m.visual, "material", None) for m in meshes]
    first, first_name = materials[0], getattr(materials[0], "name", None)
    same = all(
        m is first or (first_name is not None and getattr(m, "name", None) == first_name) for m in materials
    )
    if not same:
        return None, "parts use different materials, so their UV layouts overlap"
    return np.concatenate(uvs), None


# ---- validation -------------------------------------------------------------------------------


def _as_vertex_array(vertices: Any) -> np.ndarray:
    try:
        v = np.asarray(vertices, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MeshReadError(f"vertices are not a numeric [V,3] array: {exc}") from exc
    if v.size == 0:
        return v.reshape(0, 3)
    if v.ndim != 2 or v.shape[1] != 3:
        raise MeshReadError(f"vertices must have shape [V,3], got {list(v.shape)}")
    return v


def _as_face_array(faces: Any) -> np.ndarray:
    """Integer [F,3] triangles; [F,4] quads are split (trimesh's triangulate_quads)."""
    from trimesh.geometry import triangulate_quads

    try:
        f = np.asarray(faces)
    except (TypeError, ValueError) as exc:
        raise InvalidFaceIndexError(f"faces are not an integer [F,3] array: {exc}") from exc
    if f.size == 0:
        return f.reshape(0, 3).astype(np.int64)
    if f.ndim != 2 or f.shape[1] not in (3, 4):
        raise InvalidFaceIndexError(f"faces must have shape [F,3] or [F,4], got {list(f.shape)}")
    if not np.issubdtype(f.dtype, np.integer):
        if not (np.issubdtype(f.dtype, np.floating) and np.all(np.isfinite(f)) and np.all(f == np.round(f))):
            raise InvalidFaceIndexError("face indices must be integers")
        f = f.astype(np.int64)
    f = f.astype(np.int64)
    if f.shape[1] == 4:
        f = np.asarray(triangulate_quads(f), dtype=np.int64)
    return f


def _validate_counts(vertices: np.ndarray, faces: np.ndarray, max_faces: int, name: str) -> None:
    if len(vertices) == 0 and len(faces) == 0:
        raise EmptyMeshError(f"{name}: the mesh holds no geometry")
    if len(faces) == 0:
        raise NoFacesError(
            f"{name}: the mesh has {len(vertices)} vertices but no faces; there is no surface to texture"
        )
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise InvalidFaceIndexError(f"{name}: faces must be triangles [F,3], got {list(faces.shape)}")
    if len(faces) > max_faces:
        raise _too_many(name, len(faces), max_faces)


def _validate_indices(faces: np.ndarray, n_vertices: int, name: str) -> np.ndarray:
    """Negative or out-of-range indices would index garbage (or wrap around) downstream."""
    faces = np.asarray(faces)
    if faces.size == 0:
        return faces.reshape(0, 3).astype(np.int64)
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0:
        raise InvalidFaceIndexError(
            f"{name}: face index {lo} is negative (indices must be 0..{n_vertices - 1})"
        )
    if hi >= n_vertices:
        raise InvalidFaceIndexError(
            f"{name}: face index {hi} is out of range: the mesh has only {n_vertices} vertices"
        )
    return faces.astype(np.int64)


def _validate_finite(vertices: np.ndarray, faces: np.ndarray, name: str) -> None:
    """NaN/inf in a used vertex poisons every bbox, normal and render; unused junk is ignored."""
    used = np.unique(faces)
    bad = ~np.isfinite(vertices[used]).all(axis=1)
    if bad.any():
        kind = "NaN" if np.isnan(vertices[used][bad]).any() else "infinite"
        raise NonFiniteVertexError(
            f"{name}: {int(bad.sum())} vertices used by faces have {kind} coordinates "
            "(non-finite vertex positions)"
        )


def degenerate_face_mask(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[F] bool: faces with (relatively) zero area, including repeated-vertex faces."""
    tri = vertices[faces]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    used = vertices[np.unique(faces)]
    extent = float((used.max(0) - used.min(0)).max())
    return area2 <= 2.0 * DEGENERATE_AREA_RTOL * extent**2


def _remove_unreferenced(
    vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Drop vertices no face uses (keeps order), re-indexing faces and UVs with them."""
    used = np.unique(faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    new_uvs = None
    if uvs is not None and uvs.ndim == 2 and len(uvs) == len(vertices):
        new_uvs = uvs[used]
    elif uvs is not None:
        new_uvs = uvs  # wrong shape: kept so check_uvs reports it
    return vertices[used], remap[faces], new_uvs


# ---- canonical placement, UVs, normals, tangents ----------------------------------------------


def canonicalize(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre the bbox at the origin and scale its longest side to 2 (cameras assume this).

    Returns (new vertices, centre subtracted, scale multiplied): new = (old - centre) * scale.
    """
    lo, hi = vertices.min(0), vertices.max(0)
    centre = (lo + hi) / 2.0
    scale = 2.0 / float((hi - lo).max())
    return (vertices - centre) * scale, centre, scale


def check_uvs(uvs: np.ndarray | None, faces: np.ndarray) -> str | None:
    """None when existing glTF UVs are usable for one synthesized texture, else the reason."""
    if uvs is None:
        return "the input has no UVs"
    if uvs.ndim != 2 or uvs.shape[1] != 2 or len(uvs) <= int(faces.max()):
        return "UVs are not one per vertex"
    if not np.isfinite(uvs).all():
        return "UVs contain NaN or inf"
    if uvs.min() < -UV_RANGE_TOL or uvs.max() > 1.0 + UV_RANGE_TOL:
        return "UVs leave [0,1] (tiling or UDIM layout)"
    zero = uv_face_area2(uvs, faces) <= UV_AREA_EPS
    if zero.mean() > UV_DEGENERATE_TOLERANCE:
        return f"{zero.mean():.0%} of faces have zero UV area"
    return None


def uv_face_area2(uvs: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[F] twice the absolute UV-space area of each face."""
    t = uvs[faces]
    d1, d2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    return np.abs(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0])


def weld_positions(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices with identical positions before unwrapping.

    Triangle soups (STL, or OBJ split along discarded UV seams) would otherwise give xatlas one
    chart per disconnected piece; with no UVs to keep, nothing is lost by merging.
    """
    unique, inverse = np.unique(vertices + 0.0, axis=0, return_inverse=True)
    return unique, inverse.reshape(-1)[faces]


def unwrap_uvs(
    vertices: np.ndarray, faces: np.ndarray, *, timeout_s: float = XATLAS_TIMEOUT_S
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas unwrap into a single [0,1] atlas; vertices are split along chart seams.

    xatlas' UVs are used as-is as glTF UVs (image-space atlas, any orientation is valid: the
    tangent frames are derived from whatever UVs we end up with).
    Returns (vertices [V',3], faces [F,3] same face order, uvs [V',2]).
    """
    vmapping, indices, uvs = _isolated(_xatlas_generate, (vertices, faces), timeout_s)
    if len(indices) != len(faces) or not np.isfinite(uvs).all():
        raise UnwrapError("automatic UV unwrapping (xatlas) returned an unusable atlas")
    return vertices[vmapping.astype(np.int64)], indices.astype(np.int64), uvs.astype(np.float64)


def _xatlas_generate(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The xatlas call itself (runs in the child process)."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices.astype(np.float32), faces.astype(np.uint32))
    charts = xatlas.ChartOptions()
    if len(faces) > XATLAS_CHART_FACE_BUDGET:
        tri = vertices[faces]
        cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        area = 0.5 * float(np.linalg.norm(cross, axis=1).sum())
        charts.max_chart_area = area * XATLAS_CHART_FACE_BUDGET / len(faces)
    pack = xatlas.PackOptions()
    pack.padding = XATLAS_PADDING
    pack.bilinear = True
    # resolution = 0 keeps everything in ONE atlas (a fixed resolution may spill into pages).
    atlas.generate(charts, pack)
    vmapping, indices, uvs = atlas.get_mesh(0)
    return np.asarray(vmapping), np.asarray(indices).reshape(-1, 3), np.asarray(uvs)


def _child_main(conn: Any, fn: Any, args: tuple) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # report, never raise in the child
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _isolated(fn: Any, args: tuple, timeout_s: float) -> Any:
    """Run fn(*args) in a forked child with a time limit; inline where fork is unavailable.

    xatlas is native code that can take hours or segfault on bad input; a child process turns
    both into an `UnwrapError` instead of a hung or dead worker. fork (not spawn) keeps the
    start cost near zero since the child needs no re-import.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        return fn(*args)
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(send, fn, args))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded process forks"
            proc.start()
    except (AssertionError, OSError):  # e.g. inside a daemonic multiprocessing worker
        recv.close()
        send.close()
        return fn(*args)
    send.close()
    try:
        if not recv.poll(timeout_s):
            raise UnwrapError(
                f"automatic UV unwrapping (xatlas) did not finish within {timeout_s:.0f} s; "
                "give the mesh UVs or simplify it"
            )
        status, payload = recv.recv()
    except EOFError:
        proc.join(5)
        raise UnwrapError(
            f"automatic UV unwrapping (xatlas) crashed (exit code {proc.exitcode}); "
            "give the mesh UVs or repair it (non-manifold geometry is a common cause)"
        ) from None
    finally:
        recv.close()
        if proc.is_alive():
            proc.kill()
        proc.join(5)
    if status != "ok":
        raise UnwrapError(f"automatic UV unwrapping (xatlas) failed: {payload}")
    return payload


def _scatter_add(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """out[index[i]] += values[i] for [N,K] values (bincount per column: fast, no np.add.at)."""
    columns = [np.bincount(index, weights=values[:, k], minlength=n) for k in range(values.shape[1])]
    return np.stack(columns, axis=1)


def _any_perpendicular(n: np.ndarray) -> np.ndarray:
    """[N,3] unit vectors perpendicular to unit vectors n (fallback tangents)."""
    axis = np.where(np.abs(n[:, :1]) < 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    t = axis - n * (n * axis).sum(1, keepdims=True)
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def _normalize(v: np.ndarray, eps: float = 1e-20) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows and a mask of rows that were too short to normalize."""
    length = np.linalg.norm(v, axis=1, keepdims=True)
    ok = length[:, 0] > eps
    return np.where(ok[:, None], v / np.maximum(length, eps), 0.0), ok


def compute_vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals, shared by all copies of a position.

    UV seams split vertices; accumulating on the position-welded mesh keeps the copies'
    normals identical so seams do not show in shading (hard edges are smoothed too).
    """
    _, weld = np.unique(vertices + 0.0, axis=0, return_inverse=True)  # +0.0 folds -0.0 into 0.0
    weld = weld.reshape(-1)
    tri = vertices[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # |.| = 2 * area
    corner = weld[faces].reshape(-1)
    acc = _scatter_add(corner, np.repeat(face_n, 3, axis=0), int(weld.max()) + 1)
    normals, ok = _normalize(acc[weld])
    if not ok.all():  # opposite faces cancelled (e.g. a two-sided sheet): take one face's normal
        unit_face, _ = _normalize(face_n)
        fallback = np.zeros_like(vertices)
        fallback[faces.reshape(-1)] = np.repeat(unit_face, 3, axis=0)
        normals[~ok] = fallback[~ok]
        normals, ok = _normalize(normals)
        normals[~ok] = np.array([0.0, 1.0, 0.0])
    return normals


def compute_tangents(
    vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, normals: np.ndarray
) -> np.ndarray:
    """[V,4] tangent frames (docs/architecture.md): xyz along +u, w so B = w*cross(N,T) is +v_gl.

    Per face, dP/du and dP/dv_gl (v_gl = 1 - v_gltf) are solved from the edge and UV deltas,
    normalized and weighted by face area; faces with a collapsed UV map contribute nothing.
    """
    tri = vertices[faces]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    t = uvs[faces]
    du1, du2 = t[:, 1, 0] - t[:, 0, 0], t[:, 2, 0] - t[:, 0, 0]
    dv1, dv2 = -(t[:, 1, 1] - t[:, 0, 1]), -(t[:, 2, 1] - t[:, 0, 1])  # v_gl = 1 - v
    det = du1 * dv2 - du2 * dv1
    valid = np.abs(det) > UV_AREA_EPS
    safe = np.where(valid, det, 1.0)[:, None]
    tan_f, _ = _normalize((e1 * dv2[:, None] - e2 * dv1[:, None]) / safe)
    bit_f, _ = _normalize((e2 * du1[:, None] - e1 * du2[:, None]) / safe)
    weight = (np.linalg.norm(np.cross(e1, e2), axis=1) * valid)[:, None]
    corner = faces.reshape(-1)
    n = len(vertices)
    tan = _scatter_add(corner, np.repeat(tan_f * weight, 3, axis=0), n)
    bit = _scatter_add(corner, np.repeat(bit_f * weight, 3, axis=0), n)

    tan = tan - normals * (normals * tan).sum(1, keepdims=True)  # Gram-Schmidt against N
    tan, ok = _normalize(tan, eps=1e-12)
    tan[~ok] = _any_perpendicular(normals[~ok])
    w = np.sign((np.cross(normals, tan) * bit).sum(1))
    w[w == 0] = 1.0
    return np.concatenate([tan, w[:, None]], axis=1)
