"""One object that loads the models once and textures many meshes: what a Ray actor holds.

Prompt encoding is separate (`Texturer.encode_prompts`, cached on disk) so the optimizer never
needs the text encoder in memory: in the batch pipeline a different actor encodes prompts.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.brdf_lut import fg_lut
from core.camera import preview_views
from core.envmap import ENVIRONMENTS, load_hdr
from core.export import make_preview_grid, write_bundle
from core.guidance import EmbeddingCache, PromptEmbeds, SDSGuidance, encode_prompts, load_stage
from core.light import EnvironmentLight
from core.material import TextureSet
from core.mesh import Mesh
from core.optimize import OptimizationResult, ProgressFn, optimize_textures
from core.presets import Preset
from core.raster import get_rasterizer
from core.render import Scene, render

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_light(environment: str, resolution: int, intensity: float, device: torch.device) -> EnvironmentLight:
    """A built-in procedural environment by name, or an .hdr/.exr file path."""
    # Prefilter on the target device: at GPU resolutions it is too slow on the CPU.
    if environment in ENVIRONMENTS:
        return EnvironmentLight.procedural(environment, base_res=resolution, intensity=intensity, device=device)
    return EnvironmentLight.from_equirect(load_hdr(environment), base_res=resolution, intensity=intensity,
                                          device=device)


@dataclass
class TextureResult:
    textures: TextureSet
    optimization: OptimizationResult
    preview: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


class Texturer:
    """Holds the cascade UNets, the light, the FG table and a rasterizer for one device."""

    def __init__(self, preset: Preset, *, device: str | torch.device | None = "auto", rasterizer: str = "auto",
                 environment: str | None = None, fg_cache_dir: str | Path | None = None) -> None:
        self.preset = preset
        self.device = resolve_device(device)
        self.dtype = _DTYPES[preset.dtype] if self.device.type == "cuda" else torch.float32
        t0 = time.perf_counter()
        models = [load_stage(spec.model, device=self.device, dtype=self.dtype) for spec in preset.stages]
        # Stage II sees the frozen stage-I render at stage I's resolution (64 px for IF-I).
        low_res = models[0].resolution
        self.stages = [(spec, SDSGuidance(model, guidance_scale=spec.guidance_scale, t_min=spec.t_min,
                                          t_max=spec.t_max, noise_level=spec.noise_level, cond_low_res=low_res))
                       for spec, model in zip(preset.stages, models)]
        self.environment = environment or preset.environment
        self.light = make_light(self.environment, preset.env_resolution, preset.env_intensity, self.device)
        self.fg_lut = fg_lut(cache_dir=fg_cache_dir).to(self.device)
        self.rasterizer = get_rasterizer(rasterizer, device=self.device)
        self.load_seconds = time.perf_counter() - t0
        log.info("texturer ready on %s (%s backend) in %.1fs", self.device, self.rasterizer.name, self.load_seconds)

    @property
    def model_ids(self) -> dict[str, str]:
        return self.preset.model_ids

    def encode_prompts(self, prompts: list[str], negative_prompt: str = "", cache_dir: str | Path | None = None
                       ) -> dict[str, PromptEmbeds]:
        """Embeddings per prompt; the encoder is loaded only for prompts missing from the cache."""
        cache = EmbeddingCache(cache_dir) if cache_dir is not None else None
        return encode_prompts(prompts, negative_prompt, encoder_path=self.preset.text_encoder, cache=cache,
                              device=self.device, dtype=self.dtype)

    def scene(self, mesh: Mesh) -> Scene:
        return Scene(mesh=mesh.to(self.device), light=self.light, rasterizer=self.rasterizer, fg_lut=self.fg_lut)

    def texture(self, mesh: Mesh, embeds: PromptEmbeds, *, seed: int, progress: ProgressFn | None = None
                ) -> TextureResult:
        scene = self.scene(mesh)
        embeds = embeds.to(self.device, self.dtype)
        result = optimize_textures(scene, self.stages, embeds, self.preset, seed=seed, progress=progress)
        t0 = time.perf_counter()
        preview = self.render_preview(scene, result.textures)
        timings = {s.name: s.seconds for s in result.stages}
        timings["preview"] = time.perf_counter() - t0
        return TextureResult(textures=result.textures, optimization=result, preview=preview, timings=timings)

    @torch.no_grad()
    def render_preview(self, scene: Scene, textures: TextureSet) -> np.ndarray:
        views = preview_views(self.preset.preview_views, fov_deg=self.preset.fov_deg).to(self.device)
        images = render(scene, textures, views, self.preset.preview_size)
        tiles = [(img.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy() for img in images]
        return make_preview_grid(tiles, cols=min(4, len(tiles)) if len(tiles) != 4 else 2)

    def metadata(self, *, mesh: Mesh, prompt: str, negative_prompt: str, seed: int, result: TextureResult,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
        stages = {s.name: {"steps": s.steps, "seconds": round(s.seconds, 3), "final_loss": s.final_loss}
                  for s in result.optimization.stages}
        meta = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "seed": seed,
            "preset": self.preset.name,
            "preset_config": self.preset.to_dict(),
            "model_ids": self.model_ids,
            "texture_size": self.preset.texture_size,
            "environment": self.environment,
            "mesh": {"vertices": mesh.num_vertices, "faces": mesh.num_faces, "uv_source": mesh.uv_source,
                     **mesh.stats},
            "uv_source": mesh.uv_source,
            "stages": stages,
            "timings": {k: round(v, 3) for k, v in result.timings.items()},
            "device": str(self.device),
            "rasterizer": self.rasterizer.name,
            "versions": versions(),
        }
        meta.update(extra or {})
        return meta

    def export(self, out_dir: str | Path, *, mesh: Mesh, result: TextureResult, metadata: dict[str, Any]
               ) -> dict[str, Path]:
        return write_bundle(Path(out_dir), mesh, result.textures.to("cpu"), preview=result.preview, metadata=metadata)


def versions() -> dict[str, str]:
    import diffusers
    import trimesh

    from core import __version__

    return {"castex": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "trimesh": trimesh.__version__}
