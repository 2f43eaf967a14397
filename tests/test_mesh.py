"""Mesh loading: every bad input gets a typed error a user can read; good input gets a canonical,
UV-mapped, tangent-framed Mesh following docs/architecture.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from core.errors import (
    ConfigError,
    DegenerateMeshError,
    EmptyMeshError,
    InvalidFaceIndexError,
    MeshReadError,
    NoFacesError,
    NonFiniteVertexError,
    TooManyFacesError,
    UnwrapError,
)
from core.examples import EXAMPLE_MESHES, example_arrays, example_mesh, write_example_mesh
from core.mesh import load_mesh, mesh_from_arrays

TRI = "v 0 0 0\nv 1 0 0\nv 0 1 0\n"


def _write(path: Path, data: str | bytes) -> Path:
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def _ply(vertices: list[str], faces: list[str]) -> str:
    return (
        "ply\nformat ascii 1.0\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
        + "".join(v + "\n" for v in vertices)
        + "".join(f + "\n" for f in faces)
    )


# ---- bad input: one test per case, error type + key phrase -------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(MeshReadError, match="not found"):
        load_mesh(tmp_path / "nope.obj")


def test_empty_file(tmp_path):
    with pytest.raises(EmptyMeshError, match="empty"):
        load_mesh(_write(tmp_path / "e.obj", ""))


def test_file_without_geometry(tmp_path):
    with pytest.raises(EmptyMeshError, match="no geometry"):
        load_mesh(_write(tmp_path / "c.obj", "# just a comment\no thing\n"))


def test_point_cloud(tmp_path):
    path = _write(tmp_path / "p.ply", _ply(["0 0 0", "1 0 0", "0 1 0"], []))
    with pytest.raises(NoFacesError, match="no faces"):
        load_mesh(path)


def test_lines_only(tmp_path):
    with pytest.raises(NoFacesError, match="points or lines"):
        load_mesh(_write(tmp_path / "l.obj", TRI + "l 1 2 3\n"))


def test_out_of_range_index_obj(tmp_path):
    # trimesh alone would raise a bare IndexError here; our OBJ pre-scan reports it.
    with pytest.raises(InvalidFaceIndexError, match="out of range"):
        load_mesh(_write(tmp_path / "o.obj", TRI + "f 1 2 3\nf 1 2 7\n"))


def test_out_of_range_index_ply(tmp_path):
    path = _write(tmp_path / "o.ply", _ply(["0 0 0", "1 0 0", "0 1 0"], ["3 0 1 9"]))
    with pytest.raises(InvalidFaceIndexError, match="out of range"):
        load_mesh(path)


def test_zero_index_obj(tmp_path):
    # trimesh silently turns OBJ index 0 into a valid index; the pre-scan rejects it.
    with pytest.raises(InvalidFaceIndexError, match="start at 1"):
        load_mesh(_write(tmp_path / "z.obj", TRI + "f 0 1 2\n"))


def test_negative_index_ply(tmp_path):
    path = _write(tmp_path / "n.ply", _ply(["0 0 0", "1 0 0", "0 1 0"], ["3 0 1 -1"]))
    with pytest.raises(InvalidFaceIndexError, match="negative"):
        load_mesh(path)


def test_negative_index_arrays():
    with pytest.raises(InvalidFaceIndexError, match="negative"):
        mesh_from_arrays(np.eye(3), [[0, 1, -1]])


def test_negative_obj_index_before_first_vertex(tmp_path):
    # Relative (negative) OBJ indices are legal; reaching before vertex 1 is not.
    assert load_mesh(_write(tmp_path / "ok.obj", TRI + "f -3 -2 -1\n")).num_faces == 1
    with pytest.raises(InvalidFaceIndexError, match="negative face index"):
        load_mesh(_write(tmp_path / "n.obj", TRI + "f -5 -2 -1\n"))


def test_nan_vertex(tmp_path):
    with pytest.raises(NonFiniteVertexError, match="NaN"):
        load_mesh(_write(tmp_path / "nan.obj", "v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"))


def test_inf_vertex(tmp_path):
    path = _write(tmp_path / "inf.ply", _ply(["inf 0 0", "1 0 0", "0 1 0"], ["3 0 1 2"]))
    with pytest.raises(NonFiniteVertexError, match="infinite"):
        load_mesh(path)


def test_only_degenerate_faces(tmp_path):
    obj = "v 0 0 0\nv 1 0 0\nv 2 0 0\nv 0 1 0\nf 1 2 3\nf 1 1 4\n"  # collinear + repeated index
    with pytest.raises(DegenerateMeshError, match="zero area"):
        load_mesh(_write(tmp_path / "d.obj", obj))


def test_some_degenerate_faces_are_dropped_and_counted():
    v = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0]]
    mesh = mesh_from_arrays(v, [[0, 1, 2], [0, 1, 3], [2, 2, 1]])
    assert mesh.num_faces == 1
    assert mesh.stats["degenerate_faces_dropped"] == 2
    assert mesh.num_vertices == 3  # vertex 3 was only used by a degenerate face


def test_too_many_faces_file(tmp_path):
    path = write_example_mesh("sphere", tmp_path / "s.obj", subdivisions=4)  # 192 faces
    with pytest.raises(TooManyFacesError, match="rejects rather than simplifies") as err:
        load_mesh(path, max_faces=100)
    assert "max_faces" in str(err.value)
    assert load_mesh(path, max_faces=192).num_faces == 192


def test_too_many_faces_arrays():
    arrays = example_arrays("sphere", subdivisions=3)
    with pytest.raises(TooManyFacesError, match="limit of 50"):
        mesh_from_arrays(arrays.vertices, arrays.faces, max_faces=50)


@pytest.mark.parametrize("suffix", ["obj", "ply", "glb", "stl", "gltf"])
def test_garbage_bytes(tmp_path, suffix):
    garbage = bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8))
    with pytest.raises(MeshReadError, match=r"not a|could not read"):
        load_mesh(_write(tmp_path / f"g.{suffix}", garbage))


def test_truncated_glb(tmp_path):
    good = write_example_mesh("box", tmp_path / "b.glb").read_bytes()
    with pytest.raises(MeshReadError, match="could not read as GLB"):
        load_mesh(_write(tmp_path / "t.glb", good[: len(good) // 2]))


def test_unsupported_format(tmp_path):
    with pytest.raises(MeshReadError, match="unsupported mesh format"):
        load_mesh(_write(tmp_path / "m.fbx", b"Kaydara FBX Binary"))


# ---- good input ----------------------------------------------------------------------------------


def _grid_obj(n: int = 4) -> tuple[str, np.ndarray, np.ndarray]:
    """A wavy n x n grid with one UV per position (no seams): OBJ text, positions, OBJ vt."""
    xs = np.linspace(0.0, 3.0, n)
    pos = np.array([[x, 0.2 * np.sin(x + y), y] for y in xs for x in xs])
    vt = np.array([[x / 3.0, y / 3.0] for y in xs for x in xs])
    lines = ["mtllib grid.mtl", "usemtl paint"]
    lines += [f"v {p[0]} {p[1]} {p[2]}" for p in pos]
    lines += [f"vt {t[0]} {t[1]}" for t in vt]
    for r in range(n - 1):
        for c in range(n - 1):
            a = r * n + c + 1
            lines.append(f"f {a}/{a} {a + 1}/{a + 1} {a + n + 1}/{a + n + 1} {a + n}/{a + n}")
    return "\n".join(lines) + "\n", pos, vt


def _to_original(mesh, positions: torch.Tensor) -> np.ndarray:
    return positions.double().numpy() / mesh.stats["scale"] + np.array(mesh.stats["centre"])


def _match(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row of a, the index of the (unique) equal row of b."""
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    assert d.min(axis=1).max() < 1e-5
    return d.argmin(axis=1)


