"""Environment maps: Radiance .hdr reading, built-in procedural environments, cubemaps.

Conventions (world +Y up, see docs/architecture.md):

* **Equirectangular** ``[H, W=2H, C]`` (nvdiffrec's latlong convention, so HDRIs face the way they
  do in CasTex): for a unit direction ``d``

      u = atan2(d.x, -d.z) / (2 pi) + 0.5      (column, in [0, 1))
      v = acos(d.y) / pi                       (row, 0 = zenith / top row of the image)

  i.e. the image centre (u = 0.5) looks along -Z, u = 0.75 along +X, u = 0 / 1 along +Z; seen from
  inside the sphere the image is not mirrored. Texel ``(i, j)`` has its centre at
  ``((j + 0.5) / W, (i + 0.5) / H)``.
* **Cubemap** ``[6, R, R, C]``, faces in OpenGL order +X, -X, +Y, -Y, +Z, -Z (as nvdiffrast's
  ``boundary_mode='cube'`` and nvdiffrec). On each face, ``s`` runs along columns and ``t`` along
  rows (row 0 = ``t = -1``), both in ``[-1, 1]``, and the direction is
  ``major + s * s_axis + t * t_axis`` with the axes in ``FACE_AXES`` (the OpenGL sc/tc table,
  e.g. +X: ``(1, -t, -s)``, +Y: ``(s, 1, t)``, +Z: ``(s, -t, 1)``).
* Bilinear cube lookups read 1-texel borders copied from the neighbouring faces
  (`pad_cube_faces`), so filtering is continuous across face seams up to the corner texels
  (there the border is a nearest-ish estimate; the error is a fraction of one texel).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import ConfigError

ENVIRONMENTS: tuple[str, ...] = ("studio", "sky", "overcast")
SKY_SUN_DIRECTION = (0.45, 0.6, 0.4)  # towards the sun of the "sky" environment (not normalized)

# Rows: (major axis, s axis, t axis) per face; direction = major + s * s_axis + t * t_axis.
FACE_AXES = torch.tensor([
    [[1, 0, 0], [0, 0, -1], [0, -1, 0]],   # +X
    [[-1, 0, 0], [0, 0, 1], [0, -1, 0]],   # -X
    [[0, 1, 0], [1, 0, 0], [0, 0, 1]],     # +Y
    [[0, -1, 0], [1, 0, 0], [0, 0, -1]],   # -Y
    [[0, 0, 1], [1, 0, 0], [0, -1, 0]],    # +Z
    [[0, 0, -1], [-1, 0, 0], [0, -1, 0]],  # -Z
], dtype=torch.float32)


# =============================================================================== HDR files
def load_hdr(path: str | Path) -> torch.Tensor:
    """Linear float32 ``[H, W, 3]`` from a Radiance ``.hdr`` (RGBE, flat or new-style RLE) or ``.exr``.

    The .hdr reader is our own small numpy decoder because nothing installed here reads Radiance
    files (Pillow cannot, imageio is not a dependency). .exr needs the optional ``OpenEXR``
    package."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"environment map {p} does not exist")
    if p.suffix.lower() == ".exr":
        return _read_exr(p)
    try:
        return torch.from_numpy(decode_rgbe(p.read_bytes()))
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"{p.name} is not a readable Radiance .hdr file: {exc}") from None


def _read_exr(path: Path) -> torch.Tensor:
    """Read RGB from an OpenEXR file with the optional ``OpenEXR`` package (classic InputFile API)."""
    try:
        import Imath  # type: ignore[import-not-found]
        import OpenEXR  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(f"{path.name}: reading .exr needs the 'OpenEXR' package (pip install OpenEXR); "
                          "or convert the environment to Radiance .hdr") from None
    try:
        exr = OpenEXR.InputFile(str(path))
        window = exr.header()["dataWindow"]
        h, w = window.max.y - window.min.y + 1, window.max.x - window.min.x + 1
        pixel = Imath.PixelType(Imath.PixelType.FLOAT)
        chans = [np.frombuffer(exr.channel(c, pixel), dtype=np.float32).reshape(h, w) for c in "RGB"]
    except Exception as exc:  # noqa: BLE001 - any reader failure is a user-facing config problem
        raise ConfigError(f"{path.name} is not a readable RGB OpenEXR file: {exc}") from None
    return torch.from_numpy(np.stack(chans, -1).copy())


