"""The split-sum FG table (Karis 2013), computed by our own code at start-up.

Rows are roughness, columns n.v, both at texel centres. GGX is importance-sampled with Hammersley
points and the height-correlated Smith G, which reproduces nvdiffrec's table (Schlick-G with
k = a/2 does not). Cached in-process and optionally on disk, because 256x256x1024 samples cost a
second or two on CPU.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch

_VERSION = 1


def hammersley(n: int) -> torch.Tensor:
    """[n,2] low-discrepancy points: (i/n, radical inverse base 2 of i)."""
    i = torch.arange(n, dtype=torch.int64)
    bits = torch.zeros(n, dtype=torch.float64)
    scale, k = 0.5, i.clone()
    while bool((k > 0).any()):
        bits += (k & 1).double() * scale
        k >>= 1
        scale *= 0.5
    return torch.stack([i.double() / n, bits], dim=-1)


def _fg_rows(roughness: torch.Tensor, n_dot_v: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """[R, N, 2] table rows for the given roughness values, float64."""
    a = (roughness**2)[:, None, None]  # GGX alpha
    a2 = a * a
    phi = 2 * math.pi * xi[None, None, :, 0]
    cos_t = torch.sqrt((1 - xi[None, None, :, 1]) / (1 + (a2 - 1) * xi[None, None, :, 1]))
    sin_t = torch.sqrt((1 - cos_t**2).clamp_min(0))
    hx, hz = sin_t * torch.cos(phi), cos_t
    nv = n_dot_v[None, :, None]
    vx = torch.sqrt((1 - nv**2).clamp_min(0))
    v_dot_h = (vx * hx + nv * hz).clamp_min(0)
    l_z = 2 * v_dot_h * hz - nv
    n_dot_l, n_dot_h = l_z.clamp_min(0), hz
    # Height-correlated Smith visibility V = G / (4 nl nv).
    vis = 0.5 / (n_dot_l * torch.sqrt(nv**2 * (1 - a2) + a2) + nv * torch.sqrt(n_dot_l**2 * (1 - a2) + a2))
    g = 4 * n_dot_l * nv * vis
    g_vis = torch.where(n_dot_l > 0, g * v_dot_h / (n_dot_h * nv), torch.zeros_like(g))
    fc = (1 - v_dot_h) ** 5
    return torch.stack([((1 - fc) * g_vis).mean(-1), (fc * g_vis).mean(-1)], dim=-1)


@functools.lru_cache(maxsize=4)
def _fg_cached(size: int, samples: int, cache_dir: str | None) -> torch.Tensor:
    path = Path(cache_dir) / f"fg_v{_VERSION}_{size}_{samples}.npy" if cache_dir else None
    if path is not None and path.exists():
        return torch.from_numpy(np.load(path))
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    xi = hammersley(samples)
    rows = [_fg_rows(centres[i:i + 8], centres, xi) for i in range(0, size, 8)]
    lut = torch.cat(rows).float()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(lut)}.npy")
        np.save(tmp, lut.numpy())
        tmp.replace(path)
    return lut


def fg_lut(size: int = 256, samples: int = 1024, cache_dir: str | Path | None = None) -> torch.Tensor:
    """[size, size, 2] table: [..., 0] = scale A, [..., 1] = bias B of F0 (rows roughness, cols n.v)."""
    return _fg_cached(int(size), int(samples), str(cache_dir) if cache_dir is not None else None).clone()


def sample_fg(lut: torch.Tensor, n_dot_v: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup (clamped) of the table at [...] n.v and [...] roughness -> [..., 2]."""
    size_r, size_v = lut.shape[0], lut.shape[1]
    x = (n_dot_v.clamp(0, 1) * size_v - 0.5).clamp(0, size_v - 1)
    y = (roughness.clamp(0, 1) * size_r - 0.5).clamp(0, size_r - 1)
    x0, y0 = x.floor().long().clamp(max=size_v - 2), y.floor().long().clamp(max=size_r - 2)
    fx, fy = (x - x0).unsqueeze(-1), (y - y0).unsqueeze(-1)
    t = lut.to(n_dot_v.device)
    top = t[y0, x0] * (1 - fx) + t[y0, x0 + 1] * fx
    bottom = t[y0 + 1, x0] * (1 - fx) + t[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy
