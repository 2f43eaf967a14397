"""Texture sampling for the PyTorch backend: mip pyramid, nearest / bilinear / trilinear lookups.

Conventions are nvdiffrast's (its `texture()` op), so both backends sample identically:

* Texel `i` of an axis of extent `N` has its centre at `(i + 0.5) / N`; `uv[..., 0]` indexes
  width (columns), `uv[..., 1]` indexes height (memory rows).
* `wrap` takes the fractional part of uv and wraps the bilinear taps around; `clamp` clamps the
  continuous texel coordinate to the centres of the border texels (so the uv gradient is zero
  where it clamps, as in nvdiffrast).
* Mip level = 0.5 * log2 of the squared major axis of the pixel footprint ellipse in texels,
  i.e. the largest singular value of the 2x2 Jacobian d(s, t)/d(X, Y) with s = u * W, t = v * H
  (nvdiffrast's formula; equal to the longer derivative vector when the two are orthogonal),
  clamped to [0, max level]. Level 0 = floor(level); 'linear-mipmap-linear' blends it with the
  next level by the fractional part, 'linear-mipmap-nearest' uses level 0 only (nvdiffrast
  truncates too).
* The pyramid halves each axis by 2x2 box averaging down to 1x1 (an axis that reached 1 stays 1
  and the other keeps halving by averaging pairs), as nvdiffrast. nvdiffrast refuses odd extents
  > 1; we accept them: an odd axis of extent n goes to floor(n / 2) texels, each the
  overlap-weighted average of an equal n / floor(n / 2) share of the texels (area resampling),
  which keeps the texture's mean exactly.

Everything is built from differentiable tensor ops (box filters, one gather per lookup), so
gradients reach the texture (through every pyramid level), the uv coordinates and, in
'linear-mipmap-linear', `uv_da` (through the blend weight).
"""

from __future__ import annotations

import torch

from core.raster.base import BOUNDARY_MODES, resolve_filter_mode


# ---------------------------------------------------------------------------------------------
# Pyramid
# ---------------------------------------------------------------------------------------------

