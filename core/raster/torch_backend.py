"""Pure-PyTorch rasterizer: the same four operations as nvdiffrast, on any device.

Hand-written because no maintained library rasterizes with nvdiffrast's conventions on CPU.
Rasterization is vectorized: triangles are bucketed by screen bounding-box size, every bucket
enumerates a fixed k x k pixel window per triangle, and a z-buffer is resolved with one
`scatter_reduce(amin)` over packed int64 keys (quantized depth in the high bits, triangle id in
the low bits), which makes ties deterministic. Triangles with a vertex behind the camera (w <= 0)
are dropped instead of clipped (our cameras never put geometry behind the eye).
"""

from __future__ import annotations

import torch

from core.raster.base import DiffAttrs, Rasterizer, diff_attr_indices
from core.raster.mip import sample_texture

_WINDOWS = (2, 4, 8, 16, 32, 64)  # square pixel windows; larger triangles are scanned one by one
_CHUNK = 1 << 22  # candidate pixels processed at once (memory bound)
_ID_BITS = 32
_ID_MASK = (1 << _ID_BITS) - 1
_DEPTH_MAX = (1 << 30) - 1
_EMPTY = torch.iinfo(torch.int64).max


def _screen_space(pos: torch.Tensor, tri: torch.Tensor, h: int, w: int):
    """Per-triangle screen vertices [F,3,2] (pixel units, row 0 = bottom), w [F,3], ndc z [F,3]."""
    v = pos[tri]  # [F,3,4]
    cw = v[..., 3]
    safe_w = torch.where(cw.abs() < 1e-12, torch.full_like(cw, 1e-12), cw)
    ndc = v[..., :3] / safe_w[..., None]
    xy = torch.stack([(ndc[..., 0] * 0.5 + 0.5) * w, (ndc[..., 1] * 0.5 + 0.5) * h], dim=-1)
    return xy, cw, ndc[..., 2]


def _edge_setup(xy: torch.Tensor):
    """Affine barycentric coefficients: l_i(X,Y) = a_i*X + b_i*Y + c_i for each triangle."""
    x0, y0 = xy[:, 0, 0], xy[:, 0, 1]
    x1, y1 = xy[:, 1, 0], xy[:, 1, 1]
    x2, y2 = xy[:, 2, 0], xy[:, 2, 1]
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    safe = torch.where(area.abs() < 1e-20, torch.ones_like(area), area)
    # l0 is the weight of vertex 0: signed area of (p, v1, v2) / area, etc.
    a = torch.stack([(y1 - y2), (y2 - y0), (y0 - y1)], dim=-1) / safe[:, None]
    b = torch.stack([(x2 - x1), (x0 - x2), (x1 - x0)], dim=-1) / safe[:, None]
    c = torch.stack([x1 * y2 - x2 * y1, x2 * y0 - x0 * y2, x0 * y1 - x1 * y0], dim=-1) / safe[:, None]
    return a, b, c, area


