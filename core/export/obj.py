"""Wavefront OBJ + MTL export with PBR texture references.

Our own writer, not trimesh's: trimesh's OBJ exporter writes only `map_Kd` (plus Kd/Ks/Ns) in the
MTL, so roughness, metalness and the normal map would be lost. The format is simple enough that
writing it directly is shorter than post-editing trimesh's output.

MTL keys, chosen for Blender's OBJ importer (3.x/4.x C++ importer, `obj_import_file_reader.cc`),
which maps `map_Kd` -> Base Color, `map_Pr` -> Roughness, `map_Pm` -> Metallic and
`bump`/`map_Bump` (with `-bm` = strength) -> a tangent-space Normal Map node. It does *not* read
`norm`; tinyobjloader, three.js-based tools and assimp do, so we write both lines. Blender links
each image's Color output straight to the scalar socket, so roughness and metalness must be
separate grayscale images (orm.png would feed Blender its luminance): the bundle writes
`roughness.png` / `metallic.png` for that. OBJ has no tangents, so importers rebuild them
(MikkTSpace); small differences from our frames at UV seams are expected.

Caveat for users (documented in metadata, not fixable from the MTL): Blender imports every image
as sRGB. Set roughness.png, metallic.png and normal.png to "Non-Color" after import, or use the
GLB, which carries the colour-space semantics itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import NonFiniteError
from core.mesh import Mesh


@dataclass(frozen=True)
class ObjTextures:
    """File names (relative to the OBJ's folder) that the MTL references."""

    albedo: str = "albedo.png"
    roughness: str = "roughness.png"
    metallic: str = "metallic.png"
    normal: str = "normal.png"
    orm: str = "orm.png"


def mtl_text(material: str, textures: ObjTextures = ObjTextures()) -> str:
    """The MTL body. Kd = 1 so readers that multiply Kd by map_Kd show the texture unchanged;
    Ks 0.5 / Ni 1.5 give Blender's Principled BSDF the dielectric F0 = 0.04 that our shading
    (and glTF) assume."""
    lines = [
        "# castex PBR material (linear roughness/metalness/normal, sRGB albedo).",
        "# map_Pr / map_Pm: the common MTL PBR extension (Blender, assimp, tinyobjloader).",
        f"# {textures.orm} holds the same maps packed glTF-style: R = occlusion (1),",
        "# G = roughness, B = metalness; it is not referenced here.",
        "# Normal map: tangent space, OpenGL convention (+Y up), n * 0.5 + 0.5.",
        "# Blender reads map_Bump as a normal map; other readers read norm.",
        "# Blender imports all maps as sRGB: set roughness/metallic/normal images to Non-Color.",
        f"newmtl {material}",
        "Ka 1.000000 1.000000 1.000000",
        "Kd 1.000000 1.000000 1.000000",
        "Ks 0.500000 0.500000 0.500000",
        "Ke 0.000000 0.000000 0.000000",
        "Ni 1.500000",
        "d 1.000000",
        "illum 2",
        f"map_Kd {textures.albedo}",
        f"map_Pr {textures.roughness}",
        f"map_Pm {textures.metallic}",
        f"norm {textures.normal}",
        f"map_Bump -bm 1.000000 {textures.normal}",
    ]
    return "\n".join(lines) + "\n"


def _numpy(x, dtype) -> np.ndarray:
    """Detach torch tensors (GPU, grad) into contiguous numpy arrays."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=dtype))


def _write_rows(f, fmt: str, rows: np.ndarray) -> None:
    """One `fmt` line per row. `tolist()` first: %-formatting Python scalars is several times
    faster than numpy scalars, which matters at 500k faces."""
    if len(rows):
        f.write("\n".join(fmt % tuple(r) for r in rows.tolist()))
        f.write("\n")


def _obj_arrays(mesh: Mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """positions, OBJ-convention UVs (v up: (u, 1 - v)), normals, 1-based faces."""
    positions = _numpy(mesh.positions, np.float64)
    uvs = _numpy(mesh.uvs, np.float64)
    normals = _numpy(mesh.normals, np.float64)
    for name, arr in (("positions", positions), ("uvs", uvs), ("normals", normals)):
        if not np.isfinite(arr).all():
            raise NonFiniteError(f"mesh {name} contain NaN or inf; refusing to write an OBJ")
    vt = np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], axis=1)
    faces = _numpy(mesh.faces, np.int64) + 1
    return positions, vt, normals, faces


def write_obj(directory: str | Path, mesh: Mesh, basename: str = "model", *,
              material: str = "castex", textures: ObjTextures = ObjTextures()) -> dict[str, Path]:
    """Write `<basename>.obj` and `<basename>.mtl` into `directory`; returns {"obj", "mtl"} paths.

    Only geometry and the material file are written here: the PNGs the MTL names (see
    `ObjTextures`) are written by `core.export.bundle.write_bundle`. Every vertex has one
    position, UV and normal with the same index (the Mesh is already split at UV seams), so
    faces are `f i/i/i`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    obj_path = directory / f"{basename}.obj"
    mtl_path = directory / f"{basename}.mtl"
    positions, vt, normals, faces = _obj_arrays(mesh)
    mtl_path.write_text(mtl_text(material, textures), encoding="utf-8")
    with open(obj_path, "w", encoding="utf-8", newline="\n") as f:
        f.write("# castex textured mesh; UVs are (u, 1 - v) per the OBJ convention\n")
        f.write(f"mtllib {mtl_path.name}\n")
        f.write(f"o {material}\n")
        _write_rows(f, "v %.7g %.7g %.7g", positions)
        _write_rows(f, "vt %.7g %.7g", vt)
        _write_rows(f, "vn %.6g %.6g %.6g", normals)
        f.write(f"usemtl {material}\n")
        _write_rows(f, "f %d/%d/%d %d/%d/%d %d/%d/%d", np.repeat(faces, 3, axis=1))
    return {"obj": obj_path, "mtl": mtl_path}
