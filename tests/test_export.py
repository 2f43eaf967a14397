"""Texture bundle export: PNG channel semantics, GLB validity (Khronos validator) and round trips
through trimesh, OBJ/MTL keys, and the all-or-nothing bundle directory."""

from __future__ import annotations

import hashlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import torch
import trimesh
from PIL import Image

import core.export.bundle as bundle_mod
from core.errors import NonFiniteError
from core.export import (
    albedo_png,
    encode_png,
    make_preview_grid,
    normal_png,
    orm_png,
    write_bundle,
    write_glb,
    write_obj,
)
from core.material import TextureSet
from core.mesh import Mesh
from gltf_validator import format_messages, validate_gltf

# ---------------------------------------------------------------------------------------------
# Test meshes, built directly (independent of core.mesh loading).


def _tangents(positions: np.ndarray, faces: np.ndarray, uvs: np.ndarray,
              normals: np.ndarray) -> np.ndarray:
    """Per-vertex tangent frames in the project convention: T along +u, B = w*cross(N,T) along
    +v_gl = 1 - v (accumulated per triangle, Gram-Schmidt against N)."""
    uv_gl = np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], axis=1)
    p0, p1, p2 = (positions[faces[:, i]] for i in range(3))
    t0, t1, t2 = (uv_gl[faces[:, i]] for i in range(3))
    e1, e2 = p1 - p0, p2 - p0
    d1, d2 = t1 - t0, t2 - t0
    r = 1.0 / (d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1])
    ft = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) * r[:, None]
    fb = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) * r[:, None]
    t = np.zeros_like(positions)
    b = np.zeros_like(positions)
    for i in range(3):
        np.add.at(t, faces[:, i], ft)
        np.add.at(b, faces[:, i], fb)
    t = t - normals * (t * normals).sum(1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    w = np.sign((np.cross(normals, t) * b).sum(1, keepdims=True))
    return np.concatenate([t, np.where(w == 0, 1.0, w)], axis=1)


def _mesh(positions, faces, uvs, normals) -> Mesh:
    positions, uvs, normals = (np.asarray(a, np.float64) for a in (positions, uvs, normals))
    faces = np.asarray(faces, np.int64)
    tangents = _tangents(positions, faces, uvs, normals)
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return Mesh(positions=f32(positions), faces=torch.tensor(faces), uvs=f32(uvs),
                normals=f32(normals), tangents=f32(tangents), uv_source="existing",
                stats={"source": "test"})


def cube_mesh() -> Mesh:
    """Unit cube (side 2), 24 vertices: each face owns a cell of a 3x2 UV atlas."""
    axes = [(0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1)]
    positions, uvs, normals, faces = [], [], [], []
    for k, (axis, sign) in enumerate(axes):
        n = np.zeros(3)
        n[axis] = sign
        u_dir = np.roll(n, 1) if sign > 0 else -np.roll(n, 1)
        v_dir = np.cross(n, u_dir)
        cu, cv = (k % 3) / 3.0, (k // 3) / 2.0
        base = len(positions)
        for du, dv in ((0, 0), (1, 0), (1, 1), (0, 1)):
            positions.append(n + (2 * du - 1) * u_dir + (2 * dv - 1) * v_dir)
            # glTF v grows downwards while v_dir is "up" in the image: flip within the cell.
            uvs.append((cu + (0.05 + 0.9 * du) / 3.0, cv + (0.95 - 0.9 * dv) / 2.0))
            normals.append(n)
        faces += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    return _mesh(positions, faces, uvs, normals)


def sphere_mesh(n_lat: int = 12, n_lon: int = 24) -> Mesh:
    """UV sphere (radius 1) with a duplicated seam column and no degenerate pole triangles."""
    lat = np.linspace(0.0, math.pi, n_lat + 1)
    lon = np.linspace(0.0, 2.0 * math.pi, n_lon + 1)
    th, ph = np.meshgrid(lat, lon, indexing="ij")
    positions = np.stack([np.sin(th) * np.cos(ph), np.cos(th), -np.sin(th) * np.sin(ph)], -1)
    positions = positions.reshape(-1, 3)
    uvs = np.stack([ph / (2 * math.pi), th / math.pi], -1).reshape(-1, 2)
    idx = np.arange((n_lat + 1) * (n_lon + 1)).reshape(n_lat + 1, n_lon + 1)
    faces = []
    for i in range(n_lat):
        for j in range(n_lon):
            a, b, c, d = idx[i, j], idx[i + 1, j], idx[i + 1, j + 1], idx[i, j + 1]
            if i != 0:
                faces.append((a, b, d))
            if i != n_lat - 1:
                faces.append((b, c, d))
    faces = np.array(faces)
    used = np.unique(faces)  # pole vertices of the last column are unused: drop them
    remap = np.full(len(positions), -1)
    remap[used] = np.arange(len(used))
    normals = positions / np.linalg.norm(positions, axis=1, keepdims=True)
    return _mesh(positions[used], remap[faces], uvs[used], normals[used])


def textures(size: int = 16, seed: int = 0) -> TextureSet:
    g = torch.Generator().manual_seed(seed)
    normal = torch.nn.functional.normalize(
        torch.rand(size, size, 3, generator=g) * torch.tensor([1.0, 1.0, 0.5])
        + torch.tensor([-0.5, -0.5, 0.5]), dim=-1)
    return TextureSet(
        albedo=torch.rand(size, size, 3, generator=g),
        roughness=torch.rand(size, size, 1, generator=g),
        metalness=torch.rand(size, size, 1, generator=g),
        normal=normal,
    )


def _pngs(tex: TextureSet) -> tuple[bytes, bytes, bytes]:
    return (encode_png(albedo_png(tex.albedo)),
            encode_png(orm_png(tex.roughness, tex.metalness)),
            encode_png(normal_png(tex.normal)))


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# ---------------------------------------------------------------------------------------------
# PNG channel semantics


def test_png_channel_semantics():
    tex = TextureSet.constant(4, albedo=0.5, roughness=0.25, metalness=0.75)
    tex.roughness[0] = 1.0  # top row marks orientation: row 0 must stay row 0 in the PNG
    orm = _decode(encode_png(orm_png(tex.roughness, tex.metalness)))
    assert orm.shape == (4, 4, 3)
    assert (orm[..., 0] == 255).all()
    assert (orm[0, :, 1] == 255).all() and (orm[1:, :, 1] == 64).all()  # 0.25*255 = 63.75
    assert (orm[..., 2] == 191).all()  # 0.75*255 = 191.25
    assert (_decode(encode_png(albedo_png(tex.albedo))) == 188).all()  # sRGB(0.5) = 0.7354
    nrm = _decode(encode_png(normal_png(tex.normal)))
    assert (nrm.reshape(-1, 3) == [128, 128, 255]).all()
    # Un-normalized input is normalized first: (0, 0, 2) is still the flat normal.
    assert (normal_png(torch.tensor([[[0.0, 0.0, 2.0]]])) == [128, 128, 255]).all()


def test_png_rejects_nonfinite_and_bad_shapes():
    with pytest.raises(NonFiniteError):
        albedo_png(torch.full((2, 2, 3), float("nan")))
    with pytest.raises(ValueError):
        albedo_png(torch.zeros(2, 2, 4))


# ---------------------------------------------------------------------------------------------
# GLB


@pytest.mark.parametrize("make_mesh", [cube_mesh, sphere_mesh], ids=["cube", "sphere"])
def test_glb_passes_khronos_validator(tmp_path, make_mesh):
    path = tmp_path / "model.glb"
    write_glb(path, make_mesh(), *_pngs(textures()))
    report = validate_gltf(path)
    assert report["numErrors"] == 0, format_messages(report)
    assert report["numWarnings"] == 0, format_messages(report)
    assert report["info"]["resources"], "embedded images should be listed"


def test_glb_uint32_indices_validate(tmp_path):
    mesh = sphere_mesh(n_lat=200, n_lon=400)  # > 65535 vertices
    assert mesh.num_vertices > 65535
    path = tmp_path / "big.glb"
    write_glb(path, mesh, *_pngs(textures(4)))
    doc = pygltflib.GLTF2().load(str(path))
    assert doc.accessors[doc.meshes[0].primitives[0].indices].componentType == 5125
    report = validate_gltf(path)
    assert report["numErrors"] == 0, format_messages(report)


def test_glb_repairs_degenerate_frames(tmp_path):
    """A zero tangent (zero-area UV triangle) or a slightly non-unit normal must not produce an
    invalid file: the writer substitutes a unit frame."""
    mesh = cube_mesh()
    mesh.tangents[0] = torch.tensor([0.0, 0.0, 0.0, 0.0])
    mesh.normals[1] *= 1.01
    path = tmp_path / "model.glb"
    write_glb(path, mesh, *_pngs(textures()))
    report = validate_gltf(path)
    assert report["numErrors"] == 0 and report["numWarnings"] == 0, format_messages(report)


def test_glb_rejects_nonfinite_positions(tmp_path):
    mesh = cube_mesh()
    mesh.positions[2, 1] = float("inf")
    with pytest.raises(NonFiniteError):
        write_glb(tmp_path / "model.glb", mesh, *_pngs(textures()))


def test_glb_structure_and_tangents(tmp_path):
    mesh = sphere_mesh()
    path = tmp_path / "model.glb"
    write_glb(path, mesh, *_pngs(textures()), name="thing")
    doc = pygltflib.GLTF2().load(str(path))
    prim = doc.meshes[0].primitives[0]
    assert doc.accessors[prim.indices].componentType == 5123  # small mesh: uint16
    tan_acc = doc.accessors[prim.attributes.TANGENT]
    assert tan_acc.type == "VEC4" and tan_acc.count == mesh.num_vertices
    view = doc.bufferViews[tan_acc.bufferView]
    blob = doc.binary_blob()
    tangents = np.frombuffer(blob[view.byteOffset:view.byteOffset + view.byteLength],
                             np.float32).reshape(-1, 4)
    np.testing.assert_allclose(tangents, mesh.tangents.numpy(), atol=1e-6)
    mat = doc.materials[0]
    assert mat.name == "thing"
    assert mat.pbrMetallicRoughness.metallicFactor == 1.0
    assert mat.pbrMetallicRoughness.roughnessFactor == 1.0
    sampler = doc.samplers[0]
    assert (sampler.minFilter, sampler.magFilter, sampler.wrapS, sampler.wrapT) == (
        9987, 9729, 10497, 10497)
    assert all(im.mimeType == "image/png" and im.bufferView is not None for im in doc.images)
    assert all(v.byteOffset % 4 == 0 for v in doc.bufferViews)
    pos = doc.accessors[prim.attributes.POSITION]
    np.testing.assert_allclose(pos.min, mesh.positions.numpy().min(0))
    np.testing.assert_allclose(pos.max, mesh.positions.numpy().max(0))


def test_glb_roundtrip_trimesh(tmp_path):
    mesh = cube_mesh()
    tex = textures()
    path = tmp_path / "model.glb"
    write_glb(path, mesh, *_pngs(tex))
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.vertices) == mesh.num_vertices
    np.testing.assert_allclose(loaded.vertices, mesh.positions.numpy(), atol=1e-6)
    # trimesh stores OBJ-convention UVs (v up): it flips glTF v on load.
    uv = mesh.uvs.numpy()
    np.testing.assert_allclose(loaded.visual.uv, np.stack([uv[:, 0], 1 - uv[:, 1]], 1), atol=1e-6)
    material = loaded.visual.material
    assert material.baseColorTexture is not None
    assert material.metallicRoughnessTexture is not None
    assert material.normalTexture is not None
    # The albedo texture survives byte-exactly (row 0 = top, no flip).
    np.testing.assert_array_equal(np.asarray(material.baseColorTexture.convert("RGB")),
                                  albedo_png(tex.albedo))


# ---------------------------------------------------------------------------------------------
# OBJ + MTL


def _mtl_keys(text: str) -> dict[str, str]:
    keys = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, rest = line.partition(" ")
            keys[key] = rest
    return keys


def test_obj_mtl_keys_and_uvs(tmp_path):
    mesh = cube_mesh()
    paths = write_obj(tmp_path, mesh)
    assert paths == {"obj": tmp_path / "model.obj", "mtl": tmp_path / "model.mtl"}
    keys = _mtl_keys(paths["mtl"].read_text())
    assert keys["map_Kd"] == "albedo.png"
    assert keys["map_Pr"] == "roughness.png"
    assert keys["map_Pm"] == "metallic.png"
    assert keys["norm"] == "normal.png"
    assert keys["map_Bump"] == "-bm 1.000000 normal.png"
    text = paths["obj"].read_text()
    assert "mtllib model.mtl" in text and "usemtl castex" in text
    vt = np.array([list(map(float, l.split()[1:])) for l in text.splitlines() if l.startswith("vt ")])
    uv = mesh.uvs.numpy()
    np.testing.assert_allclose(vt, np.stack([uv[:, 0], 1 - uv[:, 1]], 1), atol=1e-6)
    assert sum(l.startswith("vn ") for l in text.splitlines()) == mesh.num_vertices
    assert sum(l.startswith("f ") for l in text.splitlines()) == mesh.num_faces


def test_obj_loads_in_trimesh_with_texture(tmp_path):
    mesh = cube_mesh()
    tex = textures()
    write_obj(tmp_path, mesh)
    (tmp_path / "albedo.png").write_bytes(encode_png(albedo_png(tex.albedo)))
    loaded = trimesh.load(tmp_path / "model.obj", force="mesh", process=False,
                          maintain_order=True)
    assert len(loaded.vertices) == mesh.num_vertices
    assert len(loaded.faces) == mesh.num_faces
    uv = mesh.uvs.numpy()
    np.testing.assert_allclose(loaded.visual.uv, np.stack([uv[:, 0], 1 - uv[:, 1]], 1), atol=1e-6)
    image = loaded.visual.material.image
    assert image is not None
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), albedo_png(tex.albedo))