class TorchRasterizer(Rasterizer):
    name = "torch"

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None

    # ------------------------------------------------------------------ rasterize
    @torch.no_grad()
    def rasterize(self, pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = int(resolution[0]), int(resolution[1])
        tri = tri.long()
        rasts, dbs = [], []
        for b in range(pos.shape[0]):
            r, d = self._rasterize_one(pos[b].float(), tri, h, w)
            rasts.append(r)
            dbs.append(d)
        return torch.stack(rasts), torch.stack(dbs)

    def _rasterize_one(self, pos: torch.Tensor, tri: torch.Tensor, h: int, w: int):
        device = pos.device
        xy, cw, z = _screen_space(pos, tri, h, w)
        a, b, c, area = _edge_setup(xy)
        # One coefficient table [F,12] (a, b, c, z per vertex): one gather per pixel later.
        coef = torch.cat([a, b, c, z], dim=-1)
        ok = (cw > 0).all(-1) & (area.abs() > 1e-12) & torch.isfinite(coef).all(-1)
        # Pixel centres are at integer + 0.5: covered columns are ceil(min-0.5)..floor(max-0.5).
        lo = torch.ceil(xy.amin(1) - 0.5).clamp_min(0)
        hi = torch.floor(xy.amax(1) - 0.5)
        hi = torch.minimum(hi, torch.tensor([w - 1, h - 1], device=device, dtype=hi.dtype))
        ext = hi - lo + 1
        size = ext.amax(-1)
        ok &= (ext >= 1).all(-1)

        keys = torch.full((h * w + 1,), _EMPTY, dtype=torch.int64, device=device)  # last slot = trash
        bucket = torch.bucketize(size, torch.tensor(_WINDOWS, device=device, dtype=size.dtype))
        bucket = torch.where(ok, bucket, torch.full_like(bucket, -1))
        for i, k in enumerate(_WINDOWS):
            sel = torch.nonzero(bucket == i).squeeze(1)
            if sel.numel():
                self._splat(sel, k, lo, hi, coef, keys, w, h)
        for t in torch.nonzero(bucket == len(_WINDOWS)).squeeze(1).tolist():  # the few huge triangles
            self._splat_large(t, lo, hi, coef, keys, w, h)

        keys = keys[:-1]
        covered = keys != _EMPTY
        tid = torch.where(covered, keys & _ID_MASK, torch.zeros_like(keys))
        return self._resolve(tid, covered, coef, cw, h, w)

    @staticmethod
    def _depth_keys(coef: torch.Tensor, px: torch.Tensor, py: torch.Tensor, valid: torch.Tensor,
                    tri_ids: torch.Tensor) -> torch.Tensor:
        """Packed (depth, id) keys for candidate pixels; _EMPTY where not covered.
        coef [...,12] broadcasts against px/py [...]."""
        l = coef[..., 0:3] * px[..., None] + coef[..., 3:6] * py[..., None] + coef[..., 6:9]
        inside = valid & ((l >= 0).all(-1) | (l <= 0).all(-1))  # both windings, as nvdiffrast
        depth = (l * coef[..., 9:12]).sum(-1)
        inside &= (depth >= -1) & (depth <= 1)
        q = ((depth.clamp(-1, 1) + 1) * (0.5 * _DEPTH_MAX)).long()
        return torch.where(inside, (q << _ID_BITS) | tri_ids, torch.full_like(q, _EMPTY))

    def _splat(self, sel, k, lo, hi, coef, keys, w, h):
        offs = torch.arange(k, device=sel.device, dtype=lo.dtype)
        oy, ox = torch.meshgrid(offs, offs, indexing="ij")
        ox, oy = ox.reshape(1, -1), oy.reshape(1, -1)
        per = max(1, _CHUNK // (k * k))
        for start in range(0, sel.numel(), per):
            s = sel[start:start + per]
            gx = lo[s, 0:1] + ox  # [S, k*k]
            gy = lo[s, 1:2] + oy
            valid = (gx <= hi[s, 0:1]) & (gy <= hi[s, 1:2])
            key = self._depth_keys(coef[s, None, :], gx + 0.5, gy + 0.5, valid, s[:, None])
            pix = torch.where(valid, gy.long() * w + gx.long(), torch.full_like(gx, h * w).long())
            keys.scatter_reduce_(0, pix.reshape(-1), key.reshape(-1), reduce="amin")

    def _splat_large(self, t, lo, hi, coef, keys, w, h):
        x0, y0, x1, y1 = int(lo[t, 0]), int(lo[t, 1]), int(hi[t, 0]), int(hi[t, 1])
        xs = torch.arange(x0, x1 + 1, device=keys.device, dtype=lo.dtype)
        rows_per = max(1, _CHUNK // max(xs.numel(), 1))
        tid = torch.tensor(t, device=keys.device)
        for ys in torch.arange(y0, y1 + 1, device=keys.device, dtype=lo.dtype).split(rows_per):
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            valid = torch.ones_like(gx, dtype=torch.bool)
            key = self._depth_keys(coef[t], gx + 0.5, gy + 0.5, valid, tid)
            keys.scatter_reduce_(0, (gy.long() * w + gx.long()).reshape(-1), key.reshape(-1), reduce="amin")

    @staticmethod
    def _resolve(tid, covered, coef, cw, h, w):
        """Perspective-correct barycentrics and their screen derivatives, densely over the image."""
        device = tid.device
        pix = torch.arange(h * w, device=device)
        px = (pix % w).float() + 0.5
        py = torch.div(pix, w, rounding_mode="floor").float() + 0.5
        cf = coef[tid]
        a, b = cf[:, 0:3], cf[:, 3:6]
        l = a * px[:, None] + b * py[:, None] + cf[:, 6:9]
        inv_w = 1.0 / cw[tid]
        q = l * inv_w
        s = q.sum(-1, keepdim=True)
        s = torch.where(s.abs() < 1e-30, torch.ones_like(s), s)
        bary = q / s
        # d(bary_i)/dX = (dq_i/dX * S - q_i * dS/dX) / S^2 with dq_i/dX = a_i / w_i.
        dqx, dqy = a * inv_w, b * inv_w
        dbx = (dqx * s - q * dqx.sum(-1, keepdim=True)) / s**2
        dby = (dqy * s - q * dqy.sum(-1, keepdim=True)) / s**2
        m = covered.unsqueeze(-1).float()
        rast = torch.stack([bary[:, 0], bary[:, 1], (l * cf[:, 9:12]).sum(-1), (tid + 1).float()], -1) * m
        db = torch.stack([dbx[:, 0], dby[:, 0], dbx[:, 1], dby[:, 1]], dim=-1) * m
        return rast.view(h, w, 4), db.view(h, w, 4)

    # ------------------------------------------------------------------ interpolate
    def interpolate(self, attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor,
                    rast_db: torch.Tensor | None = None, diff_attrs: DiffAttrs = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if attr.dim() == 2:
            attr = attr.unsqueeze(0)
        bsz, h, w, _ = rast.shape
        nv, ch = attr.shape[1], attr.shape[2]
        tid = rast[..., 3].long() - 1
        mask = (tid >= 0).unsqueeze(-1).to(attr.dtype)
        corners = tri.long()[tid.clamp_min(0)]  # [B,H,W,3]
        if attr.shape[0] > 1:
            corners = corners + (torch.arange(bsz, device=rast.device) * nv).view(bsz, 1, 1, 1)
        flat = attr.reshape(-1, ch)
        a0, a1, a2 = (flat[corners[..., i]] for i in range(3))
        u, v = rast[..., 0:1].to(attr.dtype), rast[..., 1:2].to(attr.dtype)
        out = (a2 + u * (a0 - a2) + v * (a1 - a2)) * mask
        idx = diff_attr_indices(diff_attrs, ch)
        if not idx or rast_db is None:
            return out, None
        d = rast_db.to(attr.dtype)
        e0, e1 = (a0 - a2)[..., idx], (a1 - a2)[..., idx]
        ddx = d[..., 0:1] * e0 + d[..., 2:3] * e1
        ddy = d[..., 1:2] * e0 + d[..., 3:4] * e1
        out_da = torch.stack([ddx, ddy], dim=-1).reshape(bsz, h, w, 2 * len(idx)) * mask
        return out, out_da

    # ------------------------------------------------------------------ texture
    def texture(self, tex: torch.Tensor, uv: torch.Tensor, uv_da: torch.Tensor | None = None,
                filter_mode: str = "auto", boundary_mode: str = "wrap", max_mip_level: int | None = None
                ) -> torch.Tensor:
        if filter_mode == "auto":
            filter_mode = "linear-mipmap-linear" if uv_da is not None else "linear"
        return sample_texture(tex, uv, uv_da, filter_mode=filter_mode, boundary_mode=boundary_mode,
                              max_mip_level=max_mip_level)

    # ------------------------------------------------------------------ antialias
    def antialias(self, color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor
                  ) -> torch.Tensor:
        """Documented substitute for nvdiffrast's analytic antialiasing.

        nvdiffrast computes, per silhouette edge crossing a pixel pair, the exact coverage and
        blends the two colours (with gradients to vertex positions). Here, pixels on a
        silhouette (coverage differs from a 4-neighbour, or the neighbour shows a different
        triangle more than 1% of the depth range away, i.e. an occlusion boundary) are replaced
        by 0.5 * own colour + 0.5 * mean of the 4 neighbours. It softens stair-steps the same
        way in spirit, is differentiable in `color`, gives no gradient to positions (we never
        optimize geometry), and leaves every interior pixel bit-identical.
        """
        edge = self._silhouette(rast)
        padded = torch.nn.functional.pad(color.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate")
        neigh = (padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]) / 4
        blended = 0.5 * color + 0.5 * neigh.permute(0, 2, 3, 1)
        return torch.where(edge.unsqueeze(-1), blended, color)

    @staticmethod
    def _silhouette(rast: torch.Tensor) -> torch.Tensor:
        """Pixels on a coverage or occlusion boundary; the image border compares to itself."""
        maps = torch.nn.functional.pad(rast[..., 2:4].permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate")
        depth, tid = rast[..., 2], rast[..., 3]
        cov = tid > 0
        edge = torch.zeros_like(cov)
        h, w = tid.shape[1:]
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            n_depth, n_tid = maps[:, 0, dy:dy + h, dx:dx + w], maps[:, 1, dy:dy + h, dx:dx + w]
            n_cov = n_tid > 0
            occlusion = cov & n_cov & (n_tid != tid) & ((n_depth - depth).abs() > 0.01)
            edge |= (cov != n_cov) | occlusion
        return edge
