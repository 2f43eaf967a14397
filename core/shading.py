"""Metal/rough PBR shading with tangent-space normal maps under split-sum environment light.

Every function is differentiable w.r.t. the material maps (albedo, roughness, metalness, normal
map): that is how the texture is optimized.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from core.brdf_lut import sample_fg

_SRGB_LINEAR_CUT = 0.0031308
_SRGB_ENCODED_CUT = 0.04045


class SplitSumLight(Protocol):
    """What shading needs from a light (core.light.EnvironmentLight implements it)."""

    def diffuse(self, normal: torch.Tensor) -> torch.Tensor: ...

    def specular(self, refl_dir: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor: ...


# =============================================================================== colour
def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Exact piecewise sRGB encoding. The power branch only ever sees inputs >= the cut, so its
    gradient stays finite at 0 (x^(1/2.4) has an infinite slope there)."""
    power = 1.055 * x.clamp_min(_SRGB_LINEAR_CUT) ** (1 / 2.4) - 0.055
    return torch.where(x <= _SRGB_LINEAR_CUT, 12.92 * x, power)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """Exact piecewise sRGB decoding (inverse of `linear_to_srgb`), safe at 0 for the same reason."""
    power = ((x.clamp_min(_SRGB_ENCODED_CUT) + 0.055) / 1.055) ** 2.4
    return torch.where(x <= _SRGB_ENCODED_CUT, x / 12.92, power)


# =============================================================================== geometry
def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1, keepdim=True)


def reflect(view_dir: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """Mirror direction of ``view_dir`` (surface -> camera) about ``normal``: reflect(-v, n) =
    2 (n.v) n - v. Uses the unclamped n.v, so it stays continuous for back-facing normals."""
    return 2 * _dot(normal, view_dir) * normal - view_dir


def perturb_normal(geom_normal: torch.Tensor, tangent: torch.Tensor, normal_tex: torch.Tensor) -> torch.Tensor:
    """World-space shading normal [..., 3] from a tangent-space normal map (OpenGL/glTF, +Y up).

    ``T = normalize(t - N (N.t))``, ``B = w * cross(N, T)`` with ``w = sign(tangent.w)`` and
    ``n = normalize(x T + y B + z N)`` (docs/architecture.md). N is normalized here because
    interpolated vertex normals are not unit; pixels without a tangent (zero vector) fall back to
    ``z N``."""
    n = F.normalize(geom_normal, dim=-1, eps=1e-8)
    t_raw = tangent[..., :3]
    t = F.normalize(t_raw - n * _dot(n, t_raw), dim=-1, eps=1e-8)
    handed = torch.where(tangent[..., 3:4] < 0, -1.0, 1.0).to(n.dtype)
    b = handed * torch.linalg.cross(n, t, dim=-1)
    x, y, z = normal_tex[..., 0:1], normal_tex[..., 1:2], normal_tex[..., 2:3]
    return F.normalize(x * t + y * b + z * n, dim=-1, eps=1e-8)


# =============================================================================== shading
def shade_pbr(light: SplitSumLight, normal: torch.Tensor, view_dir: torch.Tensor, albedo: torch.Tensor,
              roughness: torch.Tensor, metalness: torch.Tensor, fg_lut: torch.Tensor) -> torch.Tensor:
    """Linear HDR radiance [..., 3] leaving the surface towards the camera (split-sum, nvdiffrec):

        diff_col = albedo (1 - m),  F0 = 0.04 (1 - m) + albedo m
        color = Irr(n) diff_col + Spec(R, r) (F0 FG.x + FG.y),  R = reflect(-v, n)

    with n.v clamped to [1e-4, 1] for the FG lookup. ``normal``, ``view_dir`` (surface -> camera)
    unit [..., 3]; albedo [..., 3]; roughness, metalness [..., 1]; fg_lut from core.brdf_lut."""
    n_dot_v = _dot(normal, view_dir).clamp(1e-4, 1.0)
    diff_col = albedo * (1 - metalness)
    f0 = 0.04 * (1 - metalness) + albedo * metalness
    fg = sample_fg(fg_lut, n_dot_v.squeeze(-1), roughness.squeeze(-1))
    refl = F.normalize(reflect(view_dir, normal), dim=-1, eps=1e-8)
    specular = light.specular(refl, roughness) * (f0 * fg[..., 0:1] + fg[..., 1:2])
    return light.diffuse(normal) * diff_col + specular
