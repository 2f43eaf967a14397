"""Texture bundle export: PNG maps, GLB, OBJ+MTL, preview grid and metadata.json.

Pure numpy/PIL/pygltflib on top of core types; never imports Ray or fsspec (the pipeline copies
the finished local bundle to remote storage itself).
"""

from core.export.bundle import make_preview_grid, write_bundle
from core.export.gltf import build_gltf, glb_bytes, write_glb
from core.export.images import (
    albedo_png,
    encode_png,
    gray_png,
    normal_png,
    orm_png,
    quantize_unit,
    save_png,
)
from core.export.obj import ObjTextures, mtl_text, write_obj

__all__ = [
    "ObjTextures",
    "albedo_png",
    "build_gltf",
    "encode_png",
    "glb_bytes",
    "gray_png",
    "make_preview_grid",
    "mtl_text",
    "normal_png",
    "orm_png",
    "quantize_unit",
    "save_png",
    "write_bundle",
    "write_glb",
    "write_obj",
]
