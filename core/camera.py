"""Cameras: the CasTex view distribution and OpenGL-style matrices.

Every view looks at the origin from a random elevation/azimuth; one distance scale is shared by
the batch; the mesh itself gets one random rotation about +Y per step so the lighting seen on
the object varies too (the environment stays fixed in world space).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ViewDistribution:
    """Ranges from the CasTex paper/code (see shared notes §1 "Rendering")."""

    elevation_deg: tuple[float, float] = (-60.0, 60.0)
    azimuth_deg: tuple[float, float] = (0.0, 360.0)
    base_distance: float = 4.4
    distance_scale: tuple[float, float] = (0.5, 1.5)
    fov_deg: float = 30.0
    near: float = 0.1
    far: float = 100.0
    rotate_mesh: bool = True


@dataclass
class Views:
    """A batch of cameras plus the per-step mesh rotation and background colours.

    mvp [B,4,4] maps rotated world positions to clip space; campos [B,3] in world space;
    mesh_rotation [3,3] is applied to the mesh before mvp; background [B,3] sRGB in [0,1].
    """

    mvp: torch.Tensor
    campos: torch.Tensor
    mesh_rotation: torch.Tensor
    background: torch.Tensor
    elevation_deg: torch.Tensor
    azimuth_deg: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.mvp.shape[0])

    def to(self, device: torch.device | str) -> "Views":
        return Views(*(t.to(device) for t in (self.mvp, self.campos, self.mesh_rotation,
                                               self.background, self.elevation_deg, self.azimuth_deg)))


def perspective(fov_deg: float, aspect: float = 1.0, near: float = 0.1, far: float = 100.0) -> torch.Tensor:
    """OpenGL projection matrix (camera looks down -Z, clip z in [-w, w])."""
    f = 1.0 / math.tan(math.radians(fov_deg) / 2.0)
    return torch.tensor(
        [
            [f / aspect, 0.0, 0.0, 0.0],
            [0.0, f, 0.0, 0.0],
            [0.0, 0.0, (far + near) / (near - far), 2.0 * far * near / (near - far)],
            [0.0, 0.0, -1.0, 0.0],
        ]
    )


def look_at(eye: torch.Tensor, target: torch.Tensor | None = None, up: torch.Tensor | None = None) -> torch.Tensor:
    """World-to-camera matrices [B,4,4] for eyes [B,3] looking at target (default origin), +Y up."""
    target = torch.zeros_like(eye) if target is None else target.expand_as(eye)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye) if up is None else up.expand_as(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.linalg.cross(forward, up, dim=-1)
    # Straight up/down views: pick another reference so the basis stays defined.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    right = torch.where(degenerate, torch.linalg.cross(forward, alt, dim=-1), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    true_up = torch.linalg.cross(right, forward, dim=-1)
    m = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    m[:, 0, :3], m[:, 1, :3], m[:, 2, :3] = right, true_up, -forward
    m[:, 0, 3] = -(right * eye).sum(-1)
    m[:, 1, 3] = -(true_up * eye).sum(-1)
    m[:, 2, 3] = (forward * eye).sum(-1)
    m[:, 3, 3] = 1.0
    return m


def rotation_y(angle_rad: torch.Tensor | float) -> torch.Tensor:
    a = torch.as_tensor(angle_rad, dtype=torch.float32)
    c, s = torch.cos(a), torch.sin(a)
    return torch.stack([
        torch.stack([c, torch.zeros_like(a), s]),
        torch.tensor([0.0, 1.0, 0.0]),
        torch.stack([-s, torch.zeros_like(a), c]),
    ])


def orbit_positions(elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """Camera positions on a sphere; azimuth 0 looks from +Z (the glTF 'front')."""
    el, az = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return torch.stack([distance * torch.cos(el) * torch.sin(az), distance * torch.sin(el),
                        distance * torch.cos(el) * torch.cos(az)], dim=-1)


def make_views(
    elevation_deg: torch.Tensor,
    azimuth_deg: torch.Tensor,
    distance: torch.Tensor | float,
    *,
    fov_deg: float = 30.0,
    mesh_rotation: torch.Tensor | None = None,
    background: torch.Tensor | None = None,
    near: float = 0.1,
    far: float = 100.0,
) -> Views:
    """Deterministic views (previews, tests)."""
    b = elevation_deg.shape[0]
    distance = torch.as_tensor(distance, dtype=torch.float32).expand(b)
    eye = orbit_positions(elevation_deg.float(), azimuth_deg.float(), distance)
    mvp = perspective(fov_deg, 1.0, near, far) @ look_at(eye)
    return Views(
        mvp=mvp,
        campos=eye,
        mesh_rotation=torch.eye(3) if mesh_rotation is None else mesh_rotation,
        background=torch.ones(b, 3) if background is None else background,
        elevation_deg=elevation_deg.float(),
        azimuth_deg=azimuth_deg.float(),
    )


def sample_views(n: int, generator: torch.Generator, dist: ViewDistribution = ViewDistribution()) -> Views:
    """n random views from the CasTex distribution; all randomness comes from `generator` (CPU)."""
    u = torch.rand(n, 2, generator=generator)
    elev = dist.elevation_deg[0] + (dist.elevation_deg[1] - dist.elevation_deg[0]) * u[:, 0]
    azim = dist.azimuth_deg[0] + (dist.azimuth_deg[1] - dist.azimuth_deg[0]) * u[:, 1]
    lo, hi = dist.distance_scale
    scale = lo + (hi - lo) * torch.rand(1, generator=generator)
    rot_angle = torch.rand(1, generator=generator)[0] * 2 * math.pi if dist.rotate_mesh else 0.0
    background = torch.rand(n, 3, generator=generator)
    return make_views(elev, azim, dist.base_distance * scale, fov_deg=dist.fov_deg,
                      mesh_rotation=rotation_y(rot_angle), background=background,
                      near=dist.near, far=dist.far)


def preview_views(n: int = 4, *, elevation_deg: float = 20.0, distance: float = 4.4, fov_deg: float = 30.0) -> Views:
    """Evenly spaced turntable views on a neutral grey background, for preview.png."""
    azim = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    elev = torch.full((n,), elevation_deg)
    return make_views(elev, azim, distance, fov_deg=fov_deg, background=torch.full((n, 3), 0.8))
