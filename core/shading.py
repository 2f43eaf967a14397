"""Metal/rough PBR shading with tangent-space normal maps under split-sum environment light."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.brdf_lut import sample_fg


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Exact sRGB transfer curve; safe at 0 (no infinite gradient)."""
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def perturb_normal(geom_normal: torch.Tensor, tangent: torch.Tensor, normal_tex: torch.Tensor) -> torch.Tensor:
    """Tangent-space normal (OpenGL/glTF, +Y up) -> world normal: normalize(x*T + y*B + z*N) with
    T orthogonalized against N and B = w * cross(N, T) (docs/architecture.md)."""
    n = geom_normal
    t = F.normalize(tangent[..., :3] - n * (n * tangent[..., :3]).sum(-1, keepdim=True), dim=-1, eps=1e-8)
    handed = torch.where(tangent[..., 3:4] < 0, -1.0, 1.0)
    b = handed * torch.linalg.cross(n, t, dim=-1)
    return F.normalize(normal_tex[..., 0:1] * t + normal_tex[..., 1:2] * b + normal_tex[..., 2:3] * n, dim=-1, eps=1e-8)


def shade_pbr(light, normal: torch.Tensor, view_dir: torch.Tensor, albedo: torch.Tensor, roughness: torch.Tensor,
              metalness: torch.Tensor, fg_lut: torch.Tensor) -> torch.Tensor:
    """Linear radiance: Irr(n) * albedo(1-m) + Spec(R, r) * (F0 * A + B), F0 = 0.04(1-m) + albedo m."""
    n_dot_v = (normal * view_dir).sum(-1, keepdim=True).clamp(1e-4, 1.0)
    refl = 2 * n_dot_v * normal - view_dir
    diff_col = albedo * (1 - metalness)
    f0 = 0.04 * (1 - metalness) + albedo * metalness
    fg = sample_fg(fg_lut, n_dot_v.squeeze(-1), roughness.squeeze(-1))
    spec = light.specular_radiance(refl, roughness) * (f0 * fg[..., 0:1] + fg[..., 1:2])
    return light.diffuse(normal) * diff_col + spec
