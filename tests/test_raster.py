"""Pure-PyTorch rasterizer against closed forms; gradients by float64 gradcheck."""

import math

import pytest
import torch

from core.camera import make_views
from core.errors import ConfigError
from core.raster import get_rasterizer
from core.raster.mip import mip_level

R = get_rasterizer("torch")
QUAD = torch.tensor([[[-0.5, -0.5, 0.0, 1.0], [0.5, -0.5, 0.0, 1.0], [0.5, 0.5, 0.0, 1.0], [-0.5, 0.5, 0.0, 1.0]]])
QUAD_TRI = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)


def test_backend_selection():
    assert get_rasterizer("auto", "cpu").name == "torch"
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        get_rasterizer("nvdiffrast", "cpu")
    with pytest.raises(ConfigError, match="unknown rasterizer"):
        get_rasterizer("opengl")


def test_quad_coverage_is_exact():
    rast, _ = R.rasterize(QUAD, QUAD_TRI, (16, 16))
    covered = rast[0, ..., 3] > 0
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[4:12, 4:12] = True  # pixel centres (i+0.5)/16*2-1 inside [-0.5, 0.5]
    assert torch.equal(covered, expected)
    # Row 0 is the bottom (OpenGL): a triangle in the lower half lands in low rows.
    low = torch.tensor([[[-1.0, -1.0, 0, 1], [1.0, -1.0, 0, 1], [0.0, -0.2, 0, 1]]])
    rast, _ = R.rasterize(low, QUAD_TRI[:1], (16, 16))
    rows = torch.nonzero(rast[0, ..., 3] > 0)[:, 0]
    assert rows.max() < 8


def test_barycentrics_and_depth_of_known_pixel():
    rast, _ = R.rasterize(QUAD, QUAD_TRI, (16, 16))
    u, v, z, tid = rast[0, 4, 11]  # pixel centre x = 11.5/16*2-1 = 0.4375, y = -0.4375
    # Triangle 0 (v0 (-.5,-.5), v1 (.5,-.5), v2 (.5,.5)): point = u v0 + v v1 + (1-u-v) v2.
    assert int(tid) == 1
    point = u * QUAD[0, 0, :2] + v * QUAD[0, 1, :2] + (1 - u - v) * QUAD[0, 2, :2]
    assert torch.allclose(point, torch.tensor([0.4375, -0.4375]), atol=1e-6)
    assert float(z) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("near_first", [True, False])
def test_depth_order_nearer_triangle_wins(near_first):
    near = [[-1.0, -1.0, -0.5, 1], [1.0, -1.0, -0.5, 1], [0.0, 1.0, -0.5, 1]]
    far = [[-1.0, 1.0, 0.5, 1], [1.0, 1.0, 0.5, 1], [0.0, -1.0, 0.5, 1]]
    pos = torch.tensor([near + far if near_first else far + near])
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    rast, _ = R.rasterize(pos, tri, (32, 32))
    near_id = 1 if near_first else 2
    assert int(rast[0, 16, 16, 3]) == near_id
    assert float(rast[0, 16, 16, 2]) == pytest.approx(-0.5, abs=1e-5)
    both = (rast[0, ..., 3] > 0)
    assert both.sum() > 0


def _tilted_plane():
    """A square in the plane z = -x * 0.8 (tilted in depth), seen by a perspective camera."""
    verts = torch.tensor([[-1.0, -1.0, 0.8], [1.0, -1.0, -0.8], [1.0, 1.0, -0.8], [-1.0, 1.0, 0.8]])
    views = make_views(torch.tensor([0.0]), torch.tensor([0.0]), 3.0, fov_deg=60.0)
    clip = torch.einsum("vj,bij->bvi", torch.nn.functional.pad(verts, (0, 1), value=1.0), views.mvp)
    return verts, clip, views