def _parse_header(data: bytes) -> tuple[int, int, bool, bool, int]:
    """(height, width, flip_rows, flip_cols, offset of the pixel data) of a Radiance file."""
    if not data.startswith((b"#?RADIANCE", b"#?RGBE")):
        raise ValueError("missing '#?RADIANCE' signature")
    end = data.find(b"\n\n")
    if end < 0:
        raise ValueError("unterminated header")
    header = data[:end].decode("latin-1")
    fmt = [ln for ln in header.splitlines() if ln.startswith("FORMAT=")]
    if fmt and fmt[-1].strip() != "FORMAT=32-bit_rle_rgbe":
        raise ValueError(f"unsupported {fmt[-1].strip()} (only RGBE)")
    res_end = data.index(b"\n", end + 2)
    parts = data[end + 2:res_end].decode("latin-1").split()
    if len(parts) != 4 or parts[0][1:] != "Y" or parts[2][1:] != "X":
        raise ValueError(f"unsupported resolution line {' '.join(parts)!r} (need '+-Y H +-X W')")
    h, w = int(parts[1]), int(parts[3])
    return h, w, parts[0][0] == "+", parts[2][0] == "-", res_end + 1


def _decode_rle_channel(buf: bytes, pos: int, width: int, out: bytearray) -> int:
    """Decode one channel of a new-style RLE scanline into ``out``; returns the new read position.

    Run byte c > 128: the next byte repeated c - 128 times; c <= 128: c literal bytes follow."""
    while len(out) < width:
        count = buf[pos]
        if count > 128:
            out += bytes((buf[pos + 1],)) * (count - 128)
            pos += 2
        else:
            if count == 0:
                raise ValueError("zero-length run in RLE scanline")
            out += buf[pos + 1:pos + 1 + count]
            pos += 1 + count
    if len(out) != width:
        raise ValueError("RLE run overflows the scanline")
    return pos


def decode_rgbe(data: bytes) -> np.ndarray:
    """Decode a whole Radiance file (bytes) to float32 ``[H, W, 3]``, top row first.

    Supports flat RGBE and new-style per-channel RLE scanlines (what every current writer
    emits); the obsolete pre-1991 RLE is not supported."""
    h, w, flip_rows, flip_cols, pos = _parse_header(data)
    rgbe = np.empty((h, w, 4), dtype=np.uint8)
    for y in range(h):
        head = data[pos:pos + 4]
        if 8 <= w < 32768 and len(head) == 4 and head[0] == 2 and head[1] == 2 and (head[2] << 8 | head[3]) == w:
            pos += 4
            for c in range(4):
                chan = bytearray()
                pos = _decode_rle_channel(data, pos, w, chan)
                rgbe[y, :, c] = np.frombuffer(bytes(chan), dtype=np.uint8)
        else:
            row = data[pos:pos + 4 * w]
            if len(row) != 4 * w:
                raise ValueError("truncated pixel data")
            rgbe[y] = np.frombuffer(row, dtype=np.uint8).reshape(w, 4)
            pos += 4 * w
    # Radiance's colr_color: (mantissa + 0.5) * 2^(e - 136); e = 0 means black.
    e = rgbe[..., 3].astype(np.int32)
    scale = np.where(e > 0, np.ldexp(1.0, e - 136), 0.0).astype(np.float32)
    img = (rgbe[..., :3].astype(np.float32) + 0.5) * scale[..., None]
    if flip_rows:
        img = img[::-1]
    if flip_cols:
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


def save_hdr(path: str | Path, img: np.ndarray | torch.Tensor) -> None:
    """Write a flat (non-RLE) Radiance file, e.g. to export a procedural environment."""
    arr = np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img, dtype=np.float64)
    h, w, _ = arr.shape
    peak = arr.clip(min=0).max(-1)
    mant, expo = np.frexp(peak)
    ok = peak > 1e-32
    rgbe = np.zeros((h, w, 4), dtype=np.uint8)
    scale = np.where(ok, mant * 256.0 / np.where(ok, peak, 1.0), 0.0)
    rgbe[..., :3] = np.clip(arr * scale[..., None], 0, 255).astype(np.uint8)
    rgbe[..., 3] = np.where(ok, expo + 128, 0).astype(np.uint8)
    head = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {h} +X {w}\n".encode()
    Path(path).write_bytes(head + rgbe.tobytes())


