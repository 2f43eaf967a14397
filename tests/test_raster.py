"""Closed-form checks of the pure-PyTorch rasterizer (and of the backend selection).

Every expected value is computed by hand or analytically here, independently of the backend:
pixel sets of known quads, depth order, perspective-correct attributes on a tilted plane,
bilinear / mip-mapped texture lookups, screen-space derivatives against finite differences,
float64 gradchecks, and the antialiasing blend across a known silhouette edge.
"""

from __future__ import annotations

import math

import pytest
import torch

from core.errors import ConfigError
from core.raster import get_rasterizer
from core.raster.mip import mip_pyramid
from core.raster.torch_backend import TorchRasterizer, _fragment_keys


@pytest.fixture(scope="module")
def rast() -> TorchRasterizer:
    return TorchRasterizer()


def ndc(px: float, size: int) -> float:
    """NDC coordinate of a position given in pixels from the bottom / left image edge."""
    return px / size * 2.0 - 1.0


def quad(x0: float, x1: float, y0: float, y1: float, h: int, w: int, z: float = 0.0):
    """Two triangles covering the pixel-space rectangle [x0, x1] x [y0, y1] (w = 1)."""
    pos = torch.tensor([[ndc(x0, w), ndc(y0, h), z, 1.0], [ndc(x1, w), ndc(y0, h), z, 1.0],
                        [ndc(x1, w), ndc(y1, h), z, 1.0], [ndc(x0, w), ndc(y1, h), z, 1.0]])
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    return pos.unsqueeze(0), tri


def covered_set(r: torch.Tensor) -> set[tuple[int, int]]:
    rows, cols = torch.nonzero(r[0, ..., 3] > 0, as_tuple=True)
    return set(zip(rows.tolist(), cols.tolist()))


# ------------------------------------------------------------------------------- backend choice

def test_auto_on_cpu_is_torch_backend():
    assert get_rasterizer("auto", "cpu").name == "torch"
    assert isinstance(get_rasterizer("torch"), TorchRasterizer)


def test_nvdiffrast_without_cuda_is_a_config_error():
    with pytest.raises(ConfigError, match="nvdiffrast"):
        get_rasterizer("nvdiffrast", "cpu")
    with pytest.raises(ConfigError, match="unknown rasterizer"):
        get_rasterizer("opengl", "cpu")


# ------------------------------------------------------------------------------- coverage

def test_axis_aligned_quad_covers_exactly_its_pixels(rast):
    h, w = 16, 20
    pos, tri = quad(3.0, 11.0, 2.0, 12.0, h, w)  # edges between pixel centres
    r, _ = rast.rasterize(pos, tri, (h, w))
    expected = {(y, x) for y in range(2, 12) for x in range(3, 11)}  # row 0 = bottom
    assert covered_set(r) == expected
    assert set(r[0, ..., 3].unique().tolist()) == {0.0, 1.0, 2.0}


def test_centres_on_shared_diagonal_are_covered_once(rast):
    """The diagonal of this square passes exactly through pixel centres: no cracks, and the
    fragment count shows each centre went to exactly one of the two triangles."""
    h = w = 12
    pos, tri = quad(2.0, 10.0, 2.0, 10.0, h, w)
    r, _ = rast.rasterize(pos, tri, (h, w))
    assert covered_set(r) == {(y, x) for y in range(2, 10) for x in range(2, 10)}
    pix, _, _ = _fragment_keys(pos, tri.long(), h, w)
    assert torch.bincount(pix, minlength=h * w).max() == 1


