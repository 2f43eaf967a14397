"""Pure-PyTorch rasterizer with nvdiffrast's conventions, on any device.

Written by hand because no maintained library rasterizes with nvdiffrast's conventions on a CPU.

How `rasterize` works (fully vectorized over views, triangles, rows and pixels):

1. Setup per (view, triangle): project to pixel space and snap the vertices to 1/256 pixel
   (`_SUBPIXEL`, integer coordinates). Edge functions are then exact integers at pixel centres
   (held in float64, exact below 2**53), so triangles sharing an edge never both miss a pixel
   centre (no cracks), and a tie-break on the edge direction gives a centre lying exactly on a
   shared edge to exactly one of them (no double coverage). Barycentrics and depth use the
   unsnapped positions, as nvdiffrast's do.
2. Scanlines: for every (triangle, pixel row) in the triangle's clipped bounding box, the covered
   pixel span is solved exactly from the edge inequalities (floor of a quotient of integers
   below 2**52, which float64 division gets exactly right).
3. Fragments: the spans are expanded into exactly the covered pixels (no wasted candidates),
   each gets an int64 key (quantized z/w << 32 | triangle row) and one `scatter_reduce(amin)`
   resolves the z-buffer. Integer keys make the result deterministic; exact depth ties go to
   the lower triangle index.
4. Resolve: per pixel, perspective-correct barycentrics (u, v), z/w and their screen-space
   derivatives from a per-triangle coefficient table (a few gathers and dense ops).

Layout rule used throughout: 1-D contiguous arrays (structure of arrays). PyTorch's CPU kernels
lose their vectorized fast path on broadcast or strided operands and on reductions over tiny
axes, which made a row-major [N, 3] formulation several times slower.

Clipping: triangles with a vertex at w <= 0 (behind the eye) are dropped, not clipped, and
fragments with z/w outside [-1, 1] are discarded per pixel (nvdiffrast clips such triangles
properly; our cameras never put geometry behind the eye). Triangles with a vertex more than
2**16 pixels off screen (only possible for a vertex very close to the eye plane) are dropped too,
which keeps every product exact. Nothing is culled by winding.
"""

from __future__ import annotations

import torch

from core.raster.base import DiffAttrs, Rasterizer, diff_attr_indices
from core.raster.mip import sample_texture

_SUBPIXEL_BITS = 8  # vertex snapping: 1/256 pixel, like common GPU rasterizers
_SUBPIXEL = float(1 << _SUBPIXEL_BITS)
_HALF = 1 << (_SUBPIXEL_BITS - 1)  # pixel centre offset in snapped units
_COORD_LIMIT = float(1 << 24)  # |snapped coordinate| bound that keeps float64 products exact
_DEPTH_SCALE = float(1 << 29)  # z/w in [-1, 1] -> [0, 2**30]: 30 bits above a 32-bit triangle row
_ID_BITS = 32
_ID_MASK = (1 << _ID_BITS) - 1
_EMPTY = torch.iinfo(torch.int64).max


# ---------------------------------------------------------------------------------------------
# Triangle setup. Per-triangle arrays are [3, T] (corner or edge, triangle) or [T], with T = B * F
# triangle rows ordered (view, face). Everything stays 1-D contiguous: PyTorch's CPU kernels lose
# their vectorized fast path on broadcast or strided operands.
# ---------------------------------------------------------------------------------------------

def _project_vertices(pos: torch.Tensor, h: int, w: int):
    """Per vertex [B, V] (float64): exact pixel-space position relative to the image centre,
    the same snapped to 1/256 pixel and measured from the lower-left image corner (in units of
    1/256 pixel, integer-valued), z/w, clip w, and whether the vertex is usable (in front of the
    eye and within the exactness bound)."""
    p = pos.double()
    cw = p[..., 3]
    front = cw > 0
    inv_w = 1.0 / torch.where(front, cw, torch.ones_like(cw))
    fx = p[..., 0] * inv_w * (0.5 * w)
    fy = p[..., 1] * inv_w * (0.5 * h)
    sx = torch.round((fx + 0.5 * w) * _SUBPIXEL)
    sy = torch.round((fy + 0.5 * h) * _SUBPIXEL)
    good = front & (sx.abs() < _COORD_LIMIT) & (sy.abs() < _COORD_LIMIT)  # NaN compares False
    zero = torch.zeros_like(sx)
    fx, fy = torch.where(good, fx, zero), torch.where(good, fy, zero)
    return fx, fy, torch.where(good, sx, zero), torch.where(good, sy, zero), p[..., 2] * inv_w, cw, good


