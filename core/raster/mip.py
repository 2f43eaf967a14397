"""Texture sampling shared by the PyTorch backend: mip pyramid, bilinear and trilinear lookups.

Conventions as nvdiffrast: texel i of size N has its centre at (i + 0.5) / N; uv[..., 0] indexes
width, uv[..., 1] indexes rows; the mip level is log2 of the longer screen-space footprint axis in
texels. Lookups are gathers, so gradients reach both the texture and the uv coordinates.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FILTER_MODES = ("nearest", "linear", "linear-mipmap-nearest", "linear-mipmap-linear")


def mip_pyramid(tex: torch.Tensor, max_levels: int | None = None) -> list[torch.Tensor]:
    """Levels [B,H,W,C] down to 1x1 by 2x2 box averaging; odd sizes use area resampling to
    floor(size/2) (nvdiffrast requires even sizes at every level it builds; we relax that)."""
    levels = [tex]
    while max(levels[-1].shape[1:3]) > 1 and (max_levels is None or len(levels) <= max_levels):
        cur = levels[-1].permute(0, 3, 1, 2)
        h, w = cur.shape[2:]
        size = (max(h // 2, 1), max(w // 2, 1))
        if h % 2 == 0 and w % 2 == 0:
            nxt = F.avg_pool2d(cur, 2)
        else:
            nxt = F.interpolate(cur, size=size, mode="area")
        levels.append(nxt.permute(0, 2, 3, 1))
    return levels


def _wrap_index(i: torch.Tensor, n: int, boundary_mode: str) -> torch.Tensor:
    return torch.remainder(i, n) if boundary_mode == "wrap" else i.clamp(0, n - 1)


def bilinear(tex: torch.Tensor, uv: torch.Tensor, batch: torch.Tensor, boundary_mode: str) -> torch.Tensor:
    """Bilinear lookups at N points: tex [B,H,W,C], uv [N,2], batch [N] (texture batch index)."""
    _, h, w, c = tex.shape
    x = uv[:, 0] * w - 0.5
    y = uv[:, 1] * h - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0).unsqueeze(-1), (y - y0).unsqueeze(-1)
    x0, y0 = x0.long(), y0.long()
    xs = (_wrap_index(x0, w, boundary_mode), _wrap_index(x0 + 1, w, boundary_mode))
    ys = (_wrap_index(y0, h, boundary_mode), _wrap_index(y0 + 1, h, boundary_mode))
    flat = tex.reshape(-1, c)
    base = batch * (h * w)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat[base + yy * w + xx]

    top = at(ys[0], xs[0]) * (1 - fx) + at(ys[0], xs[1]) * fx
    bottom = at(ys[1], xs[0]) * (1 - fx) + at(ys[1], xs[1]) * fx
    return top * (1 - fy) + bottom * fy


def nearest(tex: torch.Tensor, uv: torch.Tensor, batch: torch.Tensor, boundary_mode: str) -> torch.Tensor:
    _, h, w, c = tex.shape
    x = _wrap_index(torch.floor(uv[:, 0] * w).long(), w, boundary_mode)
    y = _wrap_index(torch.floor(uv[:, 1] * h).long(), h, boundary_mode)
    return tex.reshape(-1, c)[batch * (h * w) + y * w + x]


def mip_level(uv_da: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Continuous level from uv derivatives [N,4] = (du/dX, du/dY, dv/dX, dv/dY)."""
    h, w = size
    dx = torch.stack([uv_da[:, 0] * w, uv_da[:, 2] * h], -1)
    dy = torch.stack([uv_da[:, 1] * w, uv_da[:, 3] * h], -1)
    footprint = torch.maximum((dx**2).sum(-1), (dy**2).sum(-1))
    return 0.5 * torch.log2(footprint.clamp_min(1e-20))


def sample_texture(tex: torch.Tensor, uv: torch.Tensor, uv_da: torch.Tensor | None, *, filter_mode: str,
                   boundary_mode: str = "wrap", max_mip_level: int | None = None) -> torch.Tensor:
    if filter_mode not in FILTER_MODES:
        raise ValueError(f"unknown filter_mode {filter_mode!r}; expected one of {FILTER_MODES}")
    if boundary_mode not in ("wrap", "clamp"):
        raise ValueError(f"boundary_mode {boundary_mode!r} is not supported by the torch backend (wrap, clamp)")
    bsz, h, w, _ = uv.shape
    n = bsz * h * w
    flat_uv = uv.reshape(n, 2)
    batch = torch.arange(bsz, device=uv.device).repeat_interleave(h * w) if tex.shape[0] > 1 \
        else torch.zeros(n, dtype=torch.long, device=uv.device)
    if filter_mode == "nearest":
        return nearest(tex, flat_uv, batch, boundary_mode).view(bsz, h, w, -1)
    if filter_mode == "linear" or uv_da is None:
        return bilinear(tex, flat_uv, batch, boundary_mode).view(bsz, h, w, -1)

    levels = mip_pyramid(tex, max_mip_level)
    top = len(levels) - 1
    with torch.no_grad():
        level = mip_level(uv_da.reshape(n, 4).float(), tex.shape[1:3]).clamp(0, top)
        if filter_mode == "linear-mipmap-nearest":
            level = torch.floor(level + 0.5)
        lo = torch.floor(level).long()
        frac = (level - lo).to(tex.dtype)
    out = torch.zeros(n, tex.shape[-1], dtype=tex.dtype, device=tex.device)
    for i in range(top + 1):
        w_i = torch.where(lo == i, 1 - frac, torch.zeros_like(frac)) + torch.where(lo + 1 == i, frac, torch.zeros_like(frac))
        idx = torch.nonzero(w_i > 0).squeeze(1)
        if idx.numel() == 0:
            continue
        sample = bilinear(levels[i], flat_uv[idx], batch[idx], boundary_mode)
        out = out.index_add(0, idx, sample * w_i[idx, None])
    return out.view(bsz, h, w, -1)


def max_level_for(size: int) -> int:
    return int(math.floor(math.log2(max(size, 1))))