def test_jittered_mesh_is_watertight(rast):
    """A plane cut into many randomly sloped triangles: every centre of the rectangle is covered
    by exactly one fragment (exact edge functions + tie-break), nothing outside."""
    h, w, n = 40, 48, 7
    gen = torch.Generator().manual_seed(0)
    xs = torch.linspace(4.0, 44.0, n + 1)
    ys = torch.linspace(4.0, 36.0, n + 1)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    jitter = (torch.rand(2, n + 1, n + 1, generator=gen) - 0.5) * 3.0
    inner = torch.zeros(n + 1, n + 1, dtype=torch.bool)
    inner[1:-1, 1:-1] = True
    gx = torch.where(inner, gx + jitter[0], gx)
    gy = torch.where(inner, gy + jitter[1], gy)
    pos = torch.stack([gx.reshape(-1) / w * 2 - 1, gy.reshape(-1) / h * 2 - 1,
                       torch.zeros((n + 1) ** 2), torch.ones((n + 1) ** 2)], -1)
    idx = torch.arange((n + 1) ** 2).view(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    tri = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)])
    tri = tri.int()
    r, _ = rast.rasterize(pos.unsqueeze(0), tri, (h, w))
    assert covered_set(r) == {(y, x) for y in range(4, 36) for x in range(4, 44)}
    pix, _, _ = _fragment_keys(pos.unsqueeze(0), tri.long(), h, w)
    assert torch.bincount(pix, minlength=h * w).max() == 1


def test_both_windings_rasterize_and_ids_match_submission(rast):
    h = w = 8
    pos, tri = quad(0.0, 8.0, 0.0, 8.0, h, w)
    flipped = tri[:, [0, 2, 1]]
    r1, _ = rast.rasterize(pos, tri, (h, w))
    r2, _ = rast.rasterize(pos, flipped, (h, w))
    assert torch.equal(r1[..., 3], r2[..., 3]) and (r1[..., 3] > 0).all()


# ------------------------------------------------------------------------------- depth

