"""Procedural example meshes castex builds itself, so demos, tests and benchmarks need no download.

Each example is generated as plain arrays (vertices, triangles, optional glTF-convention UVs)
and then goes through `mesh_from_arrays`, the same validation/canonicalization path as a loaded
file. The set covers both UV paths: "vase" and "torus" carry their own UVs (`existing`),
"box", "sphere", "sphere-10k" and "blob" have none and get unwrapped by xatlas.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.errors import ConfigError
from core.mesh import Mesh, mesh_from_arrays


@dataclass
class ExampleArrays:
    """Raw example geometry: vertices [V,3], faces [F,3] (outward winding), uvs [V,2] glTF or None."""

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray | None


# ---- shared builders --------------------------------------------------------------------------


def _grid_faces(rows: int, cols: int) -> np.ndarray:
    """Two triangles per cell of a rows x cols vertex grid (row-major), corners (a, b, c), (a, c, d)."""
    i, j = np.meshgrid(np.arange(rows - 1), np.arange(cols - 1), indexing="ij")
    a = (i * cols + j).reshape(-1)
    b, c, d = a + 1, a + cols + 1, a + cols
    return np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])


def _drop_zero_area(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Remove triangles collapsed at poles of a revolved grid (two corners on the axis)."""
    tri = vertices[faces]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    return faces[area2 > 1e-12]


def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Positive when a closed mesh's faces wind counter-clockwise seen from outside."""
    tri = vertices[faces]
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


def _outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip every face if the (consistently wound) closed mesh faces inward."""
    return faces[:, ::-1].copy() if _signed_volume(vertices, faces) < 0 else faces


def _revolve(profile: np.ndarray, segments: int) -> ExampleArrays:
    """Surface of revolution about +Y of a (radius, height) profile, with cylindrical UVs.

    u = angle / 2pi, v = arc length along the profile (0 at its first point); the seam column
    repeats the first column's positions exactly so the normals weld across it.
    """
    theta = np.linspace(0.0, 2.0 * math.pi, segments + 1)
    r, y = profile[:, 0:1], profile[:, 1:2]
    x = r * np.cos(theta)[None, :]
    z = -r * np.sin(theta)[None, :]
    x[:, -1], z[:, -1] = x[:, 0], z[:, 0]
    rows, cols = len(profile), segments + 1
    vertices = np.stack([x, np.broadcast_to(y, x.shape), z], axis=-1).reshape(-1, 3) + 0.0
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(profile, axis=0), axis=1))])
    u, v = np.meshgrid(theta / (2.0 * math.pi), arc / arc[-1], indexing="xy")
    uvs = np.stack([u, v], axis=-1).reshape(-1, 2)
    faces = _drop_zero_area(vertices, _grid_faces(rows, cols))
    return ExampleArrays(vertices, _outward(vertices, faces), uvs)


# ---- the examples -----------------------------------------------------------------------------


def _vase_profile(n_wall: int = 26, thickness: float = 0.03, height: float = 1.6) -> np.ndarray:
    """Closed thick-walled vase profile: bottom disc, outer wall, lip, inner wall, inner floor."""

    def radius(s: np.ndarray) -> np.ndarray:  # belly near s=0.4, neck near the top
        return 0.34 + 0.2 * np.sin(math.pi * (1.7 * s - 0.2)) + 0.1 * s**8

    floor = 0.05
    s_out = np.linspace(0.0, 1.0, n_wall)
    s_in = np.linspace(1.0, floor / height, n_wall - 2)
    r0, r_in0 = radius(np.array([0.0]))[0], radius(s_in[-1:])[0] - thickness
    parts = [
        np.stack([np.linspace(0.0, r0, 4)[:-1], np.zeros(3)], 1),  # outer bottom, pole first
        np.stack([radius(s_out), height * s_out], 1),  # outer wall
        np.stack([radius(s_in) - thickness, height * s_in], 1),  # lip to inner wall
        np.stack([np.linspace(r_in0, 0.0, 4)[1:], np.full(3, floor)], 1),  # inner floor to pole
    ]
    return np.concatenate(parts)


def vase(segments: int = 40) -> ExampleArrays:
    """Surface of revolution with its own cylindrical UVs (~4.5k faces): the `existing` UV path."""
    return _revolve(_vase_profile(), segments)


def torus(major_segments: int = 48, minor_segments: int = 24, minor_radius: float = 0.35) -> ExampleArrays:
    """Torus (a closed shape with a hole) with its own periodic UVs: the `existing` UV path."""
    phi = np.linspace(0.0, 2.0 * math.pi, minor_segments + 1)
    profile = np.stack([1.0 + minor_radius * np.cos(phi), minor_radius * np.sin(phi)], 1)
    profile[-1] = profile[0]  # exact seam so normals weld
    return _revolve(profile, major_segments)


def box() -> ExampleArrays:
    """Unit cube without UVs (8 vertices, 12 faces): the xatlas UV path."""
    import trimesh

    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    vertices = np.asarray(cube.vertices, dtype=np.float64)
    return ExampleArrays(vertices, np.asarray(cube.faces, dtype=np.int64), None)


def _cube_sphere_directions(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions and faces of an equal-angle cube sphere, 12 * n^2 triangles.

    Grid points are keyed by integer cube coordinates, so vertices on cube edges are shared
    exactly (one connected surface, no seams).
    """
    n = subdivisions
    keys: dict[tuple[int, int, int], int] = {}
    faces: list[list[int]] = []
    for axis in range(3):
        for side in (0, n):
            grid = np.zeros((n + 1, n + 1), dtype=np.int64)
            for a in range(n + 1):
                for b in range(n + 1):
                    p = [0, 0, 0]
                    p[axis], p[(axis + 1) % 3], p[(axis + 2) % 3] = side, a, b
                    grid[a, b] = keys.setdefault(tuple(p), len(keys))
            idx = grid.reshape(-1)
            faces.extend(idx[_grid_faces(n + 1, n + 1)].tolist())
    cube = np.array(list(keys), dtype=np.float64)
    warped = np.tan((cube / n * 2.0 - 1.0) * (math.pi / 4.0))
    dirs = warped / np.linalg.norm(warped, axis=1, keepdims=True)
    faces_arr = np.asarray(faces, dtype=np.int64)
    # Orient each face outward (the six grids are generated with mixed handedness).
    tri = dirs[faces_arr]
    inward = np.einsum("ij,ij->i", np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), tri.sum(1)) < 0
    faces_arr[inward] = faces_arr[inward][:, ::-1]
    return dirs, faces_arr


