"""Binary glTF (GLB) export of a textured `Mesh`: one node, one primitive, one PBR material.

Why pygltflib and not trimesh's exporter: trimesh 4.x/5.x writes POSITION/NORMAL/TEXCOORD_0 but
never TANGENT, and it chooses samplers and image encoding itself. CasTex's normal map was
optimized against *our* tangent frames (docs/architecture.md), so the GLB must carry exactly
those tangents; a viewer that regenerates MikkTSpace tangents from UVs would tilt the normals
differently at seams. pygltflib lets us lay out every accessor, bufferView and sampler
explicitly, and the file is checked by the Khronos glTF Validator in tests/test_export.py.

Layout of the single binary buffer (every bufferView starts 4-byte aligned):
indices | POSITION | NORMAL | TANGENT | TEXCOORD_0 | albedo PNG | orm PNG | normal PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pygltflib as gl

import core
from core.errors import NonFiniteError
from core.mesh import Mesh

# glTF enums (spelled out here so the JSON is readable next to the spec).
_FLOAT = 5126
_UNSIGNED_SHORT = 5123
_UNSIGNED_INT = 5125
_ARRAY_BUFFER = 34962
_ELEMENT_ARRAY_BUFFER = 34963
_LINEAR = 9729
_LINEAR_MIPMAP_LINEAR = 9987
_REPEAT = 10497
_TRIANGLES = 4
# uint16 index 65535 is the primitive-restart value, which glTF forbids in index data.
_MAX_UINT16_INDEX = 65534


class _BufferBuilder:
    """Appends payloads to one binary blob, one bufferView each, padding to 4 bytes so every
    accessor's offset is a multiple of its component size (a validator requirement)."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.views: list[gl.BufferView] = []

    def add(self, payload: bytes, target: int | None = None) -> int:
        self.blob.extend(b"\0" * (-len(self.blob) % 4))
        self.views.append(
            gl.BufferView(buffer=0, byteOffset=len(self.blob), byteLength=len(payload), target=target)
        )
        self.blob.extend(payload)
        return len(self.views) - 1

    def finish(self) -> bytes:
        self.blob.extend(b"\0" * (-len(self.blob) % 4))
        return bytes(self.blob)


def _numpy(x, dtype) -> np.ndarray:
    """Mesh fields are torch tensors (maybe on GPU, maybe requiring grad): detach to numpy."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=dtype))


def _unit_rows(v: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Re-normalize rows; zero rows get `fallback`. The validator rejects NORMAL/TANGENT whose
    length differs from 1 by more than ~5e-4, and float32 round trips can drift that far."""
    length = np.linalg.norm(v, axis=-1, keepdims=True)
    ok = length > 1e-12
    return np.where(ok, v / np.where(ok, length, 1.0), fallback).astype(np.float32)