@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_triangle_wins_in_both_submission_orders(rast, near_first):
    h = w = 16
    near = [[-0.8, -0.8, -0.5, 1.0], [0.8, -0.8, -0.5, 1.0], [0.0, 0.8, -0.5, 1.0]]
    far = [[-0.9, 0.9, 0.5, 1.0], [0.9, 0.9, 0.5, 1.0], [0.0, -0.9, 0.5, 1.0]]
    verts = near + far if near_first else far + near
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    r, _ = rast.rasterize(torch.tensor([verts]), tri, (h, w))
    near_id = 1.0 if near_first else 2.0
    centre = r[0, h // 2, w // 2]
    assert centre[3] == near_id and centre[2] == pytest.approx(-0.5, abs=1e-6)
    # Where only the far triangle is (near the top-left corner), it shows.
    assert r[0, h - 2, 2, 3] == 3.0 - near_id and r[0, h - 2, 2, 2] == pytest.approx(0.5, abs=1e-6)


def test_fragments_beyond_the_far_plane_and_behind_the_eye_are_dropped(rast):
    h = w = 8
    beyond = torch.tensor([[[-1.0, -1.0, 1.5, 1.0], [3.0, -1.0, 1.5, 1.0], [-1.0, 3.0, 1.5, 1.0]]])
    behind = torch.tensor([[[-1.0, -1.0, 0.0, 1.0], [3.0, -1.0, 0.0, 1.0], [-1.0, 3.0, 0.0, -1.0]]])
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    assert rast.rasterize(beyond, tri, (h, w))[0].abs().sum() == 0
    assert rast.rasterize(behind, tri, (h, w))[0].abs().sum() == 0


# ------------------------------------------------------------------------------- perspective

def perspective(fov_deg: float = 60.0, near: float = 0.1, far: float = 10.0) -> torch.Tensor:
    f = 1.0 / math.tan(math.radians(fov_deg) / 2)
    a, b = -(far + near) / (far - near), -2 * far * near / (far - near)
    return torch.tensor([[f, 0, 0, 0], [0, f, 0, 0], [0, 0, a, b], [0, 0, -1, 0]], dtype=torch.float64)


def tilted_plane(h: int, w: int):
    """A plane z = -3 + 0.8 x (camera space) seen under perspective; attribute = camera-space x.
    Returns clip positions, triangles, attribute and the analytic attribute per pixel."""
    xs = torch.tensor([-1.2, 1.2, 1.2, -1.2], dtype=torch.float64)
    ys = torch.tensor([-1.2, -1.2, 1.2, 1.2], dtype=torch.float64)
    zs = -3.0 + 0.8 * xs
    proj = perspective()
    clip = torch.stack([xs, ys, zs, torch.ones(4, dtype=torch.float64)], -1) @ proj.T
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    # Ray through pixel centre: x = t * dx, z = -t with dx = X_ndc / f; on the plane
    # -t = -3 + 0.8 t dx  ->  t = 3 / (1 + 0.8 dx), x = t * dx.
    f = proj[0, 0]
    x_ndc = (torch.arange(w, dtype=torch.float64) + 0.5) / w * 2 - 1
    dx = (x_ndc / f).expand(h, w)
    analytic = 3.0 * dx / (1.0 + 0.8 * dx)
    return clip.float().unsqueeze(0), tri, xs.float().view(4, 1), analytic


def test_interpolation_is_perspective_correct(rast):
    h, w = 24, 32
    pos, tri, attr, analytic = tilted_plane(h, w)
    r, _ = rast.rasterize(pos, tri, (h, w))
    out, _ = rast.interpolate(attr, r, tri)
    mask = r[0, ..., 3] > 0
    assert mask.float().mean() > 0.5
    err = (out[0, ..., 0].double() - analytic)[mask].abs().max()
    assert err < 1e-5
    # Affine (screen-space) barycentrics would be visibly wrong on this plane.
    v = attr.view(-1)[tri.long()]  # [2, 3]
    u_s, v_s = _screen_barycentrics(pos[0], tri, r)
    t = r[0, ..., 3].long().clamp_min(1) - 1
    affine = u_s * v[t, 0] + v_s * v[t, 1] + (1 - u_s - v_s) * v[t, 2]
    assert (affine.double() - analytic)[mask].abs().max() > 0.1


def _screen_barycentrics(pos: torch.Tensor, tri: torch.Tensor, r: torch.Tensor):
    """Affine screen-space barycentrics of each pixel centre w.r.t. its rasterized triangle."""
    h, w = r.shape[1:3]
    xy = pos[:, :2] / pos[:, 3:]
    t = r[0, ..., 3].long().clamp_min(1) - 1
    p = xy[tri.long()[t]]  # [H, W, 3, 2]
    gy, gx = torch.meshgrid((torch.arange(h) + 0.5) / h * 2 - 1, (torch.arange(w) + 0.5) / w * 2 - 1, indexing="ij")
    q = torch.stack([gx, gy], -1)

    def cross(a, b, c):
        return (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (c[..., 0] - a[..., 0]) * (b[..., 1] - a[..., 1])

    area = cross(p[..., 0, :], p[..., 1, :], p[..., 2, :])
    return cross(q, p[..., 1, :], p[..., 2, :]) / area, cross(p[..., 0, :], q, p[..., 2, :]) / area


def test_rast_depth_is_z_over_w(rast):
    h, w = 12, 16
    pos, tri, _, analytic_x = tilted_plane(h, w)
    r, _ = rast.rasterize(pos, tri, (h, w))
    proj = perspective()
    z_cam = -3.0 + 0.8 * analytic_x  # camera-space depth on the plane
    z_ndc = (proj[2, 2] * z_cam + proj[2, 3]) / (-z_cam)
    mask = r[0, ..., 3] > 0
    assert (r[0, ..., 2].double() - z_ndc)[mask].abs().max() < 1e-5


def test_out_da_matches_finite_differences(rast):
    h, w = 48, 64
    pos, tri, attr, _ = tilted_plane(h, w)
    r, db = rast.rasterize(pos, tri, (h, w))
    ys = torch.tensor([[-1.2], [-1.2], [1.2], [1.2]])
    attr2 = torch.cat([attr, 0.5 * ys + 0.3 * attr], 1)  # a second attribute varying along Y too
    out, out_da = rast.interpolate(attr2, r, tri, rast_db=db, diff_attrs="all")
    assert out_da.shape == (1, h, w, 4)
    same = (r[..., 3] > 0)
    inner = same[:, 1:-1, 1:-1] & same[:, 1:-1, 2:] & same[:, 1:-1, :-2] & same[:, 2:, 1:-1] & same[:, :-2, 1:-1]
    fd_x = (out[:, 1:-1, 2:] - out[:, 1:-1, :-2]) / 2
    fd_y = (out[:, 2:, 1:-1] - out[:, :-2, 1:-1]) / 2
    da = out_da[:, 1:-1, 1:-1]
    for c in range(2):
        scale = max(fd_x[..., c][inner].abs().max(), fd_y[..., c][inner].abs().max())
        assert (da[..., 2 * c][inner] - fd_x[..., c][inner]).abs().max() < 2e-3 * scale
        assert (da[..., 2 * c + 1][inner] - fd_y[..., c][inner]).abs().max() < 2e-3 * scale
    _, only_second = rast.interpolate(attr2, r, tri, rast_db=db, diff_attrs=[1])
    assert torch.equal(only_second, out_da[..., 2:4])


def test_batched_views_match_single_views(rast):
    h, w = 16, 16
    pos, tri, attr, _ = tilted_plane(h, w)
    shifted = pos.clone()
    shifted[..., 0] += 0.3 * shifted[..., 3]
    both, both_db = rast.rasterize(torch.cat([pos, shifted]), tri, (h, w))
    for i, p in enumerate((pos, shifted)):
        single, single_db = rast.rasterize(p, tri, (h, w))
        assert torch.equal(both[i], single[0]) and torch.equal(both_db[i], single_db[0])
    per_view = torch.stack([attr, attr * 2])  # [2, V, 1]
    out, _ = rast.interpolate(per_view, both, tri)
    ref, _ = rast.interpolate(attr * 2, both[1:], tri)
    assert torch.allclose(out[1], ref[0])


# ------------------------------------------------------------------------------- texture

def test_bilinear_lookup_matches_hand_computation(rast):
    tex = torch.tensor([[[0.0], [1.0], [2.0], [3.0]], [[10.0], [11.0], [12.0], [13.0]]]).unsqueeze(0)  # 2x4
    # u = 0.3 -> x = 0.3 * 4 - 0.5 = 0.7 (between texels 0 and 1); v = 0.6 -> y = 0.7.
    uv = torch.tensor([0.3, 0.6]).view(1, 1, 1, 2)
    expected = (0.3 * 0.3 * 0.0 + 0.7 * 0.3 * 1.0 + 0.3 * 0.7 * 10.0 + 0.7 * 0.7 * 11.0)
    out = rast.texture(tex, uv, filter_mode="linear")
    assert out.item() == pytest.approx(expected, abs=1e-5)
    assert rast.texture(tex, uv).item() == pytest.approx(expected, abs=1e-5)  # auto = linear
    assert rast.texture(tex, uv, filter_mode="nearest").item() == 11.0


def test_wrap_and_clamp_boundaries(rast):
    tex = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]]).unsqueeze(0)  # 1 row, 4 texels
    uv = torch.tensor([[1.05, 0.5], [-0.05, 0.5], [0.05, 0.5]]).view(1, 1, 3, 2)
    wrap = rast.texture(tex, uv, filter_mode="linear", boundary_mode="wrap").view(-1)
    clamp = rast.texture(tex, uv, filter_mode="linear", boundary_mode="clamp").view(-1)
    # u = 1.05 wraps to 0.05 -> x = -0.3: 0.3 of texel 3 (wrapped) + 0.7 of texel 0.
    assert wrap[0].item() == pytest.approx(0.3 * 4.0 + 0.7 * 1.0, abs=1e-5)
    # u = -0.05 wraps to 0.95 -> x = 3.3: 0.7 of texel 3 + 0.3 of texel 0.
    assert wrap[1].item() == pytest.approx(0.7 * 4.0 + 0.3 * 1.0, abs=1e-5)
    assert wrap[2].item() == pytest.approx(wrap[0].item(), abs=1e-6)
    assert clamp.tolist() == pytest.approx([4.0, 1.0, 1.0], abs=1e-6)


