"""Environment maps: Radiance .hdr reading, built-in procedural skies/studios, cubemaps.

Equirectangular convention: +Y up; column u = atan2(d.x, d.z) / 2pi (mod 1), row v = acos(d.y) / pi
(row 0 = zenith). Cube faces in OpenGL order +X, -X, +Y, -Y, +Z, -Z; on each face (s, t) in
[-1, 1] with s along columns and t along rows (row 0 = top), see `_FACE_AXES`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import ConfigError

ENVIRONMENTS = ("studio", "sky", "overcast")

# direction = major * sign_axis + s * s_axis + t * t_axis for each face (OpenGL cube-map layout).
_FACE_AXES = torch.tensor([
    [[1, 0, 0], [0, 0, -1], [0, -1, 0]],   # +X
    [[-1, 0, 0], [0, 0, 1], [0, -1, 0]],   # -X
    [[0, 1, 0], [1, 0, 0], [0, 0, 1]],     # +Y
    [[0, -1, 0], [1, 0, 0], [0, 0, -1]],   # -Y
    [[0, 0, 1], [1, 0, 0], [0, -1, 0]],    # +Z
    [[0, 0, -1], [-1, 0, 0], [0, -1, 0]],  # -Z
], dtype=torch.float32)


# ---------------------------------------------------------------------------- HDR files
def load_hdr(path: str | Path) -> torch.Tensor:
    """Linear float [H,W,3] from a Radiance .hdr (RGBE, flat or RLE scanlines).

    Hand-written: Pillow cannot read .hdr and no installed dependency does. OpenEXR needs the
    optional `OpenEXR` package (not a dependency)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"environment map {p} does not exist")
    if p.suffix.lower() == ".exr":
        raise ConfigError(f"{p.name}: .exr environments need the OpenEXR package; convert to .hdr instead")
    data = p.read_bytes()
    try:
        return torch.from_numpy(_decode_rgbe(data))
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"{p.name} is not a readable Radiance .hdr file: {exc}") from None


def _decode_rgbe(data: bytes) -> np.ndarray:
    if not (data.startswith(b"#?RADIANCE") or data.startswith(b"#?RGBE")):
        raise ValueError("missing #?RADIANCE header")
    end = data.index(b"\n\n") + 2
    res_end = data.index(b"\n", end)
    m = re.match(rb"-Y (\d+) \+X (\d+)", data[end:res_end])
    if not m:
        raise ValueError("only the standard '-Y H +X W' orientation is supported")
    h, w = int(m.group(1)), int(m.group(2))
    buf = np.frombuffer(data, dtype=np.uint8, offset=res_end + 1)
    rgbe = np.empty((h, w, 4), dtype=np.uint8)
    pos = 0
    for y in range(h):
        if 8 <= w < 32768 and buf[pos] == 2 and buf[pos + 1] == 2 and (buf[pos + 2] << 8 | buf[pos + 3]) == w:
            pos += 4
            for c in range(4):
                x = 0
                while x < w:
                    count = int(buf[pos])
                    pos += 1
                    if count > 128:
                        count -= 128
                        rgbe[y, x:x + count, c] = buf[pos]
                        pos += 1
                    else:
                        rgbe[y, x:x + count, c] = buf[pos:pos + count]
                        pos += count
                    x += count
        else:
            rgbe[y] = buf[pos:pos + 4 * w].reshape(w, 4)
            pos += 4 * w
    e = rgbe[..., 3].astype(np.int32)
    scale = np.where(e > 0, np.ldexp(1.0, e - 136), 0.0).astype(np.float32)
    return rgbe[..., :3].astype(np.float32) * scale[..., None]


def save_hdr(path: str | Path, img: np.ndarray) -> None:
    """Flat (non-RLE) RGBE writer, for tests and for exporting procedural environments."""
    img = np.asarray(img, dtype=np.float32)
    h, w, _ = img.shape
    mx = img.max(-1)
    mant, ex = np.frexp(mx)
    scale = np.where(mx > 1e-32, mant * 256.0 / np.maximum(mx, 1e-32), 0.0)
    rgbe = np.zeros((h, w, 4), dtype=np.uint8)
    rgbe[..., :3] = np.clip(img * scale[..., None], 0, 255).astype(np.uint8)
    rgbe[..., 3] = np.where(mx > 1e-32, ex + 128, 0).astype(np.uint8)
    Path(path).write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {h} +X {w}\n".encode() + rgbe.tobytes())


# ---------------------------------------------------------------------------- directions
def equirect_directions(height: int) -> torch.Tensor:
    """[H,2H,3] unit directions at equirect texel centres."""
    v = (torch.arange(height) + 0.5) / height
    u = (torch.arange(2 * height) + 0.5) / (2 * height)
    theta, phi = torch.meshgrid(v * math.pi, u * 2 * math.pi, indexing="ij")
    return torch.stack([torch.sin(theta) * torch.sin(phi), torch.cos(theta), torch.sin(theta) * torch.cos(phi)], -1)