def _any_perpendicular(n: np.ndarray) -> np.ndarray:
    """A unit vector orthogonal to each normal, used for vertices whose tangent degenerated
    (zero-area UV triangles): any orthonormal frame beats an invalid one."""
    helper = np.where(np.abs(n[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    t = np.cross(n, helper)
    return t / np.linalg.norm(t, axis=-1, keepdims=True)


def _vertex_arrays(mesh: Mesh) -> dict[str, np.ndarray]:
    """Float32 attribute arrays in the exact form glTF requires (unit normals, unit tangents
    with w = +-1), raising NonFiniteError rather than writing NaN into a file."""
    positions = _numpy(mesh.positions, np.float32)
    normals = _numpy(mesh.normals, np.float32)
    tangents = _numpy(mesh.tangents, np.float32)
    uvs = _numpy(mesh.uvs, np.float32)
    for name, arr in (("positions", positions), ("normals", normals),
                      ("tangents", tangents), ("uvs", uvs)):
        if not np.isfinite(arr).all():
            raise NonFiniteError(f"mesh {name} contain NaN or inf; refusing to write a GLB")
    normals = _unit_rows(normals, np.array([0.0, 1.0, 0.0], np.float32))
    xyz = _unit_rows(tangents[:, :3], _any_perpendicular(normals))
    w = np.where(tangents[:, 3:4] < 0.0, -1.0, 1.0).astype(np.float32)
    return {
        "POSITION": positions,
        "NORMAL": normals,
        "TANGENT": np.concatenate([xyz, w], axis=1),
        "TEXCOORD_0": uvs,
    }


def _index_array(mesh: Mesh) -> np.ndarray:
    """Flattened triangle indices, uint16 when they fit (half the bytes), else uint32."""
    faces = _numpy(mesh.faces, np.int64).reshape(-1)
    if faces.size and (faces.min() < 0 or faces.max() >= mesh.num_vertices):
        raise ValueError("mesh faces reference vertices that do not exist")
    dtype = np.uint16 if mesh.num_vertices - 1 <= _MAX_UINT16_INDEX else np.uint32
    return faces.astype(dtype)


def _add_accessor(doc: gl.GLTF2, buf: _BufferBuilder, arr: np.ndarray, kind: str,
                  target: int, *, with_bounds: bool = False) -> int:
    """One tightly packed bufferView + accessor for `arr`; returns the accessor index."""
    component = {np.dtype(np.float32): _FLOAT, np.dtype(np.uint16): _UNSIGNED_SHORT,
                 np.dtype(np.uint32): _UNSIGNED_INT}[arr.dtype]
    view = buf.add(arr.tobytes(), target)
    accessor = gl.Accessor(bufferView=view, byteOffset=0, componentType=component,
                           count=int(arr.shape[0]), type=kind)
    if with_bounds:
        # POSITION needs min/max (the spec requires it; viewers use it for the bounding box).
        accessor.min = [float(x) for x in arr.min(axis=0)]
        accessor.max = [float(x) for x in arr.max(axis=0)]
    doc.accessors.append(accessor)
    return len(doc.accessors) - 1


def _add_primitive(doc: gl.GLTF2, buf: _BufferBuilder, mesh: Mesh) -> gl.Primitive:
    """Indices and the four vertex attributes of the single triangle primitive."""
    indices = _add_accessor(doc, buf, _index_array(mesh), gl.SCALAR, _ELEMENT_ARRAY_BUFFER)
    arrays = _vertex_arrays(mesh)
    kinds = {"POSITION": gl.VEC3, "NORMAL": gl.VEC3, "TANGENT": gl.VEC4, "TEXCOORD_0": gl.VEC2}
    attrs = {
        name: _add_accessor(doc, buf, arrays[name], kinds[name], _ARRAY_BUFFER,
                            with_bounds=(name == "POSITION"))
        for name in ("POSITION", "NORMAL", "TANGENT", "TEXCOORD_0")
    }
    return gl.Primitive(attributes=gl.Attributes(**attrs), indices=indices, material=0,
                        mode=_TRIANGLES)


def _add_textures(doc: gl.GLTF2, buf: _BufferBuilder, pngs: dict[str, bytes]) -> dict[str, int]:
    """Embed each PNG as a bufferView image (GLB has no external files) and make one texture per
    image, all sharing a trilinear/repeat sampler; returns texture indices by role."""
    doc.samplers.append(gl.Sampler(magFilter=_LINEAR, minFilter=_LINEAR_MIPMAP_LINEAR,
                                   wrapS=_REPEAT, wrapT=_REPEAT))
    textures: dict[str, int] = {}
    for role, data in pngs.items():
        view = buf.add(data)  # no target: image bytes are not vertex/index data
        doc.images.append(gl.Image(bufferView=view, mimeType="image/png", name=role))
        doc.textures.append(gl.Texture(sampler=0, source=len(doc.images) - 1, name=role))
        textures[role] = len(doc.textures) - 1
    return textures


def _material(name: str, tex: dict[str, int], double_sided: bool) -> gl.Material:
    """Metal/rough material whose factors are 1 so the textures are used as-is (glTF multiplies
    factor * texel). orm.png's R channel (occlusion = 1) is deliberately not referenced."""
    return gl.Material(
        name=name,
        pbrMetallicRoughness=gl.PbrMetallicRoughness(
            baseColorFactor=[1.0, 1.0, 1.0, 1.0],
            baseColorTexture=gl.TextureInfo(index=tex["albedo"]),
            metallicRoughnessTexture=gl.TextureInfo(index=tex["orm"]),
            metallicFactor=1.0,
            roughnessFactor=1.0,
        ),
        normalTexture=gl.NormalMaterialTexture(index=tex["normal"], scale=1.0),
        alphaMode=gl.OPAQUE,
        alphaCutoff=None,  # only valid with MASK; the validator warns if present otherwise
        doubleSided=double_sided,
    )


def build_gltf(mesh: Mesh, albedo_png: bytes, orm_png: bytes, normal_png: bytes, *,
               name: str = "castex", double_sided: bool = True) -> gl.GLTF2:
    """The in-memory glTF document with its binary blob attached (see `write_glb`)."""
    doc = gl.GLTF2(asset=gl.Asset(version="2.0", generator=f"castex {core.__version__}"))
    buf = _BufferBuilder()
    primitive = _add_primitive(doc, buf, mesh)
    tex = _add_textures(doc, buf, {"albedo": albedo_png, "orm": orm_png, "normal": normal_png})
    doc.materials.append(_material(name, tex, double_sided))
    doc.meshes.append(gl.Mesh(name=name, primitives=[primitive]))
    doc.nodes.append(gl.Node(name=name, mesh=0))
    doc.scenes.append(gl.Scene(name=name, nodes=[0]))
    doc.scene = 0
    blob = buf.finish()
    doc.bufferViews = buf.views
    doc.buffers.append(gl.Buffer(byteLength=len(blob)))
    doc.set_binary_blob(blob)
    return doc


def glb_bytes(mesh: Mesh, albedo_png: bytes, orm_png: bytes, normal_png: bytes, *,
              name: str = "castex", double_sided: bool = True) -> bytes:
    """The GLB file contents (JSON chunk padded with spaces, BIN chunk 4-byte aligned)."""
    doc = build_gltf(mesh, albedo_png, orm_png, normal_png, name=name, double_sided=double_sided)
    return b"".join(doc.save_to_bytes())


def write_glb(path: str | Path, mesh: Mesh, albedo_png: bytes, orm_png: bytes,
              normal_png: bytes, *, name: str = "castex", double_sided: bool = True) -> None:
    """Write a self-contained GLB: POSITION/NORMAL/TANGENT/TEXCOORD_0 + indices, and one
    metallic-roughness material with baseColor (sRGB albedo), metallicRoughness (orm.png:
    G = roughness, B = metalness) and normal (tangent space, +Y) textures.

    `double_sided` defaults to True because the textures were optimized by a rasterizer that
    does not cull back faces, and input meshes (open shells, flipped windings) often need it to
    look the same in a viewer as in our renders.
    """
    Path(path).write_bytes(
        glb_bytes(mesh, albedo_png, orm_png, normal_png, name=name, double_sided=double_sided)
    )