def test_perspective_correct_interpolation():
    verts, clip, views = _tilted_plane()
    res = 64
    rast, _ = R.rasterize(clip, QUAD_TRI, (res, res))
    world, _ = R.interpolate(verts, rast, QUAD_TRI)
    mask = rast[0, ..., 3] > 0
    # Re-projecting the interpolated world position must land on the pixel centre.
    reproj = torch.einsum("hwj,ij->hwi", torch.nn.functional.pad(world[0], (0, 1), value=1.0), views.mvp[0])
    ndc = reproj[..., :2] / reproj[..., 3:]
    ys, xs = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    centre = torch.stack([(xs + 0.5) / res * 2 - 1, (ys + 0.5) / res * 2 - 1], -1)
    err = (ndc - centre).abs()[mask].max()
    assert err < 1e-4
    # Affine (screen-space) interpolation of the same attribute is visibly wrong on this plane.
    w = clip[0, :, 3]
    bary_affine = rast[..., :2]  # perspective-correct weights -> screen-space weights
    b0, b1 = bary_affine[0, ..., 0], bary_affine[0, ..., 1]
    tid = rast[0, ..., 3].long() - 1
    corners = QUAD_TRI.long()[tid.clamp_min(0)]
    q = torch.stack([b0, b1, 1 - b0 - b1], -1) * w[corners]  # l_i proportional to b_i * w_i
    l = q / q.sum(-1, keepdim=True)
    affine = (l[..., :, None] * verts[corners]).sum(-2)
    assert (affine - world[0]).abs()[mask].max() > 0.05


def test_interpolate_derivatives_match_finite_differences():
    verts, clip, _ = _tilted_plane()
    rast, db = R.rasterize(clip, QUAD_TRI, (64, 64))
    attr = verts[:, :2] * 0.5 + 0.5
    out, da = R.interpolate(attr, rast, QUAD_TRI, rast_db=db, diff_attrs="all")
    assert da.shape == (1, 64, 64, 4)
    inner = (rast[0, ..., 3] > 0)
    inner = inner[1:-1, 1:-1] & inner[2:, 1:-1] & inner[:-2, 1:-1] & inner[1:-1, 2:] & inner[1:-1, :-2]
    fd_x = (out[0, 1:-1, 2:] - out[0, 1:-1, :-2]) / 2
    fd_y = (out[0, 2:, 1:-1] - out[0, :-2, 1:-1]) / 2
    assert torch.allclose(da[0, 1:-1, 1:-1, 0][inner], fd_x[..., 0][inner], atol=2e-4)
    assert torch.allclose(da[0, 1:-1, 1:-1, 1][inner], fd_y[..., 0][inner], atol=2e-4)
    assert torch.allclose(da[0, 1:-1, 1:-1, 3][inner], fd_y[..., 1][inner], atol=2e-4)


def test_bilinear_sampling_by_hand():
    tex = torch.tensor([[[0.0], [1.0]], [[2.0], [3.0]]]).unsqueeze(0)  # [1,2,2,1]
    uv = torch.tensor([[[[0.5, 0.5], [0.25, 0.25], [0.375, 0.75]]]])
    out = R.texture(tex, uv, filter_mode="linear", boundary_mode="clamp")[0, 0, :, 0]
    # (0.5,0.5): centre of all four texels -> mean 1.5; (0.25,0.25): centre of texel (0,0) -> 0;
    # (0.375,0.75): x between texel 0/1 at 0.25, y at row 1 centre -> 2 + 0.25 = 2.25.
    assert torch.allclose(out, torch.tensor([1.5, 0.0, 2.25]))


def test_wrap_and_clamp_boundaries():
    tex = torch.tensor([[[0.0], [1.0], [2.0], [3.0]]]).unsqueeze(0)  # 1 row, 4 texels
    uv = torch.tensor([[[[0.0, 0.5], [1.0, 0.5]]]])
    wrap = R.texture(tex, uv, filter_mode="linear", boundary_mode="wrap")[0, 0, :, 0]
    clamp = R.texture(tex, uv, filter_mode="linear", boundary_mode="clamp")[0, 0, :, 0]
    assert torch.allclose(wrap, torch.tensor([1.5, 1.5]))  # halfway between texel 3 and texel 0
    assert torch.allclose(clamp, torch.tensor([0.0, 3.0]))