def test_obj_with_mtl_keeps_existing_uvs(tmp_path):
    text, pos, vt = _grid_obj()
    _write(tmp_path / "grid.mtl", "newmtl paint\nKd 0.8 0.2 0.2\n")
    mesh = load_mesh(_write(tmp_path / "grid.obj", text))
    assert mesh.uv_source == "existing"
    assert mesh.num_faces == 18  # 9 quads
    idx = _match(_to_original(mesh, mesh.positions), pos)
    expected = np.stack([vt[idx, 0], 1.0 - vt[idx, 1]], axis=1)  # OBJ vt -> glTF (v down)
    assert np.allclose(mesh.uvs.numpy(), expected, atol=1e-6)


def test_obj_parts_with_different_materials_are_unwrapped(tmp_path):
    # Each material has its own [0,1] texture, so their UVs would overlap in our single texture.
    _write(tmp_path / "m.mtl", "newmtl red\nKd 1 0 0\nnewmtl blue\nKd 0 0 1\n")
    obj = ("mtllib m.mtl\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
           "usemtl red\nf 1/1 2/2 3/3\nusemtl blue\nf 1/1 3/3 4/4\n")
    mesh = load_mesh(_write(tmp_path / "m.obj", obj))
    assert mesh.stats["parts"] == 2 and mesh.uv_source == "xatlas"
    assert "different materials" in mesh.stats["uv_rejected_reason"]


