"""Texture tensors -> 8-bit images and PNG files, with the channel semantics of docs/architecture.md.

Every function here returns plain ``uint8`` numpy arrays (row 0 = top row of the image, exactly as
the ``TextureSet`` stores it: no flip), so the GLB, the OBJ bundle and the loose PNGs are all made
from the same bytes. Encoding to PNG is a separate step (`encode_png` / `save_png`) through PIL.

The linear->sRGB transfer function is a private copy: ``core/shading.py`` is being written in
parallel and export must not depend on its timing. Both implement the IEC 61966-2-1 piecewise
curve, so they agree bit for bit after 8-bit quantization.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from core.errors import NonFiniteError

ArrayLike = Union[torch.Tensor, np.ndarray]

# Channel counts PNG export accepts (grey, RGB, RGBA); anything else is a caller bug.
_PNG_CHANNELS = (1, 3, 4)


def _as_float_array(x: ArrayLike, name: str) -> np.ndarray:
    """Detached float32 numpy copy; raises NonFiniteError so no export path can write NaN texels
    (PIL would silently turn them into arbitrary bytes)."""
    if isinstance(x, torch.Tensor):
        arr = x.detach().to("cpu", torch.float32).numpy()
    else:
        arr = np.asarray(x, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise NonFiniteError(f"{name} contains NaN or inf values; refusing to export it")
    return arr


def _require_hwc(arr: np.ndarray, channels: int, name: str) -> np.ndarray:
    """Accept [H,W,C] (or [H,W] when C == 1) so shape mistakes fail loudly instead of producing
    a transposed or striped texture."""
    if channels == 1 and arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] != channels:
        raise ValueError(f"{name} must have shape [H, W, {channels}], got {list(arr.shape)}")
    return arr


def quantize_unit(x: np.ndarray) -> np.ndarray:
    """[0,1] floats -> uint8 with round-half-up, so 0.5 -> 128 on every platform (np.round's
    half-to-even would also give 128 here, but floor(x+0.5) states the intent)."""
    return np.floor(np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 sRGB encoding of linear values in [0,1] (the curve viewers undo on load)."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """Inverse of `_linear_to_srgb`; used by tests and by callers that read PNGs back."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4))


def albedo_png(albedo: ArrayLike) -> np.ndarray:
    """Linear albedo [H,W,3] -> sRGB uint8 [H,W,3]: glTF baseColorTexture and OBJ map_Kd are both
    defined as sRGB-encoded, so writing linear values would look washed out."""
    arr = _require_hwc(_as_float_array(albedo, "albedo"), 3, "albedo")
    return quantize_unit(_linear_to_srgb(arr))


def gray_png(channel: ArrayLike, name: str = "channel") -> np.ndarray:
    """A linear scalar map [H,W,1] or [H,W] -> uint8 [H,W] (no transfer curve: roughness and
    metalness are data, not colour)."""
    arr = _require_hwc(_as_float_array(channel, name), 1, name)
    return quantize_unit(arr[..., 0])


def orm_png(roughness: ArrayLike, metalness: ArrayLike) -> np.ndarray:
    """Pack roughness/metalness into glTF's metallicRoughnessTexture layout, uint8 [H,W,3]:
    R = 255 (occlusion 1: we do not bake AO), G = roughness, B = metalness, all linear."""
    g = gray_png(roughness, "roughness")
    b = gray_png(metalness, "metalness")
    if g.shape != b.shape:
        raise ValueError(f"roughness {g.shape} and metalness {b.shape} differ in size")
    r = np.full_like(g, 255)
    return np.stack([r, g, b], axis=-1)


def normal_png(normal: ArrayLike) -> np.ndarray:
    """Tangent-space normal [H,W,3] -> uint8 [H,W,3] as n*0.5+0.5 (OpenGL/glTF +Y convention).

    Re-normalized first: optimizer steps leave texels slightly off unit length, and viewers assume
    unit vectors. A zero vector (never produced by `TextureSet.project_`) maps to the flat normal.
    """
    arr = _require_hwc(_as_float_array(normal, "normal"), 3, "normal")
    length = np.linalg.norm(arr, axis=-1, keepdims=True)
    flat = np.array([0.0, 0.0, 1.0], dtype=np.float32)
    unit = np.where(length > 1e-8, arr / np.maximum(length, 1e-8), flat)
    return quantize_unit(unit * 0.5 + 0.5)


def _to_pil(array: np.ndarray) -> Image.Image:
    """uint8 [H,W], [H,W,1], [H,W,3] or [H,W,4] -> PIL image in the matching mode."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise TypeError(f"PNG export expects uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in _PNG_CHANNELS:
        raise ValueError(f"cannot write an image of shape {list(arr.shape)} as PNG")
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    # PIL infers L / RGB / RGBA from the uint8 shape (its `mode=` argument is deprecated).
    return Image.fromarray(np.ascontiguousarray(arr))


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image, rows written as stored (row 0 = top). No metadata chunks, so
    the same pixels always give the same bytes (stable sha256 in metadata.json)."""
    buf = io.BytesIO()
    _to_pil(array).save(buf, format="PNG")
    return buf.getvalue()


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 image as PNG (see `encode_png`) and return the path."""
    path = Path(path)
    path.write_bytes(encode_png(array))
    return path