def _corner_index(tri: torch.Tensor, bsz: int, nv: int) -> torch.Tensor:
    """[3, B * F] flat vertex index of each triangle row's corners."""
    views = (torch.arange(bsz, device=tri.device) * nv).view(1, bsz, 1)
    return (tri.t().unsqueeze(1) + views).reshape(3, -1)


class _Setup:
    """Per-triangle quantities shared by coverage, depth and the resolve table."""

    def __init__(self, pos: torch.Tensor, tri: torch.Tensor, h: int, w: int) -> None:
        bsz, nv = pos.shape[0], pos.shape[1]
        fx, fy, vx, vy, vz, vw, good = _project_vertices(pos, h, w)
        idx = _corner_index(tri, bsz, nv).reshape(-1)
        corners = lambda t: t.reshape(-1).index_select(0, idx).view(3, -1)  # noqa: E731 - [3, T]
        self.fx, self.fy = corners(fx), corners(fy)  # exact corners
        sx, sy = corners(vx), corners(vy)  # snapped corners
        self.zn, self.cw = corners(vz), corners(vw)
        g = corners(good)
        # Edge i runs from corner i+1 to corner i+2 (opposite corner i). E_i / area2 is the
        # screen-space barycentric weight of corner i; values are exact integers in float64.
        xa, ya, xb, yb = sx[[1, 2, 0]], sy[[1, 2, 0]], sx[[2, 0, 1]], sy[[2, 0, 1]]
        dx, dy = xb - xa, yb - ya
        area2 = dx[0] * (sy[0] - ya[0]) - dy[0] * (sx[0] - xa[0])
        sign = torch.sign(area2)
        self.a, self.b = -dy * sign, dx * sign  # inside-positive for both windings
        self.c = (dy * xa - dx * ya) * sign
        self.area2 = area2.abs()
        # Pixel rows whose centres (256 y + 128 in snapped units) the triangle's box spans.
        y_min = torch.minimum(torch.minimum(sy[0], sy[1]), sy[2])
        y_max = torch.maximum(torch.maximum(sy[0], sy[1]), sy[2])
        self.lo_y = torch.ceil((y_min - _HALF) * (1 / _SUBPIXEL)).clamp_min(0)
        self.hi_y = torch.floor((y_max - _HALF) * (1 / _SUBPIXEL)).clamp_max(h - 1)
        # Skip triangles that cannot cover a centre: degenerate, or entirely left / right of
        # the image's centre columns (rows outside the image are clipped by lo_y / hi_y).
        x_min = torch.minimum(torch.minimum(sx[0], sx[1]), sx[2])
        x_max = torch.maximum(torch.maximum(sx[0], sx[1]), sx[2])
        on_screen = (x_max >= _HALF) & (x_min <= (w - 1) * _SUBPIXEL + _HALF)
        self.ok = g[0] & g[1] & g[2] & (self.area2 > 0) & on_screen

    def barycentric_planes(self):
        """lambda_i = la_i * X + lb_i * Y + lc_i ([3, T] float64 each) at pixel-centre coordinates
        (X, Y) in pixels from the image centre, from the exact (unsnapped) corners like
        nvdiffrast's barycentrics; snapping only decides coverage."""
        x, y = self.fx, self.fy
        xa, ya, xb, yb = x[[1, 2, 0]], y[[1, 2, 0]], x[[2, 0, 1]], y[[2, 0, 1]]
        dx, dy = xb - xa, yb - ya
        area2 = dx[0] * (y[0] - ya[0]) - dy[0] * (x[0] - xa[0])
        inv = 1.0 / torch.where(area2 == 0, torch.ones_like(area2), area2)
        return -dy * inv, dx * inv, (dy * xa - dx * ya) * inv