# ---------------------------------------------------------------------------------------------
# Bundle

EXPECTED_FILES = {"albedo.png", "orm.png", "normal.png", "roughness.png", "metallic.png",
                  "model.glb", "model.obj", "model.mtl", "preview.png", "metadata.json"}


def _siblings(out_dir: Path) -> list[str]:
    return sorted(p.name for p in out_dir.parent.iterdir() if p.name != out_dir.name)


def test_bundle_writes_every_file(tmp_path):
    out = tmp_path / "asset"
    preview = make_preview_grid([np.full((8, 8, 3), i * 40, np.uint8) for i in range(3)], cols=2)
    meta = {"prompt": "rusty metal", "seed": np.int64(3), "loss": float("nan"),
            "views": np.arange(2)}
    written = write_bundle(out, sphere_mesh(), textures(), preview=preview, metadata=meta)
    assert set(written) == EXPECTED_FILES
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES
    assert all(p.parent == out.absolute() and p.is_file() for p in written.values())
    assert _siblings(out) == []  # no temp dirs left behind
    text = (out / "metadata.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert data["prompt"] == "rusty metal" and data["seed"] == 3 and data["views"] == [0, 1]
    assert data["loss"] is None and data["nonfinite_fields"] == ["loss"]
    assert set(data["files"]) == EXPECTED_FILES - {"metadata.json"}
    for name, entry in data["files"].items():
        raw = (out / name).read_bytes()
        assert entry["bytes"] == len(raw)
        assert entry["sha256"] == hashlib.sha256(raw).hexdigest()
    gray = np.asarray(Image.open(out / "roughness.png"))
    orm = np.asarray(Image.open(out / "orm.png"))
    assert gray.ndim == 2 and (gray == orm[..., 1]).all()
    assert (np.asarray(Image.open(out / "metallic.png")) == orm[..., 2]).all()
    report = validate_gltf(out / "model.glb")
    assert report["numErrors"] == 0, format_messages(report)


def test_bundle_nan_texture_raises_and_writes_nothing(tmp_path):
    out = tmp_path / "asset"
    tex = textures()
    tex.roughness[3, 5, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        write_bundle(out, cube_mesh(), tex, preview=None, metadata={})
    assert not out.exists()
    assert _siblings(out) == []


def test_bundle_replaces_existing_bundle(tmp_path):
    out = tmp_path / "asset"
    write_bundle(out, cube_mesh(), textures(seed=1), preview=None, metadata={"run": 1})
    (out / "stale.txt").write_text("from an older version")
    write_bundle(out, cube_mesh(), textures(seed=2), preview=None, metadata={"run": 2})
    assert json.loads((out / "metadata.json").read_text())["run"] == 2
    assert not (out / "stale.txt").exists() and not (out / "preview.png").exists()
    assert _siblings(out) == []


def test_bundle_failure_keeps_previous_bundle(tmp_path, monkeypatch):
    out = tmp_path / "asset"
    write_bundle(out, cube_mesh(), textures(seed=1), preview=None, metadata={"run": 1})
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundle_mod, "write_glb", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_bundle(out, cube_mesh(), textures(seed=2), preview=None, metadata={"run": 2})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _siblings(out) == []


def test_bundle_refuses_to_replace_unrelated_directory(tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError):
        write_bundle(out, cube_mesh(), textures(), preview=None, metadata={})
    assert (out / "thesis.tex").read_text() == "precious"
    assert _siblings(out) == []


def test_export_does_not_import_ray_or_fsspec():
    code = "import sys, core.export; print(sorted({'ray', 'fsspec'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, check=True)
    assert out.stdout.strip() == "[]"


def test_make_preview_grid():
    views = [np.full((2, 3, 3), v, np.uint8) for v in (10, 20, 30)]
    grid = make_preview_grid(views, cols=2)
    assert grid.shape == (4, 6, 3) and grid.dtype == np.uint8
    assert (grid[:2, :3] == 10).all() and (grid[:2, 3:] == 20).all()
    assert (grid[2:, :3] == 30).all() and (grid[2:, 3:] == 255).all()
    with pytest.raises(ValueError):
        make_preview_grid([views[0], np.zeros((3, 3, 3), np.uint8)], cols=2)