def _level_lookup(level: torch.Tensor, uv: torch.Tensor, rast: TorchRasterizer) -> torch.Tensor:
    return rast.texture(level, uv, filter_mode="linear")


def test_mip_level_follows_the_footprint(rast):
    size = 32
    gen = torch.Generator().manual_seed(1)
    tex = torch.rand(1, size, size, 2, generator=gen)
    levels = mip_pyramid(tex)
    assert [lv.shape[1] for lv in levels] == [32, 16, 8, 4, 2, 1]
    uv = torch.rand(1, 4, 5, 2, generator=gen)
    lookups = [_level_lookup(lv, uv, rast) for lv in levels]
    for i in range(1, 4):  # the levels must be distinguishable for the test to mean anything
        assert (lookups[i] - lookups[i + 1]).abs().max() > 1e-3

    def footprint(texels: float, rotate: bool = False) -> torch.Tensor:
        d = texels / size
        da = torch.tensor([0.0, d, d, 0.0]) if rotate else torch.tensor([d, 0.0, 0.0, d])
        return da.expand(1, 4, 5, 4).contiguous()

    out = rast.texture(tex, uv, footprint(4.0), filter_mode="linear-mipmap-linear")
    assert torch.allclose(out, lookups[2], atol=1e-5)  # 4x minification reads level 2
    out = rast.texture(tex, uv, footprint(4.0, rotate=True))  # auto mode, rotated footprint
    assert torch.allclose(out, lookups[2], atol=1e-5)
    trilinear = rast.texture(tex, uv, footprint(2.0 ** 1.25), filter_mode="linear-mipmap-linear")
    assert torch.allclose(trilinear, 0.75 * lookups[1] + 0.25 * lookups[2], atol=1e-5)
    nearest_level = rast.texture(tex, uv, footprint(2.0 ** 1.75), filter_mode="linear-mipmap-nearest")
    assert torch.allclose(nearest_level, lookups[1], atol=1e-5)  # truncates, as nvdiffrast
    magnified = rast.texture(tex, uv, footprint(0.25), filter_mode="linear-mipmap-linear")
    assert torch.allclose(magnified, lookups[0], atol=1e-5)
    capped = rast.texture(tex, uv, footprint(16.0), max_mip_level=1)
    assert torch.allclose(capped, lookups[1], atol=1e-5)


