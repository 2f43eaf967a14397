"""nvdiffrast backend (CUDA only). Imported lazily: nvdiffrast is an optional, non-commercial
(NVIDIA Source Code License) extra and cannot even be imported on machines without CUDA."""

from __future__ import annotations

import torch

from core.raster.base import DiffAttrs, Rasterizer


class NvdiffrastRasterizer(Rasterizer):
    name = "nvdiffrast"

    def __init__(self, device: torch.device | str = "cuda") -> None:
        import nvdiffrast.torch as dr  # lazy on purpose

        self._dr = dr
        self.device = torch.device(device)
        self._ctx = dr.RasterizeCudaContext(device=self.device)

    def rasterize(self, pos, tri, resolution):
        return self._dr.rasterize(self._ctx, pos.float().contiguous(), tri.to(torch.int32).contiguous(),
                                  resolution=tuple(int(r) for r in resolution))

    def interpolate(self, attr, rast, tri, rast_db=None, diff_attrs: DiffAttrs = None):
        if attr.dim() == 2:
            attr = attr.unsqueeze(0)
        out, out_da = self._dr.interpolate(attr.float().contiguous(), rast, tri.to(torch.int32).contiguous(),
                                           rast_db=rast_db, diff_attrs=diff_attrs)
        return out, (out_da if diff_attrs is not None else None)

    def texture(self, tex, uv, uv_da=None, filter_mode="auto", boundary_mode="wrap", max_mip_level=None):
        return self._dr.texture(tex.contiguous(), uv.contiguous(),
                                uv_da=uv_da.contiguous() if uv_da is not None else None,
                                filter_mode=filter_mode, boundary_mode=boundary_mode, max_mip_level=max_mip_level)

    def antialias(self, color, rast, pos, tri):
        return self._dr.antialias(color.contiguous(), rast, pos.float().contiguous(), tri.to(torch.int32).contiguous())
