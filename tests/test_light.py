"""Split-sum lighting: FG table, HDR reading, cubemaps, prefiltered light, normal maps, shading.

Resolutions are kept tiny so the whole module runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import brdf_lut
from core.brdf_lut import fg_lut, hammersley, sample_fg
from core.envmap import (ENVIRONMENTS, SKY_SUN_DIRECTION, CubeMipAtlas, cube_directions, cubemap_lookup,
                         dir_to_equirect_uv, dirs_to_cube_uv, equirect_directions, equirect_to_cubemap, load_hdr,
                         procedural_env, sample_equirect, save_hdr, texel_solid_angles)
from core.errors import ConfigError
from core.light import (EnvironmentLight, _box_chain, convolve_brute_force, convolve_importance, ggx_weight,
                        level_roughness, roughness_to_level)
from core.shading import linear_to_srgb, perturb_normal, shade_pbr, srgb_to_linear


def _unit(*v: float) -> torch.Tensor:
    return F.normalize(torch.tensor(v, dtype=torch.float32), dim=0)


def _random_dirs(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1).to(dtype)


@pytest.fixture(scope="module")
def small_lut() -> torch.Tensor:
    return fg_lut(size=32, samples=512)


@pytest.fixture(scope="module")
def white_light() -> EnvironmentLight:
    return EnvironmentLight.from_equirect(torch.ones(32, 64, 3), base_res=32, intensity=2.0, min_res=8)


@pytest.fixture(scope="module")
def sky_light() -> EnvironmentLight:
    return EnvironmentLight.procedural("sky", base_res=32, min_res=8)


# =============================================================================== FG table
def _fg_quadrature(roughness: float, n_dot_v: float, n_theta: int = 300, n_phi: int = 300) -> tuple[float, float]:
    """Independent reference: midpoint quadrature over the light hemisphere of
    (1 - Fc) f/F (n.l) and Fc f/F (n.l), f/F = D G / (4 nl nv), G via Smith Lambda."""
    a = roughness**2
    th = (np.arange(n_theta) + 0.5) / n_theta * (math.pi / 2)
    ph = (np.arange(n_phi) + 0.5) / n_phi * (2 * math.pi)
    th, ph = np.meshgrid(th, ph, indexing="ij")
    l_vec = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1)
    v_vec = np.array([math.sqrt(1 - n_dot_v**2), 0.0, n_dot_v])
    h = l_vec + v_vec
    h /= np.linalg.norm(h, axis=-1, keepdims=True)
    nh, nl, vh = h[..., 2], l_vec[..., 2], h @ v_vec
    d = a**2 / (math.pi * (nh**2 * (a**2 - 1) + 1) ** 2)

    def lam(cos: np.ndarray | float) -> np.ndarray | float:
        tan2 = (1 - cos**2) / cos**2
        return (-1 + np.sqrt(1 + a**2 * tan2)) / 2

    g = 1 / (1 + lam(n_dot_v) + lam(nl))
    f = d * g / (4 * nl * n_dot_v)
    fc = (1 - vh) ** 5
    d_omega = np.sin(th) * (math.pi / 2 / n_theta) * (2 * math.pi / n_phi)
    return float(((1 - fc) * f * nl * d_omega).sum()), float((fc * f * nl * d_omega).sum())


def test_hammersley_points_are_the_radical_inverse():
    pts = hammersley(8)
    assert pts[:, 0].tolist() == [i / 8 for i in range(8)]
    assert pts[:, 1].tolist() == [0.0, 0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875]


def test_fg_lut_shape_range_and_smooth_limit(small_lut: torch.Tensor):
    assert small_lut.shape == (32, 32, 2) and small_lut.dtype == torch.float32
    assert bool((small_lut >= 0).all()) and bool((small_lut.sum(-1) <= 1.001).all())
    # Roughness -> 0: a perfect mirror reflects everything, A + B -> 1 at every n.v; at n.v -> 1
    # the Fresnel bias vanishes.
    assert torch.allclose(small_lut[0, 4:].sum(-1), torch.ones(28), atol=0.02)
    assert small_lut[0, -1, 0] > 0.98 and small_lut[0, -1, 1] < 0.01


def test_fg_lut_trends(small_lut: torch.Tensor):
    total = small_lut.sum(-1)
    # Rougher surfaces lose energy (single scattering) at normal incidence ...
    assert bool((total[1:, -1] <= total[:-1, -1] + 1e-4).all())
    assert total[-1, -1] < 0.7
    # ... and the Fresnel bias B grows towards grazing angles.
    mid = small_lut[16, :, 1]
    assert bool((mid[1:] <= mid[:-1] + 1e-4).all())


@pytest.mark.parametrize("row,col", [(6, 2), (6, 8), (10, 5), (10, 14), (15, 9), (12, 1)])
def test_fg_lut_matches_independent_quadrature(row: int, col: int):
    lut = fg_lut(size=16, samples=1024)
    a_ref, b_ref = _fg_quadrature((row + 0.5) / 16, (col + 0.5) / 16)
    assert float(lut[row, col, 0]) == pytest.approx(a_ref, abs=0.012)
    assert float(lut[row, col, 1]) == pytest.approx(b_ref, abs=0.006)


def test_fg_lut_disk_cache_round_trip(tmp_path):
    first = fg_lut(size=8, samples=64, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and "8x8" in files[0].name
    brdf_lut._fg_cached.cache_clear()
    again = fg_lut(size=8, samples=64, cache_dir=tmp_path)
    assert torch.equal(first, again)
    again[0, 0, 0] = 123.0  # callers get copies: the cache must not change
    assert fg_lut(size=8, samples=64, cache_dir=tmp_path)[0, 0, 0] != 123.0


def test_sample_fg_hits_texel_centres_and_clamps(small_lut: torch.Tensor):
    rows = torch.tensor([3, 17, 31])
    cols = torch.tensor([0, 9, 31])
    out = sample_fg(small_lut, (cols + 0.5) / 32, (rows + 0.5) / 32)
    assert torch.allclose(out, small_lut[rows, cols], atol=1e-6)
    edge = sample_fg(small_lut, torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]))
    assert torch.allclose(edge, small_lut[[0, 31], [0, 31]], atol=1e-6)
    r = torch.tensor([0.37], requires_grad=True)
    sample_fg(small_lut, torch.tensor([0.6]), r)[..., 0].sum().backward()
    assert float(r.grad.abs()) > 0


# =============================================================================== HDR files
def _rgbe(img: np.ndarray) -> np.ndarray:
    """Tiny test-side RGBE encoder (independent of core.envmap.save_hdr)."""
    peak = img.max(-1)
    out = np.zeros(img.shape[:2] + (4,), dtype=np.uint8)
    for idx in np.ndindex(*img.shape[:2]):
        if peak[idx] < 1e-30:
            continue
        e = math.frexp(float(peak[idx]))[1]
        out[idx][:3] = np.floor(img[idx] / 2.0**e * 256).clip(0, 255)
        out[idx][3] = e + 128
    return out


def _rle_channel(values: bytes) -> bytes:
    """New-style RLE of one channel: runs of >= 3 equal bytes as (128 + n, value), else literals."""
    out, i = bytearray(), 0
    while i < len(values):
        j = i
        while j < len(values) and values[j] == values[i] and j - i < 127:
            j += 1
        if j - i >= 3:
            out += bytes((128 + j - i, values[i]))
            i = j
            continue
        k = i

        def run_starts(p: int) -> bool:
            return p + 2 < len(values) and values[p] == values[p + 1] == values[p + 2]

        while k < len(values) and k - i < 128 and not run_starts(k):
            k += 1
        k = max(k, i + 1)
        out += bytes((k - i,)) + values[i:k]
        i = k
    return bytes(out)


def _write_hdr(path, img: np.ndarray, rle: bool, res_line: str | None = None) -> np.ndarray:
    rgbe = _rgbe(img)
    h, w = img.shape[:2]
    body = bytearray()
    for y in range(h):
        if rle:
            body += bytes((2, 2, w >> 8, w & 255))
            for c in range(4):
                body += _rle_channel(rgbe[y, :, c].tobytes())
        else:
            body += rgbe[y].tobytes()
    head = f"#?RADIANCE\n# test\nFORMAT=32-bit_rle_rgbe\nEXPOSURE=1.0\n\n{res_line or f'-Y {h} +X {w}'}\n"
    path.write_bytes(head.encode() + bytes(body))
    return rgbe


def _decoded(rgbe: np.ndarray) -> np.ndarray:
    e = rgbe[..., 3:].astype(np.float64)
    return np.where(e > 0, (rgbe[..., :3] + 0.5) * np.exp2(e - 136), 0.0)


def _test_image(h: int, w: int) -> np.ndarray:
    g = np.random.default_rng(0)
    img = g.uniform(0, 1, (h, w, 3)) * np.exp2(g.integers(-6, 8, (h, w, 1)))
    img[:, 40:300] = [3.0, 0.25, 0.0]  # long runs for the RLE encoder
    img[0, :5] = 0.0
    return img


@pytest.mark.parametrize("rle", [False, True])
def test_load_hdr_round_trip(tmp_path, rle: bool):
    img = _test_image(5, 300)  # width > 255: the RLE header's width needs both bytes
    rgbe = _write_hdr(tmp_path / "env.hdr", img, rle)
    out = load_hdr(tmp_path / "env.hdr")
    assert out.shape == (5, 300, 3) and out.dtype == torch.float32
    assert np.allclose(out.numpy(), _decoded(rgbe), rtol=1e-6)
    # RGBE shares one exponent per pixel: errors are relative to the pixel's brightest channel.
    assert bool((np.abs(out.numpy() - img) <= img.max(-1, keepdims=True) / 64 + 1e-9).all())


def test_load_hdr_flipped_orientation(tmp_path):
    img = _test_image(4, 16)
    _write_hdr(tmp_path / "up.hdr", img, rle=False, res_line="+Y 4 +X 16")
    _write_hdr(tmp_path / "down.hdr", img, rle=False)
    assert torch.equal(load_hdr(tmp_path / "up.hdr"), torch.flip(load_hdr(tmp_path / "down.hdr"), [0]))


def test_save_hdr_round_trip(tmp_path):
    img = procedural_env("sky", 8)
    save_hdr(tmp_path / "sky.hdr", img)
    back = load_hdr(tmp_path / "sky.hdr")
    assert bool(((back - img).abs() <= img.max(-1, keepdim=True).values / 64).all())


def test_load_hdr_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_hdr(tmp_path / "missing.hdr")
    (tmp_path / "bad.hdr").write_bytes(b"not an hdr")
    with pytest.raises(ConfigError, match="Radiance"):
        load_hdr(tmp_path / "bad.hdr")
    (tmp_path / "trunc.hdr").write_bytes(b"#?RADIANCE\n\n-Y 4 +X 4\n" + struct.pack("4B", 1, 2, 3, 4))
    with pytest.raises(ConfigError):
        load_hdr(tmp_path / "trunc.hdr")
    (tmp_path / "env.exr").write_bytes(b"\x76\x2f\x31\x01")
    try:
        import OpenEXR  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="OpenEXR"):
            load_hdr(tmp_path / "env.exr")


# =============================================================================== equirect / cube
def test_equirect_convention():
    uv = dir_to_equirect_uv(torch.stack([_unit(0, 0, -1), _unit(1, 0, 0), _unit(0, 1, 0), _unit(0, -1, 0),
                                         _unit(-1, 0, 0)]))
    expected = torch.tensor([[0.5, 0.5], [0.75, 0.5], [0.5, 0.0], [0.5, 1.0], [0.25, 0.5]])
    assert torch.allclose(uv[:, 1], expected[:, 1], atol=1e-6)
    assert torch.allclose(uv[[0, 1, 4], 0], expected[[0, 1, 4], 0], atol=1e-6)
    d = equirect_directions(4)
    assert d.shape == (4, 8, 3)
    assert bool((d[0, :, 1] > 0.9).all()) and bool((d[-1, :, 1] < -0.9).all())  # row 0 = zenith
    # The centre columns look along -Z, three quarters of the width along +X.
    assert float(d[2, 4, 2]) < -0.8 and float(d[2, 6, 0]) > 0.8


def test_cube_face_order_and_orientation():
    d = cube_directions(2)
    majors = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float32)
    assert torch.allclose((d * majors[:, None, None]).sum(-1).min(), torch.tensor(1 / math.sqrt(1.5)), atol=1e-6)
    # OpenGL layout: texel (row 0, col 0) sits at (s, t) = (-0.5, -0.5) on a 2x2 face.
    assert torch.allclose(d[0, 0, 0], _unit(1, 0.5, 0.5))     # +X: (1, -t, -s)
    assert torch.allclose(d[2, 0, 0], _unit(-0.5, 1, -0.5))   # +Y: (s, 1, t)
    assert torch.allclose(d[4, 0, 0], _unit(-0.5, 0.5, 1))    # +Z: (s, -t, 1)
    assert torch.allclose(d[5, 0, 1], _unit(-0.5, 0.5, -1))   # -Z: (-s, -t, -1), column 1: s = +0.5
    face, uv = dirs_to_cube_uv(cube_directions(4))
    centres = (torch.arange(4) + 0.5) / 4
    assert torch.equal(face, torch.arange(6)[:, None, None].expand(6, 4, 4))
    assert torch.allclose(uv[..., 0], centres.expand(6, 4, 4), atol=1e-6)
    assert torch.allclose(uv[..., 1], centres[:, None].expand(6, 4, 4), atol=1e-6)
    assert float(texel_solid_angles(8).sum()) == pytest.approx(4 * math.pi, rel=1e-6)


def test_cubemap_round_trip_matches_equirect():
    # An equirect map that stores its own directions: after conversion and lookup we must get
    # the direction back (this pins the conventions of both maps against each other).
    img = equirect_directions(64) + 2.0
    cube = equirect_to_cubemap(img, 32)
    dirs = _random_dirs(3000, seed=1)
    assert torch.allclose(cubemap_lookup(cube, dirs) - 2.0, dirs, atol=0.02)
    studio = procedural_env("studio", 64)
    got = cubemap_lookup(equirect_to_cubemap(studio, 32), dirs)
    rel = ((got - sample_equirect(studio, dirs)).abs() / (studio.mean() + got)).mean(-1)
    assert float(rel.median()) < 0.01 and float(rel.quantile(0.99)) < 0.1  # both resample light edges


def test_cubemap_lookup_is_continuous_across_face_seams():
    cube = cube_directions(8) + 2.0
    # Walk across the +X / +Z seam and across a cube corner in fine steps.
    for end in (_unit(-0.3, 0.2, 1), _unit(-1, 1.1, 1)):
        t = torch.linspace(0, 1, 400)[:, None]
        path = F.normalize(_unit(1, -0.1, 0.2) * (1 - t) + end * t, dim=-1)
        vals = cubemap_lookup(cube, path) - 2.0
        assert float((vals - path).abs().max()) < 0.03
        assert float((vals[1:] - vals[:-1]).norm(dim=-1).max()) < 0.02


def test_mip_atlas_trilinear_between_levels():
    levels = [torch.full((6, 8, 8, 1), 1.0), torch.full((6, 4, 4, 1), 3.0)]
    atlas = CubeMipAtlas(levels)
    dirs = _random_dirs(50)
    assert torch.allclose(atlas.lookup(dirs, 0.25), torch.full((50, 1), 1.5))
    assert torch.allclose(atlas.lookup(dirs, torch.full((50,), 7.0)), torch.full((50, 1), 3.0))


def test_procedural_environments():
    assert set(ENVIRONMENTS) >= {"studio", "sky"}
    for name in ENVIRONMENTS:
        img = procedural_env(name, 16)
        assert img.shape == (16, 32, 3)
        assert bool(torch.isfinite(img).all()) and float(img.min()) > 0
    with pytest.raises(ConfigError, match="unknown environment"):
        procedural_env("moon", 8)


# =============================================================================== light
def test_mip_level_mapping():
    assert level_roughness(4) == pytest.approx([0.08, 0.29, 0.5, 1.0])
    r = torch.tensor([0.0, 0.08, 0.29, 0.5, 0.75, 1.0])
    assert roughness_to_level(r, 4).tolist() == pytest.approx([0.0, 0.0, 1.0, 2.0, 2.5, 3.0])


def test_white_environment_is_energy_preserving(white_light: EnvironmentLight):
    light = white_light
    assert [m.shape[1] for m in light.specular_mips] == [32, 16, 8]
    for mip in light.specular_mips:
        assert torch.allclose(mip, torch.ones_like(mip), atol=1e-4)
    dirs = _random_dirs(500)
    assert torch.allclose(light.diffuse(dirs), torch.full((500, 3), 2.0), atol=1e-3)
    for r in (0.0, 0.1, 0.3, 0.5, 0.77, 1.0):
        assert torch.allclose(light.specular(dirs, torch.full((500, 1), r)), torch.full((500, 3), 2.0), atol=1e-3)


def test_importance_sampling_prefilter_is_normalized_and_agrees_with_brute_force():
    white = _box_chain(torch.ones(6, 16, 16, 3), 1)
    out = convolve_importance(CubeMipAtlas(white), 8, 0.3, samples=64)
    assert torch.allclose(out, torch.ones_like(out), atol=1e-5)
    base = EnvironmentLight.procedural("studio", base_res=32, min_res=8).base
    box = _box_chain(base, 1)
    exact = convolve_brute_force(base, 16, ggx_weight(0.3))
    sampled = convolve_importance(CubeMipAtlas(box), 16, 0.3, samples=256)
    assert float((sampled - exact).abs().mean() / exact.mean()) < 0.05


def test_sky_sun_side_is_brighter(sky_light: EnvironmentLight):
    sun = _unit(*SKY_SUN_DIRECTION)
    facing, away = sky_light.diffuse(torch.stack([sun, -sun]))
    assert float(facing.mean()) > 2 * float(away.mean())
    # A sharp reflection straight at the sun is much brighter than a rough one.
    sharp = sky_light.specular(sun[None], torch.tensor([[0.1]]))
    rough = sky_light.specular(sun[None], torch.tensor([[0.9]]))
    assert float(sharp.mean()) > 3 * float(rough.mean())
    up_down = sky_light.diffuse(torch.stack([_unit(0, 1, 0), _unit(0, -1, 0)]))
    assert float(up_down[0].mean()) > float(up_down[1].mean())


def test_light_to_dtype_and_roughness_gradient(sky_light: EnvironmentLight):
    light = sky_light.to(dtype=torch.float64)
    assert light.diffuse_cube.dtype == torch.float64 and light.intensity == sky_light.intensity
    r = torch.tensor([[0.2], [0.7]], dtype=torch.float64, requires_grad=True)
    light.specular(torch.stack([_unit(0.3, 0.5, 0.2), _unit(-1, 0.1, 0)]).double(), r).sum().backward()
    assert bool((r.grad.abs() > 0).all())


# =============================================================================== normals
def test_perturb_normal_tangent_frame():
    n = _unit(0, 1, 0).expand(3, 3)
    t = torch.tensor([[1.0, 0.3, 0.0, 1.0]]).expand(3, 4)  # not orthogonal to N: gets projected
    flat = perturb_normal(n, t, torch.tensor([0.0, 0.0, 1.0]).expand(3, 3))
    assert torch.allclose(flat, n, atol=1e-6)
    along_t = perturb_normal(n, t, torch.tensor([1.0, 0.0, 0.0]).expand(3, 3))
    assert torch.allclose(along_t, _unit(1, 0, 0).expand(3, 3), atol=1e-6)
    tilted = perturb_normal(n, t, torch.tensor([0.4, 0.0, 0.9]).expand(3, 3))
    assert float(tilted[0, 0]) > 0.3 and float(tilted[0, 1]) > 0.8
    # B = w * cross(N, T): cross(+Y, +X) = -Z; handedness -1 flips it.
    b_pos = perturb_normal(n[:1], t[:1], torch.tensor([[0.0, 1.0, 0.0]]))
    b_neg = perturb_normal(n[:1], torch.tensor([[1.0, 0.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]]))
    assert torch.allclose(b_pos, _unit(0, 0, -1)[None], atol=1e-6)
    assert torch.allclose(b_neg, -b_pos, atol=1e-6)


# =============================================================================== shading
def test_srgb_transfer_functions():
    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(srgb_to_linear(linear_to_srgb(x)), x, atol=1e-12)
    assert float(linear_to_srgb(torch.tensor(0.5))) == pytest.approx(0.735357, abs=1e-5)
    assert float(srgb_to_linear(torch.tensor(0.5))) == pytest.approx(0.214041, abs=1e-5)
    z = torch.zeros(2, requires_grad=True)
    (linear_to_srgb(z).sum() + srgb_to_linear(z).sum()).backward()
    assert torch.allclose(z.grad, torch.full((2,), 12.92 + 1 / 12.92))


def test_mirror_metal_in_white_environment(white_light: EnvironmentLight, small_lut: torch.Tensor):
    light = white_light.to()
    light.intensity = 1.0
    n = _unit(0.2, 0.9, 0.1).expand(4, 3)
    v = torch.stack([n[0], _unit(0.5, 0.8, 0), _unit(-0.6, 0.5, 0.3), _unit(0.9, 0.3, -0.2)])
    albedo = torch.tensor([[0.9, 0.6, 0.2], [1.0, 1.0, 1.0], [0.3, 0.5, 0.7], [0.8, 0.1, 0.4]])
    out = shade_pbr(light, n, v, albedo, torch.zeros(4, 1), torch.ones(4, 1), small_lut)
    fg = sample_fg(small_lut, (n * v).sum(-1).clamp(1e-4, 1), torch.zeros(4))
    assert torch.allclose(out, albedo * fg[:, :1] + fg[:, 1:], atol=1e-4)
    # Mirror limit: A + B ~ 1, so a smooth metal in a white room just shows its colour.
    assert torch.allclose(out[:2], albedo[:2], atol=0.03)
    # White rough dielectric: diffuse 1 plus the dielectric specular term.
    diel = shade_pbr(light, n, v, torch.ones(4, 3), torch.ones(4, 1), torch.zeros(4, 1), small_lut)
    fg1 = sample_fg(small_lut, (n * v).sum(-1).clamp(1e-4, 1), torch.ones(4))
    assert torch.allclose(diel, (1 + 0.04 * fg1[:, :1] + fg1[:, 1:]).expand(4, 3), atol=1e-4)


def _shading_inputs(dtype: torch.dtype, n: int = 4):
    g = torch.Generator().manual_seed(3)

    def rand(*shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)).to(dtype)

    geom = F.normalize(rand(n, 3, lo=-1) + torch.tensor([0.0, 0.0, 1.5], dtype=dtype), dim=-1)
    tangent = torch.cat([F.normalize(torch.linalg.cross(geom, torch.tensor([[0.0, 1.0, 0.0]], dtype=dtype).expand(n, 3),
                                                        dim=-1), dim=-1), torch.ones(n, 1, dtype=dtype)], -1)
    view = F.normalize(geom + 0.4 * rand(n, 3, lo=-1), dim=-1)
    normal_tex = F.normalize(torch.cat([rand(n, 2, lo=-0.4, hi=0.4), torch.ones(n, 1, dtype=dtype)], -1), dim=-1)
    return geom, tangent, view, rand(n, 3), rand(n, 1, lo=0.15, hi=0.45), rand(n, 1), normal_tex


def test_gradients_reach_all_four_maps(sky_light: EnvironmentLight, small_lut: torch.Tensor):
    geom, tangent, view, albedo, rough, metal, ntex = _shading_inputs(torch.float32)
    maps = [t.clone().requires_grad_(True) for t in (albedo, rough, metal, ntex)]
    n = perturb_normal(geom, tangent, maps[3])
    out = shade_pbr(sky_light, n, view, maps[0], maps[1], maps[2], small_lut)
    linear_to_srgb(out.clamp(0, 1)).sum().backward()
    for m in maps:
        assert m.grad is not None and bool(torch.isfinite(m.grad).all()) and float(m.grad.abs().sum()) > 0


def test_shading_finite_difference_gradients(sky_light: EnvironmentLight, small_lut: torch.Tensor):
    light = sky_light.to(dtype=torch.float64)
    lut = small_lut.double()
    geom, tangent, view, albedo, rough, metal, ntex = _shading_inputs(torch.float64)

    def render(a: torch.Tensor, r: torch.Tensor, m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return shade_pbr(light, perturb_normal(geom, tangent, t), view, a, r, m, lut)

    inputs = tuple(x.clone().requires_grad_(True) for x in (albedo, rough, metal, ntex))
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)