def _block_checker(size: int, block: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((x // block) + (y // block)) % 2).float()[None, ..., None]


def test_mip_level_selection_and_trilinear():
    tex = _block_checker(16, 4)  # levels 0-2 keep the 4-texel blocks, level 3 averages to 0.5
    centre = torch.tensor([[[[2.0 / 16, 2.0 / 16]]]])  # centre of block (0,0): value 0
    other = torch.tensor([[[[6.0 / 16, 2.0 / 16]]]])  # centre of block (1,0): value 1
    for minification, expect_block in ((1, True), (4, True), (8, False)):
        da = torch.tensor([[[[minification / 16, 0.0, 0.0, minification / 16]]]])
        assert float(mip_level(da.reshape(1, 4), (16, 16))) == pytest.approx(math.log2(minification))
        a = R.texture(tex, centre, da, filter_mode="linear-mipmap-linear")
        b = R.texture(tex, other, da, filter_mode="linear-mipmap-linear")
        if expect_block:
            assert float(a) == pytest.approx(0.0, abs=1e-6) and float(b) == pytest.approx(1.0, abs=1e-6)
        else:
            assert float(a) == pytest.approx(0.5, abs=1e-6) and float(b) == pytest.approx(0.5, abs=1e-6)
    # Halfway between level 2 (block value 0) and level 3 (0.5): trilinear gives 0.25.
    da = torch.tensor([[[[2 ** 2.5 / 16, 0.0, 0.0, 2 ** 2.5 / 16]]]])
    assert float(R.texture(tex, centre, da, filter_mode="linear-mipmap-linear")) == pytest.approx(0.25, abs=1e-5)


def test_gradcheck_interpolate_and_texture():
    rast, db = R.rasterize(QUAD, QUAD_TRI, (6, 6))
    attr = torch.rand(1, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: R.interpolate(a, rast, QUAD_TRI, rast_db=db, diff_attrs="all"),
                                    (attr,), eps=1e-6, atol=1e-5)
    tex = torch.rand(1, 8, 8, 2, dtype=torch.float64, requires_grad=True)
    uv = torch.rand(1, 3, 3, 2, dtype=torch.float64) * 0.9 + 0.03
    da = torch.full((1, 3, 3, 4), 0.3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: R.texture(t, uv, filter_mode="linear"), (tex,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda t: R.texture(t, uv, da, filter_mode="linear-mipmap-linear"), (tex,),
                                    eps=1e-6, atol=1e-5)
    uv_var = uv.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda u: R.texture(tex.detach(), u, filter_mode="linear"), (uv_var,),
                                    eps=1e-7, atol=1e-4)


def test_antialias_touches_only_silhouettes_and_passes_gradients():
    rast, _ = R.rasterize(QUAD, QUAD_TRI, (16, 16))
    color = torch.where(rast[..., 3:4] > 0, torch.tensor([1.0, 0.2, 0.2]), torch.tensor([0.0, 0.0, 1.0]))
    color.requires_grad_(True)
    out = R.antialias(color, rast, QUAD, QUAD_TRI)
    changed = (out - color).abs().sum(-1)[0] > 0
    assert changed[4, 4] and changed[3, 8] and changed[8, 12]  # pixels on both sides of the edge
    assert not changed[8, 8] and not changed[0, 0]  # interior and far background untouched
    # The diagonal shared by the two quad triangles is not a silhouette: untouched.
    assert not changed[6, 6] and not changed[9, 9]
    out.sum().backward()
    assert color.grad is not None and color.grad.abs().sum() > 0