def _span_slots(s: _Setup):
    """Row-span form of the edges: covered pixel x on row y needs, per edge, 256 a x + r >= 0 with
    r = b * Y_units + c2 (c2 folds in the x half-pixel and the tie-break). Edges with a > 0 give
    x >= -floor(r / D), edges with a < 0 give x <= floor(r / D), D = 256 |a|; a horizontal edge
    (a = 0) acts as a lower bound with a tiny D that makes any r < 0 push x off screen.

    Every valid triangle has at least one a > 0 and one a < 0 edge (sum(a) = 0), so the edges
    are arranged in four slots (lower 1, lower 2, upper 1, upper 2), a non-binding dummy filling
    the unused one. Returns (b, c2, D), each [4, T]."""
    a, b = s.a, s.b
    # Tie-break: an inside-positive edge owns centres exactly on it if it points up (a < 0) or
    # exactly left (a == 0 and b < 0); antisymmetric, so a shared edge gives each such centre
    # to exactly one of its two triangles. Non-owners need E >= 1 instead of E >= 0.
    owner = (a < 0) | ((a == 0) & (b < 0))
    c2 = s.c - (~owner).double() + a * _HALF
    d = torch.where(a == 0, torch.full_like(a, _HORIZONTAL_D), a.abs() * _SUBPIXEL)
    a0, a1, a2 = a.unbind(0)
    # Slot edges by the sign of a: lower 1 = first edge with a > 0, upper 1 = first with a < 0,
    # the remaining edge goes to lower 2 (a >= 0) or upper 2 (a < 0). Plain comparisons instead
    # of argmax over the size-3 axis (slow on CPU).
    lo1 = torch.where(a0 > 0, 0, torch.where(a1 > 0, 1, 2))
    hi1 = torch.where(a0 < 0, 0, torch.where(a1 < 0, 1, 2))
    mid = (3 - lo1 - hi1).clamp(0, 2)  # lo1 == hi1 only for skipped (degenerate) triangles
    mid_is_lower = torch.where(mid == 0, a0, torch.where(mid == 1, a1, a2)) >= 0
    slots = []
    for arr, dummy in ((b, 0.0), (c2, _BIG), (d, 1.0)):
        e0, e1, e2 = arr.unbind(0)
        pick = lambda i: torch.where(i == 0, e0, torch.where(i == 1, e1, e2))  # noqa: E731
        m = pick(mid)
        fill = torch.full_like(m, dummy)
        slots.append(torch.stack([pick(lo1), torch.where(mid_is_lower, m, fill),
                                  pick(hi1), torch.where(mid_is_lower, fill, m)]))
    return slots


def _resolve_table(s: _Setup, la, lb, lc) -> torch.Tensor:
    """[14, T + 1] float32 per-triangle table for the per-pixel resolve (column 0 = empty pixel,
    all zeros, which resolves to all-zero outputs). Rows: q_i = lambda_i / w_i planes
    (A0..A2, B0..B2, C0..C2), the z/w plane (Zx, Zy, Z0), and sum(A), sum(B)."""
    inv_w = 1.0 / torch.where(s.cw > 0, s.cw, torch.ones_like(s.cw))
    qa, qb, qc = la * inv_w, lb * inv_w, lc * inv_w
    zn = s.zn
    rows = [qa, qb, qc, torch.stack([(la * zn).sum(0), (lb * zn).sum(0), (lc * zn).sum(0)]),
            qa.sum(0, keepdim=True), qb.sum(0, keepdim=True)]
    table = torch.cat(rows, 0).float()
    return torch.cat([table.new_zeros(14, 1), table], 1)


# ---------------------------------------------------------------------------------------------
# Scanlines, fragments and the z-buffer
# ---------------------------------------------------------------------------------------------

_HORIZONTAL_D = 2.0**-30  # "divisor" of horizontal edges: r < 0 (r <= -1) maps to x >= 2**30
_BIG = 2.0**60  # dummy-slot constant: bounds of +-2**60 never bind


