"""The split-sum FG table (Karis 2013), computed by our own code at start-up.

Shipping a binary table would tie us to someone else's data; computing it takes about a second
on CPU, so we compute it, keep it in an in-process LRU cache and optionally on disk.

Layout: ``lut[i, j] = (A, B)`` with row ``i`` = roughness ``(i + 0.5) / size`` and column ``j`` =
n.v ``(j + 0.5) / size`` (texel centres). The specular split-sum factor is ``F0 * A + B``.

Integration: GGX half vectors are importance-sampled with Hammersley points (alpha = r^2); with
pdf(l) = D (n.h) / (4 v.h) the estimator of ``int f_spec/F * n.l dl`` reduces to the mean of
``Gv = G (v.h) / ((n.h) (n.v))``. G is the *height-correlated* Smith term, which reproduces
nvdiffrec's table (Schlick-G with k = a/2 does not).
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import torch

# Bump when the integration changes so stale disk caches are ignored.
_VERSION = 2
_ROWS_PER_CHUNK = 16  # 16 x 256 x 1024 float32 temporaries (16 MB); smaller chunks thrash the thread pool


def hammersley(n: int) -> torch.Tensor:
    """[n, 2] float64 low-discrepancy points ``(i / n, radical_inverse_2(i))``."""
    i = torch.arange(n, dtype=torch.int64)
    x = i.clone()
    # Reverse the 32 low bits (swap halves, bytes, nibbles, pairs, bits).
    x = ((x & 0x0000FFFF) << 16) | ((x >> 16) & 0x0000FFFF)
    x = ((x & 0x00FF00FF) << 8) | ((x >> 8) & 0x00FF00FF)
    x = ((x & 0x0F0F0F0F) << 4) | ((x >> 4) & 0x0F0F0F0F)
    x = ((x & 0x33333333) << 2) | ((x >> 2) & 0x33333333)
    x = ((x & 0x55555555) << 1) | ((x >> 1) & 0x55555555)
    return torch.stack([i.double() / n, x.double() / 2.0**32], dim=-1)


def _fg_block(roughness: torch.Tensor, n_dot_v: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """[R, N, 2] (A, B) for roughness [R] x n.v [N], averaged over the S Hammersley points xi [S, 2].

    Frame: n = +z, v = (sqrt(1 - nv^2), 0, nv); h is sampled from the GGX NDF around n, so only
    its x and z components matter. Written with in-place ops on [R, N, S] blocks because this is
    the whole start-up cost (~25 passes over 67M elements for the default table)."""
    alpha = roughness * roughness
    a2 = (alpha * alpha)[:, None]  # [R, 1]
    u1, u2 = xi[:, 0], xi[:, 1]
    cos_h = torch.sqrt((1 - u2) / (1 + (a2 - 1) * u2))  # [R, S]  n.h
    h_x = torch.sqrt((1 - cos_h * cos_h).clamp_min(0)) * torch.cos(2 * math.pi * u1)
    v_x = torch.sqrt((1 - n_dot_v * n_dot_v).clamp_min(0))  # [N]
    rows, n = cos_h.shape[0], n_dot_v.shape[0]
    v_mat = torch.stack([v_x, n_dot_v], -1).expand(rows, n, 2)
    v_dot_h = torch.bmm(v_mat, torch.stack([h_x, cos_h], 1)).clamp_min_(0)  # [R, N, S]
    nh = cos_h[:, None, :]
    nv = n_dot_v[None, :, None]
    a2 = a2[:, :, None]
    n_dot_l = (v_dot_h * nh).mul_(2).sub_(nv)  # z of l = reflect(-v, h)
    # Height-correlated Smith: G = 2 nl nv / (nl sqrt(nv^2 (1-a2) + a2) + nv sqrt(nl^2 (1-a2) + a2)),
    # so Gv = G (v.h) / ((n.h)(n.v)) = 2 nl (v.h) / ((n.h) * denominator).
    sq_v = torch.sqrt(nv * nv * (1 - a2) + a2)  # [R, N, 1]
    sq_l = (n_dot_l * n_dot_l).mul_(1 - a2).add_(a2).sqrt_()
    denom = (n_dot_l * sq_v).addcmul_(sq_l, nv.expand_as(sq_l)).mul_(nh).clamp_min_(1e-30)
    g_vis = n_dot_l.clamp_min_(0).mul_(v_dot_h).mul_(2).div_(denom)  # 0 where l is below the horizon
    t = v_dot_h.neg_().add_(1)
    fresnel = (t * t).square_().mul_(t)  # (1 - v.h)^5
    total = g_vis.sum(-1)
    bias = fresnel.mul_(g_vis).sum(-1)
    return torch.stack([total - bias, bias], dim=-1) / xi.shape[0]


def compute_fg_lut(size: int, samples: int) -> torch.Tensor:
    """Uncached [size, size, 2] float32 table (vectorized, chunked over roughness rows)."""
    # float32 is accurate to ~1e-4 here (float64 costs 3x the time) and the table is float32 anyway.
    centres = ((torch.arange(size, dtype=torch.float64) + 0.5) / size).float()
    xi = hammersley(samples).float()
    with torch.no_grad():
        rows = [_fg_block(centres[i:i + _ROWS_PER_CHUNK], centres, xi) for i in range(0, size, _ROWS_PER_CHUNK)]
    return torch.cat(rows)


def _cache_path(cache_dir: str, size: int, samples: int) -> Path:
    return Path(cache_dir) / f"fg_lut_v{_VERSION}_{size}x{size}_{samples}spp.npy"


def _write_atomic(path: Path, lut: torch.Tensor) -> None:
    """Write via a unique temp file + rename so concurrent workers never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.{id(lut)}.tmp.npy")
    np.save(tmp, lut.numpy())
    os.replace(tmp, path)