def test_anisotropic_footprint_uses_the_major_axis(rast):
    size = 16
    tex = torch.rand(1, size, size, 1, generator=torch.Generator().manual_seed(2))
    uv = torch.rand(1, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    da = torch.tensor([8.0 / size, 0.0, 0.0, 1.0 / size]).expand(1, 2, 2, 4).contiguous()
    out = rast.texture(tex, uv, da, filter_mode="linear-mipmap-linear")
    assert torch.allclose(out, _level_lookup(mip_pyramid(tex)[3], uv, rast), atol=1e-5)


def test_odd_and_non_square_pyramids_keep_the_mean():
    tex = torch.rand(2, 12, 5, 3, generator=torch.Generator().manual_seed(4))
    levels = mip_pyramid(tex)
    assert [tuple(lv.shape[1:3]) for lv in levels] == [(12, 5), (6, 2), (3, 1), (1, 1)]
    assert torch.allclose(levels[-1].view(2, 3), tex.mean(dim=(1, 2)), atol=1e-5)


def test_batched_textures_match_per_image_lookups(rast):
    gen = torch.Generator().manual_seed(9)
    tex = torch.rand(2, 16, 8, 3, generator=gen)
    uv = torch.rand(2, 3, 4, 2, generator=gen) * 1.4 - 0.2
    da = (torch.rand(2, 3, 4, 4, generator=gen) * 0.3).contiguous()
    for mode in ("nearest", "linear", "linear-mipmap-nearest", "linear-mipmap-linear"):
        both = rast.texture(tex, uv, da, filter_mode=mode)
        for i in range(2):
            one = rast.texture(tex[i:i + 1], uv[i:i + 1], da[i:i + 1], filter_mode=mode)
            assert torch.allclose(both[i], one[0], atol=1e-6), mode
    shared = rast.texture(tex[:1], uv, da)  # one texture broadcast over the batch
    assert torch.allclose(shared[1], rast.texture(tex[:1], uv[1:], da[1:])[0], atol=1e-6)


def test_mip_modes_need_uv_da(rast):
    with pytest.raises(ValueError, match="uv_da"):
        rast.texture(torch.rand(1, 4, 4, 1), torch.rand(1, 2, 2, 2), filter_mode="linear-mipmap-linear")


# ------------------------------------------------------------------------------- gradients

def test_interpolate_gradcheck(rast):
    h, w = 6, 7
    pos, tri, _, _ = tilted_plane(h, w)
    r, db = rast.rasterize(pos, tri, (h, w))
    attr = torch.rand(1, 4, 2, dtype=torch.float64, requires_grad=True)

    def fn(a):
        out, da = rast.interpolate(a, r, tri, rast_db=db, diff_attrs=[1])
        return out, da

    assert torch.autograd.gradcheck(fn, (attr,), eps=1e-6, atol=1e-6)


def _interior_uv(shape, size: int, seed: int) -> torch.Tensor:
    """Random uv whose bilinear fractions stay away from the kinks at texel centres."""
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, size, shape, generator=gen).double()
    frac = 0.2 + 0.6 * torch.rand(shape, generator=gen, dtype=torch.float64)
    return (cells + 0.5 + frac) / size


