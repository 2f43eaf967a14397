"""The rasterizer interface: the four nvdiffrast operations, so backends are interchangeable.

Semantics follow nvdiffrast: OpenGL clip space in, rast = (u, v, z/w, triangle_id + 1) with
0 for empty pixels, row 0 = bottom image row, barycentric weights (u, v, 1-u-v) for the
triangle's vertices (0, 1, 2); texel i of a texture of size N has its centre at (i + 0.5) / N.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch

DiffAttrs = Sequence[int] | str | None


class Rasterizer(ABC):
    name: str = "abstract"

    @abstractmethod
    def rasterize(self, pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """pos [B,V,4] clip space, tri [F,3] -> (rast [B,H,W,4], rast_db [B,H,W,4])."""

    @abstractmethod
    def interpolate(self, attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor,
                    rast_db: torch.Tensor | None = None, diff_attrs: DiffAttrs = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """attr [B|1,V,C] or [V,C] -> (out [B,H,W,C], out_da [B,H,W,2*len(diff_attrs)] or None)."""

    @abstractmethod
    def texture(self, tex: torch.Tensor, uv: torch.Tensor, uv_da: torch.Tensor | None = None,
                filter_mode: str = "auto", boundary_mode: str = "wrap", max_mip_level: int | None = None
                ) -> torch.Tensor:
        """tex [B|1,Ht,Wt,C], uv [B,H,W,2] (+ uv_da [B,H,W,4]) -> [B,H,W,C]."""

    @abstractmethod
    def antialias(self, color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor
                  ) -> torch.Tensor:
        """Smooth silhouette edges of `color` [B,H,W,C]."""


def diff_attr_indices(diff_attrs: DiffAttrs, channels: int) -> list[int]:
    if diff_attrs is None:
        return []
    if diff_attrs == "all":
        return list(range(channels))
    return [int(i) for i in diff_attrs]
