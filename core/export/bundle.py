"""The per-asset texture bundle: PNG maps, GLB, OBJ+MTL, preview and metadata.json, written
all-or-nothing.

Atomicity. Everything is written into a hidden sibling directory (`.<name>.tmp-<random>`, same
parent, hence same filesystem), fsynced, and only then renamed to `out_dir`. A crash or an
exception at any point before that rename leaves `out_dir` untouched (the temp directory is
removed on exceptions; after a hard kill a `.tmp-` sibling may remain and is safe to delete).

Replacing an existing bundle takes two renames, because POSIX has no portable atomic directory
swap: old `out_dir` -> `.<name>.old-<random>`, then temp -> `out_dir`, then the old copy is
deleted. A crash between the two renames leaves no directory under the final name (the complete
old bundle sits in `.old-`, the complete new one in `.tmp-`), never a half-written one. If the
second rename fails, the old bundle is moved back. To avoid deleting a user's unrelated folder,
an existing `out_dir` is only replaced when it is empty or holds a `metadata.json`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.durable import fsync_dir
from core.errors import NonFiniteError
from core.export.gltf import write_glb
from core.export.images import albedo_png, encode_png, gray_png, normal_png, orm_png
from core.export.obj import ObjTextures, write_obj
from core.material import TextureSet
from core.mesh import Mesh

METADATA_NAME = "metadata.json"


def _check_textures(textures: TextureSet) -> None:
    """Refuse NaN/inf maps before touching the filesystem: a bundle is never written from a
    diverged optimization."""
    for name, t in zip(("albedo", "roughness", "metalness", "normal"), textures.tensors()):
        if not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"texture '{name}' contains NaN or inf; nothing was exported")


def _jsonable(value: Any, path: str, nonfinite: list[str]) -> Any:
    """Strict-JSON copy of `value`: numpy/torch scalars and arrays become Python numbers and
    lists, Paths become strings, and NaN/inf become null with their key path recorded (a NaN
    in a metrics field should not cost us a valid texture export, nor be hidden)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{path}.{k}" if path else str(k), nonfinite)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{path}[{i}]", nonfinite) for i, v in enumerate(value)]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), path, nonfinite)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        nonfinite.append(path)
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"metadata field '{path}' has non-JSON type {type(value).__name__}")


def _prepare_metadata(metadata: dict) -> dict:
    """Validate/convert the caller's metadata up front, so a bad field fails before any file is
    written; `files` is ours to fill in."""
    if "files" in metadata:
        raise ValueError("metadata must not contain 'files': write_bundle fills it in")
    nonfinite: list[str] = []
    clean = _jsonable(dict(metadata), "", nonfinite)
    if nonfinite:
        clean["nonfinite_fields"] = nonfinite
    return clean


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def make_preview_grid(images: list[np.ndarray], cols: int, *, background: int = 255) -> np.ndarray:
    """Tile equally sized uint8 [H,W,3] views into one [rows*H, cols*W, 3] image, row-major;
    unused cells are filled with `background` (white, like the render background)."""
    if not images:
        raise ValueError("make_preview_grid needs at least one image")
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    first = np.asarray(images[0])
    for i, im in enumerate(images):
        im = np.asarray(im)
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3 or im.shape != first.shape:
            raise ValueError(
                f"preview image {i} must be uint8 {list(first.shape)} like image 0, "
                f"got {im.dtype} {list(im.shape)}"
            )
    cols = min(cols, len(images))
    rows = -(-len(images) // cols)
    h, w, _ = first.shape
    grid = np.full((rows * h, cols * w, 3), background, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    return grid


def _texture_pngs(textures: TextureSet) -> dict[str, bytes]:
    """Encode every map once; the loose PNGs and the GLB embed the very same bytes."""
    return {
        "albedo.png": encode_png(albedo_png(textures.albedo)),
        "orm.png": encode_png(orm_png(textures.roughness, textures.metalness)),
        "normal.png": encode_png(normal_png(textures.normal)),
        # Separate grayscale maps for OBJ readers (Blender links map_Pr/map_Pm images directly).
        "roughness.png": encode_png(gray_png(textures.roughness, "roughness")),
        "metallic.png": encode_png(gray_png(textures.metalness, "metalness")),
    }


def _write_contents(tmp: Path, mesh: Mesh, textures: TextureSet, preview: np.ndarray | None,
                    metadata: dict) -> list[str]:
    """Write every bundle file into `tmp`; returns the file names, metadata.json last."""
    pngs = _texture_pngs(textures)
    for name, data in pngs.items():
        (tmp / name).write_bytes(data)
    write_glb(tmp / "model.glb", mesh, pngs["albedo.png"], pngs["orm.png"], pngs["normal.png"])
    write_obj(tmp, mesh, "model", textures=ObjTextures())
    names = [*pngs, "model.glb", "model.obj", "model.mtl"]
    if preview is not None:
        (tmp / "preview.png").write_bytes(encode_png(preview))
        names.append("preview.png")
    files = {n: {"bytes": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)} for n in names}
    text = json.dumps({**metadata, "files": files}, indent=2, allow_nan=False, sort_keys=False)
    (tmp / METADATA_NAME).write_text(text + "\n", encoding="utf-8")
    return [*names, METADATA_NAME]


def _check_preview(preview: np.ndarray) -> np.ndarray:
    arr = np.asarray(preview)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"preview must be uint8 [H,W,3], got {arr.dtype} {list(arr.shape)}")
    return arr


def _replaceable(out_dir: Path) -> bool:
    """Only an empty directory or a previous bundle may be replaced (never a user's folder)."""
    return out_dir.is_dir() and (not any(out_dir.iterdir()) or (out_dir / METADATA_NAME).is_file())


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished temp dir to `out_dir`, swapping out an old bundle (module docstring)."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    if not _replaceable(out_dir):
        raise FileExistsError(
            f"{out_dir} exists and is not a castex bundle (no {METADATA_NAME}); not replacing it"
        )
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_bundle(out_dir: str | Path, mesh: Mesh, textures: TextureSet, *,
                 preview: np.ndarray | None, metadata: dict) -> dict[str, Path]:
    """Write the complete bundle to `out_dir` atomically (see module docstring) and return
    {file name: final path} for every file written.

    Files: albedo.png (sRGB), orm.png (R=1, G=roughness, B=metalness, linear), normal.png
    (tangent space, n*0.5+0.5), roughness.png / metallic.png (grayscale, for the MTL),
    model.glb, model.obj, model.mtl, preview.png (when given), metadata.json (the caller's
    dict plus `files`: {name: {bytes, sha256}} for every other file).

    Raises NonFiniteError (and writes nothing) when any texture holds NaN/inf.
    """
    out_dir = Path(out_dir).absolute()  # `.name` must be non-empty for the sibling temp dirs
    _check_textures(textures)
    if preview is not None:
        preview = _check_preview(preview)
    clean_metadata = _prepare_metadata(metadata)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        names = _write_contents(tmp, mesh, textures, preview, clean_metadata)
        for n in names:
            _fsync_file(tmp / n)
        fsync_dir(tmp)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out_dir.parent)
    return {n: out_dir / n for n in names}