def _area_weights(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """[n_out, n_in] box-filter weights: output texel j averages the input interval
    [j * n_in / n_out, (j + 1) * n_in / n_out), partially covered texels weighted by overlap."""
    edges = torch.arange(n_out + 1, dtype=torch.float64) * (n_in / n_out)
    lo, hi = edges[:-1].unsqueeze(1), edges[1:].unsqueeze(1)
    i = torch.arange(n_in, dtype=torch.float64).unsqueeze(0)
    overlap = (torch.minimum(hi, i + 1) - torch.maximum(lo, i)).clamp_min(0)
    return (overlap * (n_out / n_in)).to(dtype=like.dtype, device=like.device)


def downsample(level: torch.Tensor) -> torch.Tensor:
    """One mip step of [B, H, W, C]: 2x2 box average (pairs once an axis is 1). An odd axis of
    extent n > 1 goes to floor(n / 2) texels that each average an equal share (2 to 3 texels,
    partial texels weighted by overlap), which keeps the texture's mean exactly."""
    b, h, w, c = level.shape
    nh, nw = max(h // 2, 1), max(w // 2, 1)
    if (h == 1 or h % 2 == 0) and (w == 1 or w % 2 == 0):
        # Pair sums on contiguous halves (rows first, then columns): much faster on CPU than a
        # mean over a 6-D view, and cheap to differentiate.
        x = level
        if h > 1:
            rows = x.reshape(b, nh, 2, w * c)
            x = (rows[:, :, 0] + rows[:, :, 1]).view(b, nh, w, c)
        if w > 1:
            cols = x.reshape(b, nh, nw, 2, c)
            x = cols[:, :, :, 0] + cols[:, :, :, 1]
        # In place on a fresh sum (add's backward does not need its output): one big temporary
        # fewer per level.
        return x.mul_(0.5 ** ((h > 1) + (w > 1)))
    return torch.einsum("oh,bhwc,pw->bopc", _area_weights(h, nh, level), level, _area_weights(w, nw, level))


def mip_pyramid(tex: torch.Tensor, max_mip_level: int | None = None) -> list[torch.Tensor]:
    """Levels [B, h_l, w_l, C] from the base texture down to 1x1 (or `max_mip_level` levels
    below the base)."""
    levels = [tex]
    for _ in range(max_level(tex.shape[1], tex.shape[2], max_mip_level)):
        levels.append(downsample(levels[-1]))
    return levels


def max_level(h: int, w: int, max_mip_level: int | None = None) -> int:
    """Index of the last pyramid level: halving (floor) both axes until 1x1, capped."""
    top = max(h, w).bit_length() - 1
    return top if max_mip_level is None else min(top, int(max_mip_level))


def _level_shape(h: int, w: int, level: int) -> tuple[int, int]:
    return max(h >> level, 1), max(w >> level, 1)


# ---------------------------------------------------------------------------------------------
# Lookups
# ---------------------------------------------------------------------------------------------

def _axis_taps(coord: torch.Tensor, size, boundary_mode: str):
    """Bilinear taps along one axis: (texel index 0, texel index 1, weight of index 1). `size` is
    an int or a per-sample float tensor (mip levels); indices come back as float (exact)."""
    if boundary_mode == "wrap":
        coord = coord - torch.floor(coord)
    x = coord * size - 0.5
    if boundary_mode == "clamp":  # clamp to the border texel centres: no uv gradient there
        x = torch.minimum(x.clamp_min(0.0), size - 1) if torch.is_tensor(size) else x.clamp(0.0, size - 1)
    x0 = torch.floor(x)
    frac = x - x0
    x0 = x0.detach()
    if boundary_mode == "wrap":
        return torch.remainder(x0, size), torch.remainder(x0 + 1, size), frac
    x1 = torch.minimum(x0 + 1, size - 1) if torch.is_tensor(size) else (x0 + 1).clamp(max=size - 1)
    return x0, x1, frac


def _bilinear_taps(u, v, width, height, base, boundary_mode: str):
    """Texel rows [4, N] (int32: index_select takes them, and they halve the memory traffic of
    int64) and weights [4, N] of a bilinear lookup, tap-major so every later op works on
    contiguous rows. `width` / `height` / `base` (first row of the level) are ints or tensors."""
    x0, x1, fx = _axis_taps(u, width, boundary_mode)
    y0, y1, fy = _axis_taps(v, height, boundary_mode)
    with torch.no_grad():
        i32 = lambda t: t.to(torch.int32) if torch.is_tensor(t) else int(t)  # noqa: E731
        x0, x1, wd, base = i32(x0), i32(x1), i32(width), i32(base)
        r0 = i32(y0) * wd + base
        r1 = i32(y1) * wd + base
        idx = torch.stack([r0 + x0, r0 + x1, r1 + x0, r1 + x1])
    gx, gy = 1 - fx, 1 - fy
    wts = torch.stack([gx * gy, fx * gy, gx * fy, fx * fy])
    return idx, wts


def _gather(flat: torch.Tensor, idx: torch.Tensor, wts: torch.Tensor) -> torch.Tensor:
    """sum_k wts[k, n] * flat[idx[k, n]] -> [N, C]: one gather (its backward scatters into
    `flat`) followed by dense multiply-adds (a batched matmul over millions of 1 x k matrices
    is far slower on CPU)."""
    k, n = idx.shape
    vals = flat.index_select(0, idx.reshape(-1)).view(k, n, -1)
    wt = wts.to(vals.dtype).unsqueeze(-1)
    out = vals[0] * wt[0]
    for i in range(1, k):
        out = torch.addcmul(out, vals[i], wt[i])
    return out


def mip_level(uv_da: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Continuous mip level per sample from uv_da [N, 4] = (du/dX, du/dY, dv/dX, dv/dY):
    0.5 * log2 of the footprint ellipse's squared major axis in base-level texels."""
    dsdx, dsdy = uv_da[:, 0] * width, uv_da[:, 1] * width
    dtdx, dtdy = uv_da[:, 2] * height, uv_da[:, 3] * height
    a = dsdx * dsdx + dtdx * dtdx
    b = dsdy * dsdy + dtdy * dtdy
    c = dsdx * dsdy + dtdx * dtdy
    mean = 0.5 * (a + b)
    # sqrt'(0) is infinite: the tiny floor keeps isotropic footprints' gradient finite (it only
    # multiplies exact zeros there).
    spread = torch.sqrt(0.25 * (a - b) ** 2 + c * c + 1e-30)
    major_sq = (mean + spread).clamp_min(1e-30)
    return 0.5 * torch.log2(major_sq)


def _texture_batch_index(tex_batch: int, bsz: int, per_image: int, device) -> torch.Tensor | int:
    if tex_batch == 1:
        return 0
    if tex_batch != bsz:
        raise ValueError(f"texture batch {tex_batch} must be 1 or match the uv batch {bsz}")
    return torch.arange(bsz, device=device).repeat_interleave(per_image)


def sample_texture(tex: torch.Tensor, uv: torch.Tensor, uv_da: torch.Tensor | None = None, *,
                   filter_mode: str = "auto", boundary_mode: str = "wrap",
                   max_mip_level: int | None = None) -> torch.Tensor:
    """nvdiffrast-style `texture()`: tex [B|1, Ht, Wt, C], uv [B, H, W, 2] -> [B, H, W, C]."""
    if boundary_mode not in BOUNDARY_MODES:
        raise ValueError(f"boundary_mode {boundary_mode!r} is not supported by the torch backend "
                         f"(choose one of {BOUNDARY_MODES})")
    if tex.dim() != 4 or uv.dim() != 4 or uv.shape[-1] != 2:
        raise ValueError(f"expected tex [B,H,W,C] and uv [B,H,W,2], got {tuple(tex.shape)}, {tuple(uv.shape)}")
    filter_mode = resolve_filter_mode(filter_mode, uv_da, max_mip_level)
    if tex.shape[0] * tex.shape[1] * tex.shape[2] >= 2**31:
        raise ValueError("textures with 2**31 texels or more are not supported (int32 texel rows)")
    bsz, h, w, _ = uv.shape
    n = bsz * h * w
    tb, th, tw, c = tex.shape
    u, v = uv.reshape(n, 2).unbind(-1)
    tbatch = _texture_batch_index(tb, bsz, h * w, uv.device)

    if filter_mode == "nearest":
        iu = torch.floor((u - torch.floor(u) if boundary_mode == "wrap" else u) * tw).long().clamp(0, tw - 1)
        iv = torch.floor((v - torch.floor(v) if boundary_mode == "wrap" else v) * th).long().clamp(0, th - 1)
        rows = iv * tw + iu + tbatch * (th * tw)
        return tex.reshape(-1, c).index_select(0, rows.reshape(-1)).view(bsz, h, w, c)

    if filter_mode == "linear":
        idx, wts = _bilinear_taps(u, v, tw, th, tbatch * (th * tw), boundary_mode)
        return _gather(tex.reshape(-1, c), idx, wts).view(bsz, h, w, c)

    top = max_level(th, tw, max_mip_level)
    flevel = mip_level(uv_da.reshape(n, 4), th, tw).clamp(0, top)
    level0 = torch.floor(flevel).long().clamp(0, top)
    blend = None
    if filter_mode == "linear-mipmap-linear":
        blend = (flevel - level0.to(flevel.dtype)).to(u.dtype)  # 0 when magnified or clamped
        if not bool((blend > 0).any()):
            blend = None
    level1 = (level0 + 1).clamp(max=top) if blend is not None else None
    needed = (int(level0.max()) + (1 if blend is not None else 0)) if n else 0
    return _mip_lookup(tex, u, v, tbatch, level0, level1, blend, needed, boundary_mode).view(bsz, h, w, c)


def _mip_lookup(tex, u, v, tbatch, level0, level1, blend, needed: int, boundary_mode: str) -> torch.Tensor:
    """Bilinear lookups at per-sample `level0`, blended with `level1` by `blend` when given.
    Level 0 is read in place from `tex`; only the coarser levels some sample needs are built and
    concatenated into one texel table (copying the base texture every call would dominate)."""
    tb, th, tw, c = tex.shape
    levels = [tex]
    for _ in range(needed):
        levels.append(downsample(levels[-1]))
    mips = torch.cat([lv.reshape(-1, c) for lv in levels[1:]], 0) if needed else None
    sizes = [_level_shape(th, tw, i) for i in range(needed + 1)]
    counts = [tb * hh * ww for hh, ww in sizes]
    dev = tex.device
    # Per level: first row inside `mips` (level 0 lives in `tex` at row 0), and height and width
    # in uv's dtype so the coordinate arithmetic needs no type promotion.
    offsets = torch.tensor([0] + [sum(counts[1:i]) for i in range(1, needed + 1)], device=dev, dtype=torch.int32)
    per_image = torch.tensor([hh * ww for hh, ww in sizes], device=dev, dtype=torch.int32)
    heights = torch.tensor([hh for hh, _ in sizes], device=dev, dtype=u.dtype)
    widths = torch.tensor([ww for _, ww in sizes], device=dev, dtype=u.dtype)

    def taps(level: torch.Tensor):
        base = offsets[level]
        if not isinstance(tbatch, int):
            base = base + tbatch.to(torch.int32) * per_image[level]
        return _bilinear_taps(u, v, widths[level], heights[level], base, boundary_mode)

    idx0, wts0 = taps(level0)
    if blend is not None:
        wts0 = wts0 * (1 - blend)
    at_base = level0 == 0
    if mips is None or bool(at_base.all()):
        out = _gather(tex.reshape(-1, c), idx0, wts0)
    elif not bool(at_base.any()):
        out = _gather(mips, idx0, wts0)
    else:
        # Samples split between the base texture and the coarser levels: two gathers whose
        # weights are masked. Rows of coarser levels are always valid base rows (the levels
        # together hold fewer texels than the base), base rows are clamped into `mips`.
        base_w = at_base.to(wts0.dtype)
        out = _gather(tex.reshape(-1, c), idx0, wts0 * base_w)
        out = out + _gather(mips, idx0.clamp(max=mips.shape[0] - 1), wts0 * (1 - base_w))
    if blend is None:
        return out
    idx1, wts1 = taps(level1)
    return out + _gather(mips, idx1, wts1 * blend)
