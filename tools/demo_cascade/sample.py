"""Sampling the demo cascade from text, through the same loaders SDS uses (`load_stage`, `PromptEncoder`).

Stage I draws 32 px images with DDIM and classifier-free guidance; stage II upsamples them to 64 px
conditioned on the nearest-upsampled stage-I image noised to `noise_level` (IF-II's recipe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from core.guidance.cascade import StageModel, load_stage
from core.guidance.prompts import PromptEncoder


def ddim_sample(stage: StageModel, text: torch.Tensor, uncond: torch.Tensor, shape: tuple[int, ...], steps: int,
                guidance: float, gen: torch.Generator, cond: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None, eta: float = 0.0) -> torch.Tensor:
    """DDIM with CFG; returns x0 in [-1, 1]. `text`/`uncond` are [B, L, D].

    `eta` 0 is deterministic DDIM, 1 the ancestral (DDPM-like) variance; the noise it injects is
    drawn from `gen`, so a seed still fixes the result.
    """
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(stage.scheduler.config)
    sched.set_timesteps(steps)
    x = torch.randn(shape, generator=gen)
    embeds = torch.cat([uncond, text], dim=0)
    for t in sched.timesteps:
        inp = x if cond is None else torch.cat([x, cond], dim=1)
        kwargs = {} if class_labels is None else {"class_labels": torch.cat([class_labels, class_labels])}
        with torch.no_grad():
            out = stage.unet(torch.cat([inp, inp]), t, encoder_hidden_states=embeds, **kwargs).sample[:, :3]
        e_u, e_t = out.chunk(2)
        # use_clipped_model_output: re-derive eps from the thresholded x0. Without it DDIM steps
        # with the *unclipped* guided eps, whose x0 component then outweighs the clipped x0 and
        # flips the guidance at high scales (red captions sampled blue).
        x = sched.step(e_u + guidance * (e_t - e_u), t, x, eta=eta, use_clipped_model_output=True,
                       generator=gen).prev_sample
    return x.clamp(-1, 1)


class CascadeSampler:
    """Stage I + stage II + a prompt encoder; samples text -> 64 px images.

    `CascadeSampler.load(root)` reads a local IF-layout directory (stage_1/, stage_2/) through the
    loaders SDS uses; training builds one from its in-memory models for its probes.
    """

    def __init__(self, stage1: StageModel, stage2: StageModel, encode: Callable[[list[str]], torch.Tensor]) -> None:
        self.stage1, self.stage2, self._encode = stage1, stage2, encode

    @classmethod
    def load(cls, root: str | Path) -> "CascadeSampler":
        root = Path(root)
        encoder = PromptEncoder.from_pretrained(root / "stage_1")
        return cls(load_stage(root / "stage_1"), load_stage(root / "stage_2"), encoder.encode)

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        text = self._encode(prompts)
        return text, self._encode([""]).expand_as(text)

    def sample(self, prompts: list[str], *, seed: int = 0, steps1: int = 50, steps2: int = 25,
               guidance1: float = 5.0, guidance2: float = 3.0, noise_level: int = 100, eta1: float = 0.0,
               return_low: bool = False):
        """[N, 3, 64, 64] images in [0, 1] (and the stage-I [N, 3, 32, 32] ones if return_low)."""
        gen = torch.Generator().manual_seed(seed)
        text, uncond = self.encode(prompts)
        n, r1, r2 = len(prompts), self.stage1.resolution, self.stage2.resolution
        low = ddim_sample(self.stage1, text, uncond, (n, 3, r1, r1), steps1, guidance1, gen, eta=eta1)
        up = F.interpolate(low, size=(r2, r2), mode="nearest")
        level = torch.full((n,), noise_level, dtype=torch.long)
        cond = self.stage2.noising_scheduler.add_noise(up, torch.randn(up.shape, generator=gen), level)
        high = ddim_sample(self.stage2, text, uncond, (n, 3, r2, r2), steps2, guidance2, gen, cond=cond,
                           class_labels=level)
        images = (high + 1) * 0.5
        return (images, (low + 1) * 0.5) if return_low else images