def _segments(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For segments of counts[i] elements laid end to end: owner segment of each element and the
    start offset of each segment."""
    total = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts,
                                    output_size=total)
    return owner, torch.cumsum(counts, 0) - counts


def _fragment_keys(pos: torch.Tensor, tri: torch.Tensor, h: int, w: int):
    """(pixel index [N], packed depth|triangle-row key [N]) of every fragment (a covered pixel
    centre of one triangle), and the resolve table."""
    nf = tri.shape[0]
    dev = pos.device
    s = _Setup(pos, tri, h, w)
    la, lb, lc = s.barycentric_planes()
    table = _resolve_table(s, la, lb, lc)
    # Quantized depth (z/w + 1) * 2**29 as an affine function of the pixel indices (x, y).
    zx = (la * s.zn).sum(0) * _DEPTH_SCALE
    zy = (lb * s.zn).sum(0) * _DEPTH_SCALE
    z0 = ((lc * s.zn).sum(0) + 1.0) * _DEPTH_SCALE + zx * (0.5 - 0.5 * w) + zy * (0.5 - 0.5 * h)
    zclip = bool((s.ok & ((s.zn < -1) | (s.zn > 1)).any(0)).any())
    sb, sc, sd = _span_slots(s)
    # Rows are indexed by y_glob = view * H + y so one per-row value serves pixel addressing; the
    # view offset is folded into the per-triangle constants (exact: integers below 2**53).
    view_y = (torch.arange(s.ok.numel(), device=dev) // nf * h).double()
    sc = sc - sb * (view_y * _SUBPIXEL)
    z0 = z0 - zy * view_y

    # Scanlines: one entry per (triangle, pixel row of its clipped box); skipped triangles get none.
    rows = torch.where(s.ok, (s.hi_y - s.lo_y + 1).clamp_min(0), torch.zeros_like(s.lo_y)).long()
    seg, start = _segments(rows)
    take = lambda t: t.index_select(0, seg)  # noqa: E731 - per-triangle [T] -> per row [R]
    y = torch.arange(seg.numel(), device=dev, dtype=torch.float64) + take(view_y + s.lo_y - start)
    y_units = y * _SUBPIXEL + _HALF
    bound = [torch.floor(torch.addcmul(take(sc[i]), take(sb[i]), y_units) / take(sd[i])) for i in range(4)]
    x0 = torch.neg(torch.minimum(bound[0], bound[1])).clamp_min(0)
    x1 = torch.minimum(bound[2], bound[3]).clamp_max(w - 1)
    count = (x1 - x0 + 1).clamp_min(0).long()

    # Fragments: per-row constants arranged so that, with k the global fragment index,
    # pixel = k + pix_off and depth = zx * k + z_off.
    frag, frag_start = _segments(count)
    x0s = x0 - frag_start.double()
    pix_off = (y * w + x0s).long()
    zx_row = take(zx)
    z_off = torch.addcmul(torch.addcmul(take(z0), take(zy), y), zx_row, x0s)
    k = torch.arange(frag.numel(), device=dev)
    pix = k + pix_off.index_select(0, frag)
    depth = torch.addcmul(z_off.index_select(0, frag), k.double(), zx_row.index_select(0, frag))
    key = (depth.long() << _ID_BITS) | seg.index_select(0, frag)
    if zclip:
        keep = (depth >= 0) & (depth <= 2 * _DEPTH_SCALE)
        key = torch.where(keep, key, torch.full_like(key, _EMPTY))
    return pix, key, table


def _corner_rows(face: torch.Tensor, nf: int) -> torch.Tensor:
    """Flat indices into tri.t() [3, F] of the three corners of each face, corner-major [3n]."""
    return (face.unsqueeze(0) + (torch.arange(3, device=face.device) * nf).unsqueeze(1)).reshape(-1)


def _zbuffer(pix: torch.Tensor, key: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest fragment per pixel: min over packed keys (_EMPTY where nothing landed)."""
    keys = torch.full((size,), _EMPTY, dtype=torch.int64, device=key.device)
    return keys.scatter_reduce_(0, pix, key, reduce="amin")


def _resolve(keys: torch.Tensor, table: torch.Tensor, bsz: int, nf: int, h: int, w: int):
    """rast and rast_db [B, H, W, 4] from the z-buffer: perspective-correct (u, v) = q_{0,1} / s
    with q_i = lambda_i / w_i and s = sum(q); z/w; triangle id + 1; and by the quotient rule
    d(q_i / s)/dX = (A_i - (q_i / s) * sum(A)) / s."""
    covered = keys != _EMPTY
    col = torch.where(covered, (keys & _ID_MASK) + 1, torch.zeros_like(keys))
    cf = [row.index_select(0, col) for row in table]  # 14 x [n]: 1-D gathers stay vectorized
    dev = keys.device
    xs = torch.arange(w, device=dev, dtype=torch.float32) + (0.5 - 0.5 * w)
    ys = torch.arange(h, device=dev, dtype=torch.float32) + (0.5 - 0.5 * h)
    X = xs.repeat(bsz * h)
    Y = ys.repeat_interleave(w).repeat(bsz)
    q = [torch.addcmul(torch.addcmul(cf[6 + i], cf[i], X), cf[3 + i], Y) for i in range(3)]
    s = q[0] + q[1] + q[2]
    inv_s = torch.where(covered, s, torch.ones_like(s)).reciprocal_()
    u, v = q[0] * inv_s, q[1] * inv_s
    z = torch.addcmul(torch.addcmul(cf[11], cf[9], X), cf[10], Y)
    sa, sb = cf[12], cf[13]
    du_dx = (cf[0] - u * sa) * inv_s
    du_dy = (cf[3] - u * sb) * inv_s
    dv_dx = (cf[1] - v * sa) * inv_s
    dv_dy = (cf[4] - v * sb) * inv_s
    view_off = torch.arange(bsz, device=dev).repeat_interleave(h * w) * nf
    tid = torch.where(covered, col - view_off, torch.zeros_like(col)).float()
    rast = torch.stack([u, v, z, tid], -1).view(bsz, h, w, 4)
    rast_db = torch.stack([du_dx, du_dy, dv_dx, dv_dy], -1).view(bsz, h, w, 4)
    return rast, rast_db


# ---------------------------------------------------------------------------------------------
# Antialiasing helpers (see TorchRasterizer.antialias)
# ---------------------------------------------------------------------------------------------

_AA_EPS = 0.0625  # crossing points up to 1/16 pixel outside the pixel pair still count (nvdiffrast)
_FMAX = 3.0e38


def _opposite_vertices(tri: torch.Tensor) -> torch.Tensor:
    """[F, 3]: for edge i of each triangle (the edge opposite corner i), the corner of the other
    triangle sharing that edge; -1 when no other or more than one other triangle shares it."""
    nf = tri.shape[0]
    va, vb = tri[:, [1, 2, 0]], tri[:, [2, 0, 1]]
    nv = int(tri.max()) + 1 if nf else 1
    key = torch.minimum(va, vb) * nv + torch.maximum(va, vb)
    unique_neg = -1 - torch.arange(3 * nf, device=tri.device).view(nf, 3)
    key = torch.where(va == vb, unique_neg, key).reshape(-1)  # degenerate edges match nothing
    order = torch.argsort(key, stable=True)
    sk = key[order]
    _, inverse, counts = torch.unique_consecutive(sk, return_inverse=True, return_counts=True)
    j = torch.arange(sk.numel(), device=tri.device)
    same_next = torch.zeros_like(sk, dtype=torch.bool)
    same_next[:-1] = sk[1:] == sk[:-1]
    partner = order[torch.where(same_next, j + 1, j - 1).clamp(0, max(sk.numel() - 1, 0))]
    third = tri.reshape(-1)
    opp_sorted = torch.where(counts[inverse] == 2, third[partner], torch.full_like(sk, -1))
    opp = torch.empty_like(opp_sorted)
    opp[order] = opp_sorted
    return opp.view(nf, 3)


def _screen_xy(pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[..., 2] pixel-space positions relative to the image centre (x/w * W/2, y/w * H/2)."""
    scale = torch.tensor([0.5 * w, 0.5 * h], dtype=pos.dtype, device=pos.device)
    return pos[..., :2] / pos[..., 3:4] * scale


def _signed_area(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    return (p1[..., 0] - p0[..., 0]) * (p2[..., 1] - p0[..., 1]) - (p2[..., 0] - p0[..., 0]) * (p1[..., 1] - p0[..., 1])


def _silhouette_edges(pos: torch.Tensor, tri: torch.Tensor, opp: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, F, 3] whether edge i is a silhouette in each view: the triangle across it lies on the
    same side of the edge as this triangle (it folds away), or there is no unique neighbour."""
    xy = _screen_xy(pos.double(), h, w)  # [B, V, 2]
    v = xy[:, tri]  # [B, F, 3, 2]
    o = torch.where((opp >= 0).unsqueeze(-1), xy[:, opp.clamp_min(0)], v)
    bb = _signed_area(v[:, :, 0], v[:, :, 1], v[:, :, 2])
    wings = torch.stack([_signed_area(o[:, :, 0], v[:, :, 1], v[:, :, 2]),
                         _signed_area(o[:, :, 1], v[:, :, 2], v[:, :, 0]),
                         _signed_area(o[:, :, 2], v[:, :, 0], v[:, :, 1])], -1)
    return torch.signbit(wings) == torch.signbit(bb).unsqueeze(-1)


def _discontinuities(tid: torch.Tensor, has_sil: torch.Tensor):
    """Flat pixel indices (p0, p1) of right / up neighbours showing different triangles where at
    least one of the two triangles has a silhouette edge, and whether the pair is vertical."""
    bsz, h, w = tid.shape
    flag = torch.gather(has_sil, 1, tid.reshape(bsz, -1)).view(bsz, h, w)
    horiz = (tid[:, :, 1:] != tid[:, :, :-1]) & (flag[:, :, 1:] | flag[:, :, :-1])
    vert = (tid[:, 1:, :] != tid[:, :-1, :]) & (flag[:, 1:, :] | flag[:, :-1, :])
    hb, hy, hx = torch.nonzero(horiz, as_tuple=True)
    vb, vy, vx = torch.nonzero(vert, as_tuple=True)
    p0 = torch.cat([(hb * h + hy) * w + hx, (vb * h + vy) * w + vx])
    p1 = torch.cat([(hb * h + hy) * w + hx + 1, (vb * h + vy + 1) * w + vx])
    down = torch.cat([torch.zeros_like(hx, dtype=torch.bool), torch.ones_like(vx, dtype=torch.bool)])
    return p0, p1, down


def _edge_crossing(pos, view, corners, edge_sil, px, py, down, use1, h: int, w: int):
    """Crossing point dc (from the triangle's pixel towards the other pixel, in pixels) of the
    triangle's silhouette edge that crosses the pixel pair's axis, and whether one qualifies.
    Differentiable in `pos`."""
    xy = _screen_xy(pos[view.unsqueeze(1), corners], h, w)  # [P, 3, 2]
    centre = torch.stack([px + (0.5 - 0.5 * w), py + (0.5 - 0.5 * h)], -1).unsqueeze(1)
    rel = xy - centre
    # Work along the pair's axis: swap x and y for vertical pairs.
    axis_x = torch.where(down.view(-1, 1), rel[..., 1], rel[..., 0])
    axis_y = torch.where(down.view(-1, 1), rel[..., 0], rel[..., 1])
    a_idx, b_idx = [1, 2, 0], [2, 0, 1]  # edge i runs from corner i+1 to corner i+2
    xa, ya, xb, yb = axis_x[:, a_idx], axis_y[:, a_idx], axis_x[:, b_idx], axis_y[:, b_idx]
    dx, dy = xb - xa, yb - ya
    ds = torch.where(use1, -1.0, 1.0).to(xy.dtype).unsqueeze(1)
    crosses = torch.signbit(ya) != torch.signbit(yb)  # the edge straddles the pair's axis
    num = torch.where(crosses, ds * (xa * dy - ya * dx), torch.full_like(dx, -_FMAX))
    den = torch.where(crosses, dy, torch.ones_like(dy))
    ratio = num / den  # signed crossing position along the axis towards the other pixel
    r0, r1, r2 = ratio.unbind(1)
    pick = torch.where((r2 > r0) & (r2 > r1), 2, torch.where(r1 > r0, 1, 0)).unsqueeze(1)
    dc = torch.gather(ratio, 1, pick).squeeze(1)
    steep = (torch.gather(dy, 1, pick).abs() >= torch.gather(dx, 1, pick).abs()).squeeze(1)
    ok = torch.gather(edge_sil, 1, pick).squeeze(1) & torch.gather(crosses, 1, pick).squeeze(1) & steep
    valid = ok & (dc > -_AA_EPS) & (dc < 1.0 + _AA_EPS)
    return dc, valid


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------

class TorchRasterizer(Rasterizer):
    """nvdiffrast's four operations in plain PyTorch (see the module docstring)."""

    name = "torch"

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self._topology: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ rasterize
    @torch.no_grad()
    def rasterize(self, pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Coverage, depth test and barycentrics. No gradients (nvdiffrast's only reach `pos`,
        which is fixed in texture optimization)."""
        if pos.dim() == 2:
            pos = pos.unsqueeze(0)
        if pos.dim() != 3 or pos.shape[-1] != 4:
            raise ValueError(f"pos must be [B, V, 4] clip-space positions, got {tuple(pos.shape)}")
        h, w = int(resolution[0]), int(resolution[1])
        tri = tri.long()
        bsz, nf = pos.shape[0], tri.shape[0]
        pix, key, table = _fragment_keys(pos, tri, h, w)
        keys = _zbuffer(pix, key, bsz * h * w)
        rast, rast_db = _resolve(keys, table, bsz, nf, h, w)
        return rast, rast_db

    # ------------------------------------------------------------------ interpolate
    def interpolate(self, attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor,
                    rast_db: torch.Tensor | None = None, diff_attrs: DiffAttrs = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Barycentric interpolation of vertex attributes (differentiable in `attr`, and in `rast`
        / `rast_db` if those carry gradients). Background pixels get 0."""
        if attr.dim() == 2:
            attr = attr.unsqueeze(0)
        bsz, h, w, _ = rast.shape
        ab, nv, ch = attr.shape
        if ab not in (1, bsz):
            raise ValueError(f"attr batch {ab} must be 1 or match rast batch {bsz}")
        idx = diff_attr_indices(diff_attrs, ch)
        if idx and rast_db is None:
            raise ValueError("diff_attrs needs rast_db (the second output of rasterize)")
        n = bsz * h * w
        if tri.shape[0] == 0:  # nothing was rasterized
            zeros = attr.new_zeros(bsz, h, w, ch)
            return zeros, (attr.new_zeros(bsz, h, w, 2 * len(idx)) if idx else None)
        tid = rast[..., 3].reshape(n).long()
        covered = (tid > 0).to(attr.dtype)
        face = (tid - 1).clamp_min(0)
        corners = tri.long().t().reshape(-1).index_select(0, _corner_rows(face, tri.shape[0]))  # [3n]
        if ab > 1:
            corners = corners + (torch.arange(bsz, device=rast.device) * nv).repeat_interleave(h * w).repeat(3)
        vals = attr.reshape(-1, ch).index_select(0, corners).view(3, n, ch)  # corner-major
        u = (rast[..., 0].reshape(n).to(attr.dtype) * covered).unsqueeze(1)
        v = (rast[..., 1].reshape(n).to(attr.dtype) * covered).unsqueeze(1)
        out = torch.addcmul(torch.addcmul(vals[2] * (covered.unsqueeze(1) - u - v), vals[0], u), vals[1], v)
        out = out.view(bsz, h, w, ch)
        if not idx:
            return out, None
        sel = vals[:, :, idx] if len(idx) < ch else vals
        e0, e1 = sel[0] - sel[2], sel[1] - sel[2]
        db = rast_db.reshape(n, 4).to(attr.dtype)
        d_dx = torch.addcmul(db[:, 0:1] * e0, db[:, 2:3], e1)
        d_dy = torch.addcmul(db[:, 1:2] * e0, db[:, 3:4], e1)
        out_da = torch.stack([d_dx, d_dy], -1).view(bsz, h, w, 2 * len(idx))
        return out, out_da

    # ------------------------------------------------------------------ texture
    def texture(self, tex: torch.Tensor, uv: torch.Tensor, uv_da: torch.Tensor | None = None,
                filter_mode: str = "auto", boundary_mode: str = "wrap", max_mip_level: int | None = None
                ) -> torch.Tensor:
        """Filtered lookups (see core.raster.mip); gradients reach tex, uv and uv_da."""
        return sample_texture(tex, uv, uv_da, filter_mode=filter_mode, boundary_mode=boundary_mode,
                              max_mip_level=max_mip_level)

    # ------------------------------------------------------------------ antialias
    def antialias(self, color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor
                  ) -> torch.Tensor:
        """nvdiffrast's analytic silhouette antialiasing, reimplemented with tensor ops.

        For every horizontal and vertical pair of neighbouring pixels showing different
        triangles (or one empty), take the nearer pixel's triangle (the covered one if the other
        is empty). If one of its silhouette edges (the triangle across the edge lies on the same
        side of it on screen, i.e. faces the other way, or the edge has no unique neighbour)
        crosses the line through the two pixel centres, and the edge is more perpendicular than
        parallel to that line, let dc be the crossing point measured from the triangle's pixel
        towards the other one (accepted within [-1/16, 1 + 1/16], clamped to [0, 1]). If
        dc < 0.5 the triangle's pixel is blended towards the other pixel's colour by 0.5 - dc;
        otherwise the other pixel is blended towards the triangle's colour by dc - 0.5. Blends
        from several pairs add up; all other pixels are returned unchanged.

        This is nvdiffrast's algorithm, and shares its limits: only the pixel's own triangle is
        examined, so where sub-pixel sliver triangles form the outline, pixels next to it keep
        their stair-steps. Differences: edges shared by more than two triangles always count as
        silhouettes (nvdiffrast keeps the first two it hashes), and gradients come from
        autograd, to `color` always and to `pos` through the crossing point when `pos` requires
        grad (nvdiffrast's pos gradient is its own hand-derived formula of the same quantity).
        """
        if pos.dim() == 2:
            pos = pos.unsqueeze(0)
        bsz, h, w, ch = color.shape
        pairs = self._aa_pairs(rast, pos, tri)
        if pairs is None:
            return color
        pix0, pix1, target, alpha = pairs
        flat = color.reshape(-1, ch)
        delta = alpha.to(color.dtype).unsqueeze(1) * (flat.index_select(0, pix1) - flat.index_select(0, pix0))
        return flat.index_add(0, target, delta).view(bsz, h, w, ch)

    def _opposite_vertices(self, tri: torch.Tensor) -> torch.Tensor:
        """[F, 3] vertex across edge i (opposite corner i) from the neighbouring triangle, or -1
        for boundary / non-manifold edges; cached while the same triangle list comes back."""
        cached = self._topology
        if cached is None or cached[0].shape != tri.shape or not torch.equal(cached[0], tri):
            self._topology = cached = (tri.clone(), _opposite_vertices(tri))
        return cached[1]

    def _aa_pairs(self, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor):
        """(pixel0, pixel1, blended pixel, alpha) of every pixel pair that gets a blend, or None."""
        bsz, h, w, _ = rast.shape
        nf = tri.shape[0]
        tri = tri.long()
        opp = self._opposite_vertices(tri)
        with torch.no_grad():
            tid = rast[..., 3].long()
            z = rast[..., 2]
            sil = _silhouette_edges(pos.detach(), tri, opp, h, w)  # [B, F, 3]
            has_sil = torch.cat([torch.zeros(bsz, 1, dtype=torch.bool, device=rast.device), sil.any(-1)], 1)
            p0, p1, down = _discontinuities(tid, has_sil)
            if p0.numel() == 0:
                return None
            tid_f, z_f = tid.reshape(-1), z.reshape(-1)
            t0, t1 = tid_f[p0], tid_f[p1]
            z0, z1 = z_f[p0], z_f[p1]
            use1 = (t0 == 0) | ((t1 > 0) & ~(z0 < z1))
            face = torch.where(use1, t1, t0) - 1
            view = torch.div(p0, h * w, rounding_mode="floor")
            keep = has_sil.view(-1)[view * (nf + 1) + face + 1]
            p0, p1, down, use1, face, view = (t[keep] for t in (p0, p1, down, use1, face, view))
            if p0.numel() == 0:
                return None
            own = torch.where(use1, p1, p0)
            px = (own % w).to(pos.dtype)
            py = (torch.div(own, w, rounding_mode="floor") % h).to(pos.dtype)
            edge_sil = sil.view(-1, 3)[view * nf + face]  # [P, 3]
        corners = tri[face]  # [P, 3]
        dc, valid = _edge_crossing(pos, view, corners, edge_sil, px, py, down, use1, h, w)
        if not bool(valid.any()):
            return None
        ds = torch.where(use1[valid], -1.0, 1.0).to(dc.dtype)
        alpha = ds * (0.5 - dc[valid].clamp(0.0, 1.0))
        p0, p1 = p0[valid], p1[valid]
        target = torch.where(alpha > 0, p0, p1)
        return p0, p1, target, alpha