def sphere(subdivisions: int = 16) -> ExampleArrays:
    """Cube sphere without UVs, 12 * subdivisions^2 faces (16 -> 3072, 29 -> 10092)."""
    if subdivisions < 1:
        raise ConfigError(f"sphere subdivisions must be >= 1, got {subdivisions}")
    dirs, faces = _cube_sphere_directions(subdivisions)
    return ExampleArrays(dirs, faces, None)


def sphere_10k() -> ExampleArrays:
    """The benchmark sphere: 10,092 faces."""
    return sphere(subdivisions=29)


def blob(subdivisions: int = 20) -> ExampleArrays:
    """Bunny-like blob without UVs: a squashed sphere with two 'ears' and a concave dent."""
    dirs, faces = _cube_sphere_directions(subdivisions)

    def bump(centre: tuple[float, float, float], width: float) -> np.ndarray:
        c = np.asarray(centre) / np.linalg.norm(centre)
        return np.exp(-np.sum((dirs - c) ** 2, axis=1) / width)

    radius = (1.0 + 0.55 * bump((0.3, 1.0, -0.1), 0.03) + 0.55 * bump((-0.3, 1.0, -0.1), 0.03)
              - 0.3 * bump((0.0, 0.1, 1.0), 0.12) + 0.15 * bump((0.0, -0.3, -1.0), 0.3))
    vertices = dirs * radius[:, None] * np.array([1.0, 0.8, 1.1])
    return ExampleArrays(vertices, faces, None)


_BUILDERS: dict[str, Callable[..., ExampleArrays]] = {
    "vase": vase,
    "box": box,
    "sphere": sphere,
    "sphere-10k": sphere_10k,
    "blob": blob,
    "torus": torus,
}

EXAMPLE_MESHES: tuple[str, ...] = tuple(_BUILDERS)


def example_arrays(name: str, **params: Any) -> ExampleArrays:
    """Raw arrays of a named example; `params` go to its builder (e.g. sphere subdivisions=8)."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        names = ", ".join(EXAMPLE_MESHES)
        raise ConfigError(f"unknown example mesh {name!r}; choose one of {names}") from None
    return builder(**params)


def example_mesh(name: str, **params: Any) -> Mesh:
    """A named example as a prepared `Mesh` (same path as a loaded file)."""
    arrays = example_arrays(name, **params)
    return mesh_from_arrays(arrays.vertices, arrays.faces, arrays.uvs, source=f"example:{name}")


def write_example_mesh(name: str, path: str | os.PathLike, **params: Any) -> Path:
    """Write a named example as .obj (+ .mtl when it has UVs) or .glb; returns the mesh path.

    UVs are converted to trimesh's v-up convention on the way out, so `load_mesh` of the file
    gives back the same glTF-convention UVs.
    """
    import trimesh
    from trimesh.exchange.obj import export_obj
    from trimesh.visual import TextureVisuals
    from trimesh.visual.material import PBRMaterial

    out = Path(path)
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in ("obj", "glb"):
        given = out.suffix or "(no extension)"
        raise ConfigError(f"example meshes are written as .obj or .glb, not {given!r}")
    arrays = example_arrays(name, **params)
    mesh = trimesh.Trimesh(arrays.vertices, arrays.faces, process=False)
    if arrays.uvs is not None:
        uv_trimesh = np.stack([arrays.uvs[:, 0], 1.0 - arrays.uvs[:, 1]], axis=1)
        material = PBRMaterial(name=name.replace("-", "_"), baseColorFactor=[200, 200, 200, 255])
        mesh.visual = TextureVisuals(uv=uv_trimesh, material=material)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == "glb":
        out.write_bytes(mesh.export(file_type="glb"))
        return out
    return _write_obj(mesh, out, export_obj)


def _write_obj(mesh: Any, out: Path, export_obj: Callable[..., Any]) -> Path:
    """OBJ with a per-file .mtl name, so several examples can share a directory."""
    text, files = export_obj(mesh, include_normals=False, return_texture=True, mtl_name=f"{out.stem}.mtl")
    out.write_text(text)
    for fname, data in files.items():
        (out.parent / fname).write_bytes(data)
    return out
