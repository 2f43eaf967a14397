"""The per-asset CasTex loop: explicit texture maps, Adam + StepLR, stage I then stage II.

Host syncs are the enemy of GPU throughput, so losses stay on the device and are read back only
every `log_every` steps (also where NaN/inf is detected). A run is reproducible on CPU from its
seed: cameras come from a CPU generator, diffusion noise from a generator on the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from core.camera import ViewDistribution, sample_views
from core.errors import NonFiniteError
from core.guidance.guidance import Guidance
from core.material import TextureSet
from core.presets import Preset, StageSpec
from core.render import Scene, render


# (stage name, step within stage, steps in stage, latest synced loss or None)
ProgressFn = Callable[[str, int, int, "float | None"], None]


@dataclass
class StageReport:
    name: str
    steps: int
    seconds: float
    final_loss: float | None
    loss_curve: list[float] = field(default_factory=list)  # mean loss over each log window


@dataclass
class OptimizationResult:
    textures: TextureSet
    stages: list[StageReport]

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)


def needs_low_res_condition(guidance: Guidance) -> bool:
    """Stage II UNets (6 input channels) are conditioned on the frozen stage-I render."""
    stage = getattr(guidance, "stage", None)
    return bool(getattr(guidance, "needs_condition", False)) or getattr(stage, "in_channels", 3) == 6


def optimize_textures(
    scene: Scene,
    stages: Sequence[tuple[StageSpec, Guidance]],
    embeds,
    preset: Preset,
    *,
    seed: int,
    textures: TextureSet | None = None,
    progress: ProgressFn | None = None,
    log_every: int = 10,
) -> OptimizationResult:
    """Optimize texture maps for one asset through every stage; raises NonFiniteError on NaN/inf."""
    device = scene.mesh.positions.device
    if textures is None:
        textures = TextureSet.constant(preset.texture_size, device=device)
    textures = textures.detach_clone().requires_grad_(True)
    view_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    dist = ViewDistribution(fov_deg=preset.fov_deg)

    reports = []
    for spec, guidance in stages:
        frozen = textures.detach_clone() if needs_low_res_condition(guidance) else None
        reports.append(_run_stage(scene, spec, guidance, embeds, preset, textures, frozen, dist,
                                  view_gen, noise_gen, progress, log_every))
    if not textures.is_finite():
        raise NonFiniteError("texture maps contain NaN/inf after optimization; nothing exported")
    return OptimizationResult(textures=textures.detach_clone(), stages=reports)


def _run_stage(scene, spec: StageSpec, guidance: Guidance, embeds, preset: Preset, textures: TextureSet,
               frozen: TextureSet | None, dist: ViewDistribution, view_gen: torch.Generator,
               noise_gen: torch.Generator, progress: ProgressFn | None, log_every: int) -> StageReport:
    opt = torch.optim.Adam(textures.tensors(), lr=spec.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=spec.lr_step, gamma=spec.lr_gamma)
    device = scene.mesh.positions.device
    window: list[torch.Tensor] = []
    curve: list[float] = []
    last: float | None = None
    start = time.perf_counter()
    for step in range(spec.steps):
        views = sample_views(preset.views, view_gen, dist).to(device)
        images = render(scene, textures, views, preset.render_size).permute(0, 3, 1, 2)
        cond = None
        if frozen is not None:
            with torch.no_grad():
                cond = render(scene, frozen, views, preset.render_size).permute(0, 3, 1, 2)
        loss, _ = guidance.loss(images, embeds=embeds, progress=step / max(spec.steps, 1),
                                generator=noise_gen, cond_images=cond, views=views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        textures.project_()
        window.append(loss.detach())
        if (step + 1) % log_every == 0 or step + 1 == spec.steps:
            last = _sync_window(window, spec.name, step)
            curve.append(last)
            window.clear()
            if progress is not None:
                progress(spec.name, step + 1, spec.steps, last)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return StageReport(name=spec.name, steps=spec.steps, seconds=time.perf_counter() - start,
                       final_loss=last, loss_curve=curve)


def _sync_window(window: list[torch.Tensor], stage: str, step: int) -> float:
    """One host sync per window: mean loss, and the NaN/inf check that protects the export."""
    values = torch.stack(window).float()
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteError(f"loss became NaN/inf in {stage} by step {step + 1}; nothing exported")
    return float(values.mean())
