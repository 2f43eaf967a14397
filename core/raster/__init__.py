"""Rasterizer backends behind one interface (see base.Rasterizer).

`get_rasterizer("auto")` picks nvdiffrast on CUDA devices when it is installed and the pure
PyTorch backend otherwise, so the same code runs in CI and on GPUs.
"""

from __future__ import annotations

import importlib.util

import torch

from core.errors import ConfigError
from core.raster.base import Rasterizer

BACKENDS = ("auto", "torch", "nvdiffrast")


def nvdiffrast_available() -> bool:
    return importlib.util.find_spec("nvdiffrast") is not None


def get_rasterizer(name: str = "auto", device: torch.device | str | None = None) -> Rasterizer:
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in BACKENDS:
        raise ConfigError(f"unknown rasterizer {name!r}; choose one of: {', '.join(BACKENDS)}")
    if name == "auto":
        name = "nvdiffrast" if dev.type == "cuda" and nvdiffrast_available() else "torch"
    if name == "nvdiffrast":
        if dev.type != "cuda":
            raise ConfigError("the nvdiffrast rasterizer needs a CUDA device; use --rasterizer torch on CPU")
        if not nvdiffrast_available():
            raise ConfigError("nvdiffrast is not installed: pip install 'castex[gpu]' (CUDA only, "
                              "NVIDIA Source Code License) or use --rasterizer torch")
        from core.raster.nvdiffrast_backend import NvdiffrastRasterizer

        return NvdiffrastRasterizer(dev)
    from core.raster.torch_backend import TorchRasterizer

    return TorchRasterizer(dev)


__all__ = ["Rasterizer", "get_rasterizer", "nvdiffrast_available", "BACKENDS"]