def test_mesh_without_uvs_gets_xatlas_uvs():
    mesh = example_mesh("blob", subdivisions=8)
    assert mesh.uv_source == "xatlas"
    assert mesh.stats["uv_rejected_reason"] == "the input has no UVs"
    uv = mesh.uvs.double()
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    t = uv[mesh.faces]
    area2 = ((t[:, 1] - t[:, 0])[:, 0] * (t[:, 2] - t[:, 0])[:, 1]
             - (t[:, 1] - t[:, 0])[:, 1] * (t[:, 2] - t[:, 0])[:, 0]).abs()
    assert bool((area2 > 0).all())


def test_unusable_uvs_fall_back_to_xatlas():
    arrays = example_arrays("sphere", subdivisions=4)
    mesh = mesh_from_arrays(arrays.vertices, arrays.faces, np.zeros((len(arrays.vertices), 2)))
    assert mesh.uv_source == "xatlas"
    assert "zero UV area" in mesh.stats["uv_rejected_reason"]


def test_glb_round_trip(tmp_path):
    ref = example_mesh("vase")
    mesh = load_mesh(write_example_mesh("vase", tmp_path / "vase.glb"))
    assert mesh.uv_source == "existing" and mesh.num_faces == ref.num_faces
    assert mesh.stats["source_format"] == "glb"
    # Seam and pole copies share a position but not a UV: match vertices on (position, uv).
    got = torch.cat([mesh.positions, mesh.uvs], 1).double().numpy()
    want = torch.cat([ref.positions, ref.uvs], 1).double().numpy()
    order = _match(got, want)
    assert len(set(order.tolist())) == ref.num_vertices
    faces_got = {tuple(f) for f in np.sort(order[mesh.faces.numpy()], axis=1).tolist()}
    assert faces_got == {tuple(f) for f in np.sort(ref.faces.numpy(), axis=1).tolist()}


@pytest.mark.parametrize("fmt", ["ply", "stl"])
def test_ply_and_stl_load(tmp_path, fmt):
    arrays = example_arrays("sphere", subdivisions=6)
    path = tmp_path / f"s.{fmt}"
    trimesh.Trimesh(arrays.vertices, arrays.faces, process=False).export(path)
    mesh = load_mesh(path)
    assert mesh.num_faces == len(arrays.faces)
    assert mesh.uv_source == "xatlas"
    assert mesh.stats["source_format"] == fmt
    # STL is a triangle soup: positions are welded before unwrapping, so charts stay large.
    assert mesh.num_vertices < 2 * len(arrays.vertices)


def test_multi_node_gltf_scene_applies_transforms(tmp_path):
    scene = trimesh.Scene()
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    scene.add_geometry(cube, node_name="a", geom_name="cube")
    moved = trimesh.transformations.translation_matrix([3.0, 0.0, 0.0]) @ np.diag([2.0, 2.0, 2.0, 1.0])
    scene.add_geometry(cube, node_name="b", geom_name="cube", transform=moved)  # instance of cube
    path = tmp_path / "scene.glb"
    scene.export(path)
    mesh = load_mesh(path)
    assert mesh.stats["parts"] == 2 and mesh.num_faces == 24
    assert np.allclose(mesh.stats["bbox_original"], [[-0.5, -1.0, -1.0], [4.0, 1.0, 1.0]])
    assert mesh.stats["scale"] == pytest.approx(2.0 / 4.5)


def test_quads_and_polygons_triangulate(tmp_path):
    obj = "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 2 0 0\nv 2.5 1 0\nv 2 2 0\nf 1 2 3 4\nf 2 5 6 7 3\n"
    mesh = load_mesh(_write(tmp_path / "q.obj", obj))
    assert mesh.num_faces == 2 + 3
    quad = mesh_from_arrays([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2, 3]])
    assert mesh.faces.shape[1] == 3 and quad.num_faces == 2


def test_canonical_placement():
    arrays = example_arrays("box")
    offset, scale = np.array([10.0, -4.0, 2.0]), np.array([3.0, 1.0, 0.5])
    mesh = mesh_from_arrays(arrays.vertices * scale + offset, arrays.faces)
    lo, hi = mesh.positions.min(0).values, mesh.positions.max(0).values
    assert torch.allclose((lo + hi) / 2, torch.zeros(3), atol=1e-6)
    assert float((hi - lo).max()) == pytest.approx(2.0, abs=1e-6)
    assert mesh.stats["centre"] == pytest.approx(offset.tolist())
    assert mesh.stats["scale"] == pytest.approx(2.0 / 3.0)


