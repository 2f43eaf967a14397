"""nvdiffrast backend (CUDA only): a thin adapter from our interface to `nvdiffrast.torch`.

nvdiffrast is imported inside the constructor: it is an optional, non-commercial (NVIDIA Source
Code License) extra and cannot be used without CUDA. Its ops want contiguous float32 tensors and
int32 triangles on the GPU; the adapter casts once per call and otherwise passes arguments
through, so semantics are nvdiffrast's own (which the torch backend mirrors).
"""

from __future__ import annotations

import torch

from core.raster.base import DiffAttrs, Rasterizer, diff_attr_indices, resolve_filter_mode


class NvdiffrastRasterizer(Rasterizer):
    """`rasterize` / `interpolate` / `texture` / `antialias` of nvdiffrast on one CUDA device."""

    name = "nvdiffrast"

    def __init__(self, device: torch.device | str = "cuda") -> None:
        import nvdiffrast.torch as dr  # lazy on purpose: CUDA-only optional dependency

        self._dr = dr
        self.device = torch.device(device)
        self._ctx = dr.RasterizeCudaContext(device=self.device)
        self._topology: tuple[torch.Tensor, object] | None = None

    @staticmethod
    def _tri(tri: torch.Tensor) -> torch.Tensor:
        return tri.to(torch.int32).contiguous()

    def rasterize(self, pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        if pos.dim() == 2:  # our convenience: one view (nvdiffrast would treat 2-D as range mode)
            pos = pos.unsqueeze(0)
        return self._dr.rasterize(self._ctx, pos.float().contiguous(), self._tri(tri),
                                  resolution=(int(resolution[0]), int(resolution[1])))

    def interpolate(self, attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor,
                    rast_db: torch.Tensor | None = None, diff_attrs: DiffAttrs = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if attr.dim() == 2:
            attr = attr.unsqueeze(0)  # broadcast over the batch (nvdiffrast instanced mode)
        idx = diff_attr_indices(diff_attrs, attr.shape[-1])
        if idx and rast_db is None:
            raise ValueError("diff_attrs needs rast_db (the second output of rasterize)")
        out, out_da = self._dr.interpolate(attr.float().contiguous(), rast.contiguous(), self._tri(tri),
                                           rast_db=rast_db.contiguous() if idx else None,
                                           diff_attrs=(diff_attrs if diff_attrs == "all" else idx) or None)
        return out, (out_da if idx else None)

    def texture(self, tex: torch.Tensor, uv: torch.Tensor, uv_da: torch.Tensor | None = None,
                filter_mode: str = "auto", boundary_mode: str = "wrap", max_mip_level: int | None = None
                ) -> torch.Tensor:
        mode = resolve_filter_mode(filter_mode, uv_da, max_mip_level)
        return self._dr.texture(tex.float().contiguous(), uv.float().contiguous(),
                                uv_da=uv_da.float().contiguous() if "mipmap" in mode else None,
                                filter_mode=mode, boundary_mode=boundary_mode, max_mip_level=max_mip_level)

    def antialias(self, color: torch.Tensor, rast: torch.Tensor, pos: torch.Tensor, tri: torch.Tensor
                  ) -> torch.Tensor:
        if pos.dim() == 2:
            pos = pos.unsqueeze(0)
        tri32 = self._tri(tri)
        return self._dr.antialias(color.contiguous(), rast.contiguous(), pos.float().contiguous(), tri32,
                                  topology_hash=self._topology_hash(tri32))

    def _topology_hash(self, tri32: torch.Tensor):
        """nvdiffrast's edge hash, rebuilt only when the triangle tensor changes."""
        cached = self._topology
        if cached is None or cached[0].shape != tri32.shape or not torch.equal(cached[0], tri32):
            self._topology = cached = (tri32.clone(), self._dr.antialias_construct_topology_hash(tri32))
        return cached[1]