@pytest.mark.parametrize("boundary", ["wrap", "clamp"])
def test_texture_linear_gradcheck(rast, boundary):
    tex = torch.rand(2, 4, 5, 2, dtype=torch.float64, requires_grad=True)
    uv = _interior_uv((2, 3, 3, 2), 4, 5).requires_grad_(True)
    uv[..., 0].data.mul_(4 / 5)  # width 5: keep inside the texture

    def fn(t, u):
        return rast.texture(t, u, filter_mode="linear", boundary_mode=boundary)

    assert torch.autograd.gradcheck(fn, (tex, uv), eps=1e-6, atol=1e-6)


def test_texture_trilinear_gradcheck(rast):
    size = 8
    tex = torch.rand(1, size, size, 2, dtype=torch.float64, requires_grad=True)
    uv = _interior_uv((1, 3, 4, 2), size, 6)
    gen = torch.Generator().manual_seed(7)
    scale = 2.0 ** (0.3 + 1.4 * torch.rand(1, 3, 4, 1, generator=gen, dtype=torch.float64)) / size
    da = torch.cat([scale, 0.2 * scale, -0.1 * scale, scale], -1).requires_grad_(True)

    def fn(t, d):
        return rast.texture(t, uv, d, filter_mode="linear-mipmap-linear")

    assert torch.autograd.gradcheck(fn, (tex, da), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------- antialias

def test_antialias_blends_exactly_the_silhouette_pixels(rast):
    """A rectangle whose right edge sits at x = 10.3 px: pixel column 10 is 30% covered, so it
    becomes 0.3 * foreground + 0.7 * background; every other pixel is unchanged."""
    h, w = 8, 16
    pos, tri = quad(-2.0, 10.3, -2.0, 10.0, h, w)  # left and bottom edges off screen
    r, _ = rast.rasterize(pos, tri, (h, w))
    fg, bg = torch.tensor([1.0, 0.5, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    color = torch.where((r[..., 3:] > 0), fg, bg).requires_grad_(True)
    out = rast.antialias(color, r, pos, tri)
    changed = (out != color).any(-1)[0]
    assert set(zip(*[t.tolist() for t in torch.nonzero(changed, as_tuple=True)])) == {(y, 10) for y in range(h)}
    assert torch.allclose(out[0, :, 10], 0.3 * fg + 0.7 * bg, atol=1e-5)
    weights = torch.rand_like(out)
    (out * weights).sum().backward()
    # d out[y, 10] / d color[y, 9] = 0.3: gradient flows into the colours being blended.
    assert torch.allclose(color.grad[0, :, 9], weights[0, :, 9] + 0.3 * weights[0, :, 10], atol=1e-5)


def test_antialias_moves_with_the_edge_and_reaches_pos(rast):
    h, w = 8, 16
    pos, tri = quad(-2.0, 10.3, 4.2, 20.0, h, w)  # bottom edge at y = 4.2
    pos = pos.clone().requires_grad_(True)
    r, _ = rast.rasterize(pos, tri, (h, w))
    color = (r[..., 3:] > 0).float().expand(-1, -1, -1, 3).contiguous()
    out = rast.antialias(color, r, pos, tri)
    # Row 4 (centre 4.5) is covered but the edge at 4.2 leaves 20% of it uncovered: 0.8.
    assert torch.allclose(out[0, 4, :10, 0], torch.full((10,), 0.8), atol=1e-5)
    assert torch.equal(out[0, 3], color[0, 3]) and torch.equal(out[0, 5:, :10], color[0, 5:, :10])
    out[0, 4, :10, 0].sum().backward()
    assert pos.grad is not None and pos.grad.abs().sum() > 0


def test_antialias_leaves_interior_and_hidden_edges_alone(rast):
    """On a closed mesh, only pixels next to the outline change; creases between front faces and
    the image interior stay bit-identical."""
    import numpy as np

    n_lat, n_lon = 12, 16
    th = np.linspace(0, np.pi, n_lat + 1)
    ph = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    tt, pp = np.meshgrid(th[1:-1], ph, indexing="ij")
    verts = np.concatenate([[[0, 0.8, 0]], np.stack([0.8 * np.sin(tt) * np.cos(pp), 0.8 * np.cos(tt),
                            0.8 * np.sin(tt) * np.sin(pp)], -1).reshape(-1, 3), [[0, -0.8, 0]]])
    faces = []
    ring = lambda i, j: 1 + i * n_lon + (j % n_lon)  # noqa: E731
    for j in range(n_lon):
        faces.append([0, ring(0, j + 1), ring(0, j)])
        faces.append([len(verts) - 1, ring(n_lat - 2, j), ring(n_lat - 2, j + 1)])
        for i in range(n_lat - 2):
            faces.append([ring(i, j), ring(i, j + 1), ring(i + 1, j + 1)])
            faces.append([ring(i, j), ring(i + 1, j + 1), ring(i + 1, j)])
    v = torch.tensor(verts, dtype=torch.float32)
    tri = torch.tensor(faces, dtype=torch.int32)
    pos = torch.cat([v[:, :2], (v[:, 2:] - 3.0) * 0.1, torch.ones(len(v), 1)], 1).unsqueeze(0)  # ortho
    h = w = 32
    r, _ = rast.rasterize(pos, tri, (h, w))
    color = torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(8))
    color = torch.where(r[..., 3:] > 0, color, torch.zeros(3))
    out = rast.antialias(color, r, pos, tri)
    changed = (out != color).any(-1)
    covered = r[..., 3] > 0
    near_outline = torch.zeros_like(covered)
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        near_outline |= covered != torch.roll(covered, (dy, dx), (1, 2))
    assert changed.any()
    assert not (changed & ~near_outline).any()