def _assert_frames_valid(mesh) -> None:
    n, t, w = mesh.normals, mesh.tangents[:, :3], mesh.tangents[:, 3]
    assert torch.isfinite(mesh.tangents).all() and torch.isfinite(n).all()
    assert torch.allclose(n.norm(dim=1), torch.ones(len(n)), atol=1e-5)
    assert torch.allclose(t.norm(dim=1), torch.ones(len(t)), atol=1e-5)
    assert (n * t).sum(1).abs().max() < 1e-5
    assert set(w.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("name", ["vase", "sphere", "box"])
def test_tangent_frames_are_unit_and_orthogonal(name):
    _assert_frames_valid(example_mesh(name))


@pytest.mark.parametrize("mirrored", [False, True])
def test_planar_quad_tangent_follows_u_and_bitangent_points_up_in_image(mirrored):
    # Quad in the XY plane facing +Z; glTF v = 1 - y, so image "up" (decreasing v) is +Y.
    pos = [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]
    u = np.array([0.0, 1.0, 1.0, 0.0])
    uv = np.stack([1.0 - u if mirrored else u, 1.0 - np.array([0.0, 0.0, 1.0, 1.0])], axis=1)
    mesh = mesh_from_arrays(pos, [[0, 1, 2], [0, 2, 3]], uv)
    assert mesh.uv_source == "existing"
    assert torch.allclose(mesh.normals, torch.tensor([0.0, 0.0, 1.0]).expand(4, 3), atol=1e-6)
    tangent = torch.tensor([-1.0 if mirrored else 1.0, 0.0, 0.0])
    assert torch.allclose(mesh.tangents[:, :3], tangent.expand(4, 3), atol=1e-6)
    w = mesh.tangents[:, 3:]
    bitangent = w * torch.cross(mesh.normals, mesh.tangents[:, :3], dim=1)
    assert torch.allclose(bitangent, torch.tensor([0.0, 1.0, 0.0]).expand(4, 3), atol=1e-6)


def test_seam_vertices_share_normals():
    mesh = example_mesh("vase")
    pos = mesh.positions.numpy()
    _, inverse, counts = np.unique(pos, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    dup = counts[inverse] > 1
    assert dup.any()  # the u = 0 / u = 1 seam is split
    for group in np.unique(inverse[dup]):
        normals = mesh.normals[torch.from_numpy(np.nonzero(inverse == group)[0])]
        assert torch.allclose(normals, normals[0].expand_as(normals), atol=1e-6)


@pytest.mark.parametrize("name", EXAMPLE_MESHES)
def test_examples_load_with_expected_uv_source(tmp_path, name):
    expected = "existing" if name in ("vase", "torus") else "xatlas"
    mesh = example_mesh(name)
    assert mesh.uv_source == expected
    assert mesh.stats["degenerate_faces_dropped"] == 0
    _assert_frames_valid(mesh)
    reloaded = load_mesh(write_example_mesh(name, tmp_path / f"{name}.obj"))
    assert reloaded.uv_source == expected and reloaded.num_faces == mesh.num_faces


def test_example_sizes_and_unknown_name():
    assert 2000 <= example_mesh("vase").num_faces <= 5000
    assert 9500 <= len(example_arrays("sphere-10k").faces) <= 10500
    assert len(example_arrays("sphere", subdivisions=5).faces) == 12 * 25
    with pytest.raises(ConfigError, match="unknown example mesh"):
        example_mesh("teapot")


def test_unwrap_face_limit_only_applies_without_uvs():
    arrays = example_arrays("sphere", subdivisions=4)  # 192 faces, no UVs
    with pytest.raises(TooManyFacesError, match="automatic UV unwrapping is limited"):
        mesh_from_arrays(arrays.vertices, arrays.faces, max_unwrap_faces=100)
    torus = example_arrays("torus", major_segments=12, minor_segments=8)  # 192 faces with UVs
    mesh = mesh_from_arrays(torus.vertices, torus.faces, torus.uvs, max_unwrap_faces=100)
    assert mesh.uv_source == "existing"


def _slow_unwrap(vertices, faces):
    import time

    time.sleep(30)


def _crashing_unwrap(vertices, faces):
    import os

    os._exit(139)


@pytest.mark.parametrize("fn, phrase", [(_slow_unwrap, "did not finish"), (_crashing_unwrap, "crashed")])
def test_xatlas_hang_or_crash_becomes_unwrap_error(monkeypatch, fn, phrase):
    import core.mesh as mesh_module

    monkeypatch.setattr(mesh_module, "_xatlas_generate", fn)
    arrays = example_arrays("box")
    with pytest.raises(UnwrapError, match=phrase):
        mesh_module.unwrap_uvs(arrays.vertices, arrays.faces, timeout_s=1.0)
