"""Render a textured mesh under environment light for a batch of views.

This is the differentiable function g(theta, c) of the paper: texture maps in, sRGB images out.
It only composes the pieces (rasterizer, texture sampling, shading); each lives in its own module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.camera import Views
from core.light import EnvironmentLight
from core.material import TextureSet
from core.mesh import Mesh
from core.raster import Rasterizer
from core.shading import linear_to_srgb, perturb_normal, shade_pbr


@dataclass
class Scene:
    """What stays fixed while one asset is optimized: geometry, light, rasterizer, FG table."""

    mesh: Mesh
    light: EnvironmentLight
    rasterizer: Rasterizer
    fg_lut: torch.Tensor

    def __post_init__(self) -> None:
        # int32 faces once, not per step (nvdiffrast wants int32 contiguous).
        self.faces = self.mesh.faces.to(torch.int32).contiguous()


def pack_textures(textures: TextureSet) -> torch.Tensor:
    """All maps in one [1,H,W,8] tensor so one mip-mapped lookup serves the four maps."""
    return torch.cat(textures.tensors(), dim=-1).unsqueeze(0)


def render(scene: Scene, textures: TextureSet, views: Views, resolution: int, *, antialias: bool = True) -> torch.Tensor:
    """Images [B,H,W,3], sRGB in [0,1], top row first, composited over each view's background."""
    mesh = scene.mesh
    rot = views.mesh_rotation.to(mesh.positions)
    pos = mesh.positions @ rot.T
    nrm = mesh.normals @ rot.T
    tng = torch.cat([mesh.tangents[:, :3] @ rot.T, mesh.tangents[:, 3:]], dim=-1)

    pos_h = torch.nn.functional.pad(pos, (0, 1), value=1.0)
    clip = torch.einsum("vj,bij->bvi", pos_h, views.mvp.to(pos))
    rast, rast_db = scene.rasterizer.rasterize(clip, scene.faces, (resolution, resolution))

    # One interpolate call for every smooth attribute: uv (with screen derivatives), world pos,
    # normal, tangent. uv first so diff_attrs=[0, 1].
    attrs = torch.cat([mesh.uvs, pos, nrm, tng], dim=-1).unsqueeze(0)
    gb, gb_da = scene.rasterizer.interpolate(attrs, rast, scene.faces, rast_db=rast_db, diff_attrs=[0, 1])
    uv, gb_pos, gb_nrm, gb_tng = gb[..., 0:2], gb[..., 2:5], gb[..., 5:8], gb[..., 8:12]

    maps = scene.rasterizer.texture(pack_textures(textures), uv.contiguous(), gb_da.contiguous(),
                                    filter_mode="linear-mipmap-linear")
    albedo, rough, metal, normal_tex = maps[..., 0:3], maps[..., 3:4], maps[..., 4:5], maps[..., 5:8]

    view_dir = torch.nn.functional.normalize(views.campos.to(pos)[:, None, None, :] - gb_pos, dim=-1)
    geom_n = torch.nn.functional.normalize(gb_nrm, dim=-1, eps=1e-8)
    # Two-sided shading: open meshes show their inside; face the normal toward the camera.
    facing = torch.where((geom_n * view_dir).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    geom_n = geom_n * facing
    n = perturb_normal(geom_n, gb_tng, normal_tex)
    radiance = shade_pbr(scene.light, n, view_dir, albedo, rough, metal, scene.fg_lut)

    mask = (rast[..., 3:4] > 0).to(radiance.dtype)
    color = linear_to_srgb(radiance.clamp(0.0, 1.0))
    background = views.background.to(color)[:, None, None, :]
    image = color * mask + background * (1.0 - mask)
    if antialias:
        image = scene.rasterizer.antialias(image.contiguous(), rast, clip, scene.faces)
    return torch.flip(image, dims=[1])


def coverage_mask(scene: Scene, views: Views, resolution: int) -> torch.Tensor:
    """[B,H,W] bool, top row first: which pixels see the mesh (for tests and metrics)."""
    rot = views.mesh_rotation.to(scene.mesh.positions)
    pos_h = torch.nn.functional.pad(scene.mesh.positions @ rot.T, (0, 1), value=1.0)
    clip = torch.einsum("vj,bij->bvi", pos_h, views.mvp.to(pos_h))
    rast, _ = scene.rasterizer.rasterize(clip, scene.faces, (resolution, resolution))
    return torch.flip(rast[..., 3] > 0, dims=[1])