def sample_equirect(img: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of an equirect map [H,W,C] at directions [...,3] (wraps in u)."""
    d = F.normalize(dirs, dim=-1)
    u = torch.remainder(torch.atan2(d[..., 0], d[..., 2]) / (2 * math.pi), 1.0)
    v = torch.acos(d[..., 1].clamp(-1, 1)) / math.pi
    h, w, c = img.shape
    # Pad one column on each side so the seam at u = 0/1 interpolates across.
    padded = torch.cat([img[:, -1:], img, img[:, :1]], dim=1).permute(2, 0, 1)[None]
    gx = (u * w + 1) / (w + 2) * 2 - 1
    grid = torch.stack([gx, v * 2 - 1], -1).reshape(1, -1, 1, 2)
    out = F.grid_sample(padded, grid.to(img.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, :, 0].T.reshape(*dirs.shape[:-1], c)


def cube_directions(res: int) -> torch.Tensor:
    """[6,R,R,3] unit directions at cube texel centres."""
    c = (torch.arange(res) + 0.5) / res * 2 - 1
    t, s = torch.meshgrid(c, c, indexing="ij")
    ax = _FACE_AXES
    d = ax[:, None, None, 0] + s[None, ..., None] * ax[:, None, None, 1] + t[None, ..., None] * ax[:, None, None, 2]
    return F.normalize(d, dim=-1)


def equirect_to_cubemap(img: torch.Tensor, res: int) -> torch.Tensor:
    """[6,res,res,C] cubemap resampled from an equirect map (supersampled 2x2 per texel)."""
    fine = sample_equirect(img, cube_directions(2 * res))
    return F.avg_pool2d(fine.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)


def cubemap_lookup(cube: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup [...,C] of cube [6,R,R,C] at directions [...,3]; clamped at face edges."""
    shape = dirs.shape[:-1]
    d = dirs.reshape(-1, 3)
    ad = d.abs()
    axis = ad.argmax(-1)
    sign_neg = torch.gather(d, 1, axis[:, None]).squeeze(1) < 0
    face = axis * 2 + sign_neg.long()
    ax = _FACE_AXES.to(d)[face]  # [N,3,3]
    major = (d * ax[:, 0]).sum(-1).clamp_min(1e-12)
    s = (d * ax[:, 1]).sum(-1) / major
    t = (d * ax[:, 2]).sum(-1) / major
    r = cube.shape[1]
    x = ((s + 1) * 0.5 * r).clamp(0.5, r - 0.5)
    y = ((t + 1) * 0.5 * r).clamp(0.5, r - 0.5) + face * r
    tall = cube.reshape(6 * r, r, -1).permute(2, 0, 1)[None]  # faces stacked vertically
    grid = torch.stack([x / r * 2 - 1, y / (6 * r) * 2 - 1], -1).reshape(1, -1, 1, 2)
    out = F.grid_sample(tall, grid.to(cube.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, :, 0].T.reshape(*shape, cube.shape[-1])


# ---------------------------------------------------------------------------- procedural
def procedural_env(name: str, height: int = 128) -> torch.Tensor:
    """Built-in HDR environments [H,2H,3] so nothing has to be downloaded."""
    d = equirect_directions(height)
    y = d[..., 1:2]
    if name == "studio":
        base = 0.25 + 0.15 * y.clamp_min(0)  # dim grey, brighter above
        img = base.expand(*y.shape[:-1], 3).clone()
        for direction, power, width in (((0.6, 0.55, 0.6), 9.0, 0.15), ((-0.7, 0.3, 0.5), 3.0, 0.25),
                                        ((0.0, 0.5, -1.0), 5.0, 0.2)):
            axis = F.normalize(torch.tensor(direction), dim=0)
            cosang = (d * axis).sum(-1, keepdim=True)
            img = img + power * torch.exp((cosang - 1) / width**2 * 0.5)
        return img
    if name == "sky":
        sky = torch.tensor([0.35, 0.55, 1.0]) * (0.6 + 0.8 * (1 - y.clamp_min(0)))
        ground = torch.tensor([0.25, 0.22, 0.18]).expand_as(sky)
        img = torch.where(y > 0, sky, ground)
        sun = F.normalize(torch.tensor([0.5, 0.6, 0.4]), dim=0)
        cosang = (d * sun).sum(-1, keepdim=True)
        return img + 60.0 * (cosang > math.cos(math.radians(2.5))).float() + 2.0 * torch.exp((cosang - 1) * 20)
    if name == "overcast":
        return (0.4 + 0.6 * y.clamp_min(0) + 0.1 * y.clamp_max(0)).expand(*y.shape[:-1], 3).clone()
    raise ConfigError(f"unknown environment {name!r}; built-in: {', '.join(ENVIRONMENTS)} (or pass an .hdr file)")
