"""Rasterizer backends behind one interface (see `core.raster.base.Rasterizer`).

`get_rasterizer("auto")` picks nvdiffrast on CUDA devices where `nvdiffrast.torch` imports, and
the pure-PyTorch backend otherwise, so the same code runs in CI and on GPUs.
"""

from __future__ import annotations

import torch

from core.errors import ConfigError
from core.raster.base import Rasterizer

BACKENDS = ("auto", "torch", "nvdiffrast")


def nvdiffrast_available() -> bool:
    """True when `nvdiffrast.torch` imports (its CUDA plugin is only built on first use)."""
    try:
        import nvdiffrast.torch  # noqa: F401
    except Exception:  # ImportError, or OSError / RuntimeError from a broken CUDA install
        return False
    return True


def _device(device: torch.device | str | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def get_rasterizer(name: str = "auto", device: torch.device | str | None = None) -> Rasterizer:
    """The rasterizer `name` ("auto", "torch" or "nvdiffrast") for `device` (default: CUDA when
    available, else CPU). Raises ConfigError for unknown names and for nvdiffrast without CUDA
    or without the package."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown rasterizer {name!r}; choose one of: {', '.join(BACKENDS)}")
    dev = _device(device)
    if name == "auto":
        name = "nvdiffrast" if dev.type == "cuda" and nvdiffrast_available() else "torch"
    if name == "nvdiffrast":
        if dev.type != "cuda":
            raise ConfigError(f"the nvdiffrast rasterizer needs a CUDA device (got {dev}); "
                              "use the 'torch' rasterizer instead")
        if not nvdiffrast_available():
            raise ConfigError("nvdiffrast is not installed (CUDA only, NVIDIA Source Code License, "
                              "non-commercial): install the 'gpu' extra or use the 'torch' rasterizer")
        from core.raster.nvdiffrast_backend import NvdiffrastRasterizer

        return NvdiffrastRasterizer(dev)
    from core.raster.torch_backend import TorchRasterizer

    return TorchRasterizer(dev)


__all__ = ["BACKENDS", "Rasterizer", "get_rasterizer", "nvdiffrast_available"]