@functools.lru_cache(maxsize=8)
def _fg_cached(size: int, samples: int, cache_dir: str | None) -> torch.Tensor:
    path = _cache_path(cache_dir, size, samples) if cache_dir else None
    if path is not None and path.is_file():
        try:
            arr = np.load(path)
            if arr.shape == (size, size, 2):
                return torch.from_numpy(arr.astype(np.float32))
        except (OSError, ValueError):
            pass  # corrupt cache entry: recompute and overwrite
    lut = compute_fg_lut(size, samples)
    if path is not None:
        try:
            _write_atomic(path, lut)
        except OSError:
            pass  # a read-only cache dir must not break start-up
    return lut


def fg_lut(size: int = 256, samples: int = 1024, cache_dir: str | Path | None = None) -> torch.Tensor:
    """[size, size, 2] float32 CPU table: ``[..., 0]`` = scale A, ``[..., 1]`` = bias B of F0.

    Rows = roughness, columns = n.v, both at texel centres. Returns a fresh copy each call (the
    cached one must not be mutated by callers)."""
    if size < 2 or samples < 1:
        raise ValueError(f"fg_lut needs size >= 2 and samples >= 1, got {size}, {samples}")
    key_dir = str(cache_dir) if cache_dir is not None else None
    return _fg_cached(int(size), int(samples), key_dir).clone()


def sample_fg(lut: torch.Tensor, n_dot_v: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup (clamped at the border) of ``lut`` at n.v [...] and roughness [...] -> [..., 2].

    Differentiable w.r.t. both coordinates (inside the table), so gradients reach roughness and,
    through n.v, the normal map. The table is cast to the inputs' device/dtype."""
    n_dot_v, roughness = torch.broadcast_tensors(n_dot_v, roughness)
    t = lut.to(device=n_dot_v.device, dtype=n_dot_v.dtype if n_dot_v.is_floating_point() else lut.dtype)
    rows, cols = t.shape[0], t.shape[1]
    x = (n_dot_v * cols - 0.5).clamp(0, cols - 1)
    y = (roughness * rows - 0.5).clamp(0, rows - 1)
    x0 = x.detach().floor().long().clamp(max=cols - 2)
    y0 = y.detach().floor().long().clamp(max=rows - 2)
    fx, fy = (x - x0).unsqueeze(-1), (y - y0).unsqueeze(-1)
    flat = t.reshape(rows * cols, -1)
    i00 = y0 * cols + x0

    def at(idx: torch.Tensor) -> torch.Tensor:
        return flat[idx.reshape(-1)].reshape(*idx.shape, flat.shape[-1])

    top = at(i00) * (1 - fx) + at(i00 + 1) * fx
    bottom = at(i00 + cols) * (1 - fx) + at(i00 + cols + 1) * fx
    return top * (1 - fy) + bottom * fy
