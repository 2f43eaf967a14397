"""The rasterizer interface: nvdiffrast's four operations, so backends are interchangeable.

Semantics shared by every backend (they are nvdiffrast's, so GPU and CPU runs agree):

* `rasterize(pos, tri, (H, W))`: `pos` is OpenGL clip space `[B, V, 4]`. Output
  `rast[B, H, W, 4] = (u, v, z/w, triangle_id + 1)` with all zeros on empty pixels, and
  `rast_db[B, H, W, 4] = (du/dX, du/dY, dv/dX, dv/dY)` in pixel units. The barycentric weights
  are `(u, v, 1 - u - v)` for the triangle's vertices `(0, 1, 2)` (perspective-correct). Row 0
  is the *bottom* image row (NDC y = -1); pixel `(x, y)` has its centre at NDC
  `((x + 0.5) / W * 2 - 1, (y + 0.5) / H * 2 - 1)`. Both windings rasterize; the nearest
  fragment (smallest z/w) wins.
* `interpolate(attr, rast, tri, rast_db, diff_attrs)`: attributes `[B|1, V, C]` or `[V, C]`
  interpolated with the barycentrics; background pixels are 0. With `diff_attrs`, also the
  screen-space derivatives `[B, H, W, 2 * n]` laid out `(dA/dX, dA/dY)` per selected attribute.
* `texture(tex, uv, uv_da, filter_mode, boundary_mode, max_mip_level)`: texel `i` of an
  extent-`N` axis has its centre at `(i + 0.5) / N`; `uv[..., 0]` indexes width (columns),
  `uv[..., 1]` indexes height (memory rows). Mip level from the uv footprint.
* `antialias(color, rast, pos, tri)`: smooths silhouette edges (see each backend for exactly how).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence, Union

import torch

DiffAttrs = Union[Sequence[int], str, None]
FILTER_MODES = ("auto", "nearest", "linear", "linear-mipmap-nearest", "linear-mipmap-linear")
BOUNDARY_MODES = ("wrap", "clamp")


class Rasterizer(ABC):
    """Backend-neutral rasterizer. Subclasses set `name` and implement the four operations."""

    name: str = "abstract"

    @abstractmethod
    def rasterize(self, pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """pos [B,V,4] clip space, tri [F,3] int -> (rast [B,H,W,4], rast_db [B,H,W,4])."""

    @abstractmethod
    def interpolate(self, attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor,
                    rast_db: torch.Tensor | None = None, diff_attrs: DiffAttrs = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """attr [B|1,V,C] or [V,C] -> (out [B,H,W,C], out_da [B,H,W,2*len(diff)] or None)."""

    @abstractmethod
    def texture(self, tex: torch.Tensor, uv: torch.Tensor, uv_da: torch.Tensor | None = None,
                filter_mode: str = "auto", boundary_mode: str = "wrap", max_mip_level: int | None = None
                ) -> torch.Tensor:
        """tex [B|1,Ht,Wt,C], uv [B,H,W,2] (+ uv_da [B,H,W,4]) -> [B,H,W,C]."""

    @abstractmethod
    def antialias(self, color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor
                  ) -> torch.Tensor:
        """Smooth silhouette edges of `color` [B,H,W,C]; differentiable in `color`."""


def diff_attr_indices(diff_attrs: DiffAttrs, channels: int) -> list[int]:
    """Normalize nvdiffrast's `diff_attrs` (None, "all" or a list) to a list of channel indices."""
    if diff_attrs is None:
        return []
    if isinstance(diff_attrs, str):
        if diff_attrs != "all":
            raise ValueError(f"diff_attrs must be None, 'all' or a list of indices, got {diff_attrs!r}")
        return list(range(channels))
    idx = [int(i) for i in diff_attrs]
    bad = [i for i in idx if not 0 <= i < channels]
    if bad:
        raise ValueError(f"diff_attrs {bad} out of range for {channels} attribute channels")
    return idx


def resolve_filter_mode(filter_mode: str, uv_da: torch.Tensor | None, max_mip_level: int | None) -> str:
    """nvdiffrast's rules: 'auto' means trilinear when derivatives exist, else bilinear; mip modes
    need `uv_da` (we have no mip_level_bias); max_mip_level=0 turns mip modes into 'linear'."""
    if filter_mode not in FILTER_MODES:
        raise ValueError(f"unknown filter_mode {filter_mode!r}; expected one of {FILTER_MODES}")
    if filter_mode == "auto":
        filter_mode = "linear-mipmap-linear" if uv_da is not None else "linear"
    if "mipmap" in filter_mode:
        if uv_da is None:
            raise ValueError(f"filter_mode {filter_mode!r} needs uv_da (screen-space uv derivatives)")
        if max_mip_level == 0:
            filter_mode = "linear"
    return filter_mode
