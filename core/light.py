"""Split-sum environment light: prefiltered specular mip chain and diffuse irradiance cubemaps.

Prefiltering is a brute-force weighted sum over the texels of a small source cubemap (GGX lobe
weights for specular, cosine weights for diffuse). It runs once per light at start-up, chunked
to bound memory. Level i <= L-2 is filtered for roughness 0.08 + i/(L-2)*(0.5-0.08) and the last
level for roughness 1.0 (nvdiffrec's layout); level 0 keeps the unfiltered base map, the mirror
limit of roughness 0.08.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from core.envmap import cube_directions, cubemap_lookup, equirect_to_cubemap, procedural_env

MIN_ROUGHNESS = 0.08
MAX_SOURCE_RES = 32  # prefilter source resolution: 6*32^2 texels, enough for roughness >= 0.2


def texel_solid_angles(res: int) -> torch.Tensor:
    """[6,R,R] solid angle of each cube texel (sums to 4 pi)."""
    c = (torch.arange(res) + 0.5) / res * 2 - 1
    t, s = torch.meshgrid(c, c, indexing="ij")
    dA = (2.0 / res) ** 2
    return (dA / (1 + s**2 + t**2) ** 1.5).expand(6, res, res)


def _convolve(src: torch.Tensor, out_res: int, weight_fn, chunk: int = 2048) -> torch.Tensor:
    """out[d] = sum_l w(d, l) L(l) / sum_l w(d, l) over all source texels l."""
    res = src.shape[1]
    l_dirs = cube_directions(res).reshape(-1, 3).to(src)
    l_rad = src.reshape(-1, src.shape[-1])
    d_omega = texel_solid_angles(res).reshape(-1).to(src)
    out_dirs = cube_directions(out_res).reshape(-1, 3).to(src)
    out = []
    for o in out_dirs.split(chunk):
        w = weight_fn(o @ l_dirs.T) * d_omega
        out.append((w @ l_rad) / w.sum(-1, keepdim=True).clamp_min(1e-12))
    return torch.cat(out).reshape(6, out_res, out_res, -1)


def _ggx_weight(roughness: float):
    a2 = max(roughness, MIN_ROUGHNESS) ** 4  # alpha = r^2

    def weight(cos_nl: torch.Tensor) -> torch.Tensor:
        # N = V = R assumption: H bisects N and L, so n.h = sqrt((1 + n.l) / 2).
        n_dot_h2 = ((1 + cos_nl) * 0.5).clamp(0, 1)
        d = a2 / (math.pi * ((n_dot_h2 * (a2 - 1) + 1) ** 2))
        return d * cos_nl.clamp_min(0)

    return weight


def _cosine_weight(cos_nl: torch.Tensor) -> torch.Tensor:
    return cos_nl.clamp_min(0)


class EnvironmentLight:
    """Image-based light; `intensity` scales everything it returns (CasTex trains with 2.0)."""

    def __init__(self, base: torch.Tensor, *, intensity: float = 1.0, min_res: int = 16, diffuse_res: int = 16):
        self.intensity = float(intensity)
        self.base = base
        levels = [base]
        while levels[-1].shape[1] > min_res:
            levels.append(F.avg_pool2d(levels[-1].permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1))
        n = len(levels)
        source = levels[-1] if levels[-1].shape[1] >= MAX_SOURCE_RES else levels[0]
        for lv in levels:
            if lv.shape[1] <= MAX_SOURCE_RES:
                source = lv
                break
        self.roughness_levels = [MIN_ROUGHNESS + i / max(n - 2, 1) * (0.5 - MIN_ROUGHNESS) for i in range(n - 1)] + [1.0]
        if n == 1:
            self.roughness_levels = [1.0]
        self.specular = [levels[0]] + [_convolve(source, lv.shape[1], _ggx_weight(r))
                                       for lv, r in zip(levels[1:], self.roughness_levels[1:])]
        self.diffuse_map = _convolve(source, diffuse_res, _cosine_weight)

    @classmethod
    def from_equirect(cls, img: torch.Tensor, base_res: int = 128, intensity: float = 1.0, min_res: int = 16
                      ) -> "EnvironmentLight":
        return cls(equirect_to_cubemap(img.float(), base_res), intensity=intensity, min_res=min_res)

    @classmethod
    def procedural(cls, name: str, base_res: int = 128, intensity: float = 1.0, min_res: int = 16
                   ) -> "EnvironmentLight":
        return cls.from_equirect(procedural_env(name, max(base_res, 64)), base_res, intensity, min_res)

    def to(self, device: torch.device | str) -> "EnvironmentLight":
        out = object.__new__(EnvironmentLight)
        out.intensity = self.intensity
        out.base = self.base.to(device)
        out.roughness_levels = list(self.roughness_levels)
        out.specular = [s.to(device) for s in self.specular]
        out.diffuse_map = self.diffuse_map.to(device)
        return out

    def diffuse(self, normal: torch.Tensor) -> torch.Tensor:
        """Cosine-weighted irradiance / pi (i.e. the radiance a white Lambertian surface reflects)."""
        return cubemap_lookup(self.diffuse_map, normal) * self.intensity

    def mip_level(self, roughness: torch.Tensor) -> torch.Tensor:
        n = len(self.specular)
        if n == 1:
            return torch.zeros_like(roughness)
        lo = (roughness.clamp(MIN_ROUGHNESS, 0.5) - MIN_ROUGHNESS) / (0.5 - MIN_ROUGHNESS) * (n - 2)
        hi = (roughness.clamp(0.5, 1.0) - 0.5) / 0.5 + (n - 2)
        return torch.where(roughness < 0.5, lo, hi)

    def specular_radiance(self, refl: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
        """Prefiltered radiance along reflection directions [...,3] for roughness [...,1]; trilinear
        between mip levels, so gradients reach roughness."""
        level = self.mip_level(roughness)
        out = torch.zeros(*refl.shape[:-1], 3, dtype=refl.dtype, device=refl.device)
        for i, cube in enumerate(self.specular):
            w = (1 - (level - i).abs()).clamp_min(0)
            if not bool((w > 0).any()):
                continue
            out = out + w * cubemap_lookup(cube, refl)
        return out * self.intensity