# =============================================================================== equirect
def equirect_uv_to_dir(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unit directions [..., 3] for equirect coordinates u, v in [0, 1] (module convention)."""
    phi = (u - 0.5) * 2 * math.pi
    theta = v * math.pi
    sin_t = torch.sin(theta)
    return torch.stack([sin_t * torch.sin(phi), torch.cos(theta), -sin_t * torch.cos(phi)], dim=-1)


def dir_to_equirect_uv(dirs: torch.Tensor) -> torch.Tensor:
    """Equirect (u, v) [..., 2] of directions [..., 3] (need not be unit); u in [0, 1)."""
    d = F.normalize(dirs, dim=-1)
    u = torch.remainder(torch.atan2(d[..., 0], -d[..., 2]) / (2 * math.pi) + 0.5, 1.0)
    v = torch.acos(d[..., 1].clamp(-1, 1)) / math.pi
    return torch.stack([u, v], dim=-1)


def equirect_directions(height: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[H, 2H, 3] unit directions at the equirect texel centres."""
    v = (torch.arange(height, device=device) + 0.5) / height
    u = (torch.arange(2 * height, device=device) + 0.5) / (2 * height)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return equirect_uv_to_dir(uu, vv)


def sample_equirect(img: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup [..., C] of an equirect map [H, W, C] at directions [..., 3].

    Wraps around in u (one column of padding on each side), clamps at the poles."""
    h, w, c = img.shape
    uv = dir_to_equirect_uv(dirs.reshape(-1, 3))
    padded = torch.cat([img[:, -1:], img, img[:, :1]], dim=1).permute(2, 0, 1)[None]
    gx = (uv[:, 0] * w + 1) / (w + 2) * 2 - 1  # +1: the padding column
    gy = uv[:, 1] * 2 - 1
    grid = torch.stack([gx, gy], -1).reshape(1, -1, 1, 2).to(img.dtype)
    out = F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, :, 0].T.reshape(*dirs.shape[:-1], c)


# =============================================================================== procedural
def _smoothstep(edge0: float, edge1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - edge0) / (edge1 - edge0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def _soft_disc(dirs: torch.Tensor, centre: tuple[float, float, float], radius_deg: float, soft_deg: float
               ) -> torch.Tensor:
    """[..., 1] in [0, 1]: 1 inside a cone of ``radius_deg`` around ``centre``, smooth edge of width
    2 * soft_deg (area lights / sun disc that stay anti-aliased at low resolution)."""
    axis = F.normalize(torch.tensor(centre, dtype=dirs.dtype, device=dirs.device), dim=0)
    angle = torch.rad2deg(torch.acos((dirs * axis).sum(-1, keepdim=True).clamp(-1, 1)))
    return 1 - _smoothstep(radius_deg - soft_deg, radius_deg + soft_deg, angle)


def _rgb(values: tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def _studio(d: torch.Tensor) -> torch.Tensor:
    """Neutral photo studio: dim grey floor-to-ceiling gradient, a large key softbox, a weaker
    fill on the other side, a rim light behind and a soft overhead panel."""
    y = d[..., 1:2]
    grey = 0.12 + 0.10 * _smoothstep(-0.3, 0.3, y) + 0.08 * y.clamp_min(0)
    img = grey.expand(*y.shape[:-1], 3) * _rgb((1.0, 1.0, 1.0), d)
    lights = (  # (centre, radius deg, softness deg, radiance)
        ((0.75, 0.55, 0.65), 20.0, 6.0, 4.0),    # key
        ((-0.85, 0.15, 0.45), 28.0, 10.0, 1.2),  # fill
        ((0.1, 0.45, -1.0), 12.0, 4.0, 5.0),     # rim
        ((0.0, 1.0, 0.0), 35.0, 15.0, 0.8),      # overhead panel
    )
    for centre, radius, soft, power in lights:
        img = img + power * _soft_disc(d, centre, radius, soft)
    return img


def _sky(d: torch.Tensor) -> torch.Tensor:
    """Clear sky: blue zenith fading to a pale horizon, brownish-grey ground, a bright sun disc
    (radius 2.5 deg, about as much irradiance as the sky) with a soft aureole."""
    y = d[..., 1:2]
    up = y.clamp_min(0)
    zenith, horizon = _rgb((0.18, 0.35, 0.85), d), _rgb((0.75, 0.85, 1.0), d)
    sky = horizon + (zenith - horizon) * up.pow(0.6)
    ground = _rgb((0.28, 0.25, 0.22), d) * (0.8 + 0.2 * (-y).clamp_min(0))
    img = ground + (sky - ground) * _smoothstep(-0.02, 0.02, y)
    sun = SKY_SUN_DIRECTION
    img = img + 250.0 * _soft_disc(d, sun, 2.5, 0.6) * _rgb((1.0, 0.95, 0.88), d)
    axis = F.normalize(torch.tensor(sun, dtype=d.dtype, device=d.device), dim=0)
    return img + 1.5 * torch.exp(((d * axis).sum(-1, keepdim=True) - 1) * 25.0)


def _overcast(d: torch.Tensor) -> torch.Tensor:
    """CIE standard overcast sky L(theta) = Lz (1 + 2 cos theta) / 3 over a dim grey ground."""
    y = d[..., 1:2]
    sky = 1.0 * (1 + 2 * y.clamp_min(0)) / 3
    img = 0.15 + (sky - 0.15) * _smoothstep(-0.02, 0.02, y)
    return img.expand(*y.shape[:-1], 3).clone()


_PROCEDURAL = {"studio": _studio, "sky": _sky, "overcast": _overcast}


def procedural_radiance(name: str, dirs: torch.Tensor) -> torch.Tensor:
    """Radiance [..., 3] of a built-in environment along unit directions [..., 3]."""
    fn = _PROCEDURAL.get(name)
    if fn is None:
        raise ConfigError(f"unknown environment {name!r}; built-in: {', '.join(ENVIRONMENTS)} (or pass an .hdr file)")
    return fn(dirs)


def procedural_env(name: str, height: int = 256) -> torch.Tensor:
    """Built-in HDR environment as an equirect map [H, 2H, 3] (so nothing has to be downloaded)."""
    return procedural_radiance(name, equirect_directions(height))


# =============================================================================== cubemaps
def cube_directions(res: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
                    ) -> torch.Tensor:
    """[6, R, R, 3] unit directions at the cube texel centres."""
    c = (torch.arange(res, device=device, dtype=dtype) + 0.5) / res * 2 - 1
    return _face_grid_dirs(c, device, dtype)


def _face_grid_dirs(coords: torch.Tensor, device, dtype) -> torch.Tensor:
    """[6, n, n, 3] unit directions for face coordinates ``coords`` [n] along both s and t."""
    t, s = torch.meshgrid(coords, coords, indexing="ij")
    ax = FACE_AXES.to(device=device, dtype=dtype)
    d = ax[:, None, None, 0] + s[None, ..., None] * ax[:, None, None, 1] + t[None, ..., None] * ax[:, None, None, 2]
    return F.normalize(d, dim=-1)


def texel_solid_angles(res: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
                       ) -> torch.Tensor:
    """[6, R, R] exact solid angle of every cube texel (sums to 4 pi)."""
    edges = torch.linspace(-1, 1, res + 1, device=device, dtype=torch.float64)

    def corner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.atan2(x * y, torch.sqrt(x * x + y * y + 1))

    y0, x0 = torch.meshgrid(edges[:-1], edges[:-1], indexing="ij")
    y1, x1 = torch.meshgrid(edges[1:], edges[1:], indexing="ij")
    omega = corner(x1, y1) - corner(x0, y1) - corner(x1, y0) + corner(x0, y0)
    return omega.to(dtype).expand(6, res, res).contiguous()


def cube_face_coords(dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(face [...] long, s [...], t [...]) of directions [..., 3]; s, t in [-1, 1] (see FACE_AXES).

    Differentiable in s and t (the face choice is piecewise constant). Written with ``where``
    instead of gathering per-point axis matrices: this is the hot path of every lookup."""
    x, y, z = dirs.unbind(-1)
    ax, ay, az = x.detach().abs(), y.detach().abs(), z.detach().abs()
    is_x = (ax >= ay) & (ax >= az)
    is_y = ~is_x & (ay >= az)
    neg = torch.where(is_x, x < 0, torch.where(is_y, y < 0, z < 0))
    sign = 1 - 2 * neg.to(dirs.dtype)
    face = torch.where(is_x, 0, torch.where(is_y, 2, 4)) + neg.long()
    ma = torch.where(is_x, x, torch.where(is_y, y, z)).abs().clamp_min(1e-12)
    # +X (-z, -y)  -X (z, -y)  +Y (x, z)  -Y (x, -z)  +Z (x, -y)  -Z (-x, -y)
    s = torch.where(is_x, -z * sign, torch.where(is_y, x, x * sign))
    t = torch.where(is_y, z * sign, -y)
    return face, s / ma, t / ma


def dirs_to_cube_uv(dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(face [...] long, uv [..., 2]) with u along columns, v along rows, both in [0, 1]."""
    face, s, t = cube_face_coords(dirs)
    return face, torch.stack([(s + 1) * 0.5, (t + 1) * 0.5], dim=-1)


def _lookup_clamped(cube: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup [N, C] of cube [6, R, R, C] at dirs [N, 3], clamped at each face's edge."""
    res = cube.shape[1]
    face, s, t = cube_face_coords(dirs)
    x = ((s + 1) * 0.5 * res).clamp(0.5, res - 0.5)
    y = ((t + 1) * 0.5 * res).clamp(0.5, res - 0.5) + face * res
    tall = cube.reshape(6 * res, res, -1).permute(2, 0, 1)[None]
    grid = torch.stack([x / res * 2 - 1, y / (6 * res) * 2 - 1], -1).reshape(1, -1, 1, 2).to(cube.dtype)
    out = F.grid_sample(tall, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, :, 0].T


def pad_cube_faces(cube: torch.Tensor) -> torch.Tensor:
    """[6, R+2, R+2, C]: each face with a 1-texel border resampled from its neighbouring faces."""
    res = cube.shape[1]
    coords = (torch.arange(res + 2, device=cube.device, dtype=cube.dtype) - 0.5) / res * 2 - 1
    dirs = _face_grid_dirs(coords, cube.device, cube.dtype)
    padded = _lookup_clamped(cube, dirs.reshape(-1, 3)).reshape(6, res + 2, res + 2, -1)
    padded[:, 1:-1, 1:-1] = cube
    return padded


class CubeMipAtlas:
    """A list of cubemap levels [6, R_i, R_i, C] packed into one padded texture, so a lookup at a
    per-point (fractional) level is two bilinear taps of a single ``grid_sample`` call.

    Faces of all levels are stacked vertically, each with its 1-texel seam border; a lookup never
    reads outside its own face block."""

    def __init__(self, levels: list[torch.Tensor]):
        self.sizes = [int(lv.shape[1]) for lv in levels]
        width = self.sizes[0] + 2
        blocks, offsets, row = [], [], 0
        for lv in levels:
            padded = pad_cube_faces(lv)
            r2 = padded.shape[1]
            offsets.append([row + f * r2 for f in range(6)])
            row += 6 * r2
            blocks.append(F.pad(padded.reshape(6 * r2, r2, -1), (0, 0, 0, width - r2)))
        self.texture = torch.cat(blocks).permute(2, 0, 1).unsqueeze(0).contiguous()  # [1, C, H, W]
        self._size_t = torch.tensor(self.sizes, dtype=self.texture.dtype, device=self.texture.device)
        self._offset_t = torch.tensor(offsets, dtype=self.texture.dtype, device=self.texture.device)

    @property
    def num_levels(self) -> int:
        return len(self.sizes)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "CubeMipAtlas":
        out = object.__new__(CubeMipAtlas)
        out.sizes = list(self.sizes)
        out.texture = self.texture.to(device=device, dtype=dtype)
        out._size_t = self._size_t.to(device=device, dtype=dtype)
        out._offset_t = self._offset_t.to(device=device, dtype=dtype)
        return out

    def _grid(self, face: torch.Tensor, s: torch.Tensor, t: torch.Tensor, level: torch.Tensor | None
              ) -> torch.Tensor:
        """grid_sample coordinates [N, 2] of face/s/t at integer ``level`` [N] (None: level 0)."""
        h, w = self.texture.shape[-2:]
        if level is None:
            res = float(self.sizes[0])
            row0 = self._offset_t[0][face]
        else:
            res = self._size_t[level]
            row0 = self._offset_t.reshape(-1)[level * 6 + face]
        # Padded-texel units: the face interior spans [1, res + 1]; clamp only guards rounding.
        x = ((s + 1) * (0.5 * res) + 1).clamp(max=w).clamp_min(1.0)
        y = ((t + 1) * (0.5 * res)).clamp(0.0, h) + 1 + row0
        return torch.stack([x * (2.0 / w) - 1, y * (2.0 / h) - 1], dim=-1)

    def _sample(self, grid: torch.Tensor) -> torch.Tensor:
        out = F.grid_sample(self.texture, grid.reshape(1, -1, 1, 2), mode="bilinear", padding_mode="border",
                            align_corners=False)
        return out[0, :, :, 0].T  # [N, C]

    def lookup(self, dirs: torch.Tensor, level: torch.Tensor | float | None = None) -> torch.Tensor:
        """Bilinear (level None) or trilinear (fractional level [...]) lookup -> [..., C].

        Differentiable w.r.t. ``dirs`` and ``level``; levels are clamped to [0, L-1]."""
        shape = dirs.shape[:-1]
        d = dirs.reshape(-1, 3).to(self.texture.dtype)
        face, s, t = cube_face_coords(d)
        if level is None or self.num_levels == 1:
            return self._sample(self._grid(face, s, t, None)).reshape(*shape, -1)
        level = torch.as_tensor(level, dtype=d.dtype, device=d.device).expand(shape).reshape(-1)
        level = level.clamp(0, self.num_levels - 1)
        lo = level.detach().floor().long().clamp(max=self.num_levels - 2)
        frac = (level - lo).unsqueeze(-1)
        taps = self._sample(torch.cat([self._grid(face, s, t, lo), self._grid(face, s, t, lo + 1)]))
        n = d.shape[0]
        return (taps[:n] + (taps[n:] - taps[:n]) * frac).reshape(*shape, -1)


def cubemap_lookup(cube: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup [..., C] of cube [6, R, R, C] at directions [..., 3] (need not be unit).

    Seams are filtered across faces via `pad_cube_faces`. For repeated lookups into the same
    cube, build a `CubeMipAtlas` once instead (this pads on every call)."""
    return CubeMipAtlas([cube]).lookup(dirs)


def _supersample_faces(radiance_fn, res: int, ss: int, device, dtype) -> torch.Tensor:
    """[6, res, res, C]: ``radiance_fn(dirs)`` averaged over ss x ss sub-texel directions, one face
    at a time to bound memory."""
    fine = res * ss
    c = (torch.arange(fine, device=device, dtype=dtype) + 0.5) / fine * 2 - 1
    faces = []
    for f in range(6):
        t, s = torch.meshgrid(c, c, indexing="ij")
        ax = FACE_AXES[f].to(device=device, dtype=dtype)
        d = F.normalize(ax[0] + s[..., None] * ax[1] + t[..., None] * ax[2], dim=-1)
        vals = radiance_fn(d)  # [fine, fine, C]
        faces.append(F.avg_pool2d(vals.permute(2, 0, 1)[None], ss)[0].permute(1, 2, 0))
    return torch.stack(faces)


def equirect_to_cubemap(img: torch.Tensor, res: int) -> torch.Tensor:
    """[6, res, res, C] cubemap resampled from an equirect map [H, W, C].

    Each cube texel averages ss x ss bilinear samples, ss ~ equirect texels per cube texel (at
    least 2, at most 8 / 2048 px per face), so a large HDRI's small bright sun is not aliased."""
    w = img.shape[1]
    ss = int(min(max(2, math.ceil(w / (4 * res))), 8, max(1, 2048 // res)))
    return _supersample_faces(lambda d: sample_equirect(img, d), res, ss, img.device, img.dtype)


def procedural_cubemap(name: str, res: int, supersample: int = 2, device: torch.device | str | None = None
                       ) -> torch.Tensor:
    """[6, res, res, 3] built-in environment evaluated directly on the cube (no equirect detour)."""
    procedural_radiance(name, torch.zeros(1, 3).add_(1))  # validate the name before the heavy work
    return _supersample_faces(lambda d: procedural_radiance(name, d), res, supersample, device, torch.float32)
