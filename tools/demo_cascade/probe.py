"""Cheap probes of prompt adherence, run on in-memory models while the cascade trains.

Two questions, each answered in seconds so training can print them every few hundred steps:

- `sample_colour_accuracy`: does the cascade (stage I alone, and stage I + II), sampled from pure
  noise with DDIM + CFG, draw the colour each held-out caption names? (A quick version of the
  evaluation script.)
- `sds_hue_hits`: does x0-form SDS with stage I pull a grey image towards the colour of a prompt?
  A flat stand-in for the mesh optimization of `cpu-demo`: an albedo image composited over a
  silhouette with shading and a random background colour per view (as the renderer's random
  backgrounds), downsampled to the stage resolution, optimized with the preset's stage-I
  guidance scale, timestep annealing, learning rate and step count. It tests the model, not the
  renderer; `tools.demo_cascade.hue` runs the real thing.
"""

from __future__ import annotations

import torch

from core.guidance.cascade import StageModel
from core.guidance.guidance import SDSGuidance
from core.guidance.prompts import PromptEmbeds
from tools.demo_cascade.classifiers import dominant_colour
from tools.demo_cascade.hue import PROMPTS, dominant_hue
from tools.demo_cascade.materials import held_out_captions
from tools.demo_cascade.sample import CascadeSampler


def stage_model(unet: torch.nn.Module, scheduler, noising_scheduler=None) -> StageModel:
    """Wrap an in-memory UNet + scheduler as the StageModel that SDS and the sampler use."""
    return StageModel(unet=unet, scheduler=scheduler, alphas_cumprod=scheduler.alphas_cumprod.float(),
                      model_id="<in-memory>", resolution=int(unet.config.sample_size),
                      in_channels=int(unet.config.in_channels), noising_scheduler=noising_scheduler)


@torch.no_grad()
def sample_colour_accuracy(sampler: CascadeSampler, *, seed: int = 0) -> tuple[float, float]:
    """(stage I, cascade) fractions of the 20 held-out captions whose sample (one each, few DDIM
    steps) has the named colour as its pixel majority."""
    captions = held_out_captions()
    high, low = sampler.sample([c for c, _ in captions], seed=seed, steps1=20, steps2=10, return_low=True)

    def accuracy(images: torch.Tensor) -> float:
        got = [dominant_colour(img) for img in images.permute(0, 2, 3, 1).numpy()]
        return sum(g == m.colour for g, (_, m) in zip(got, captions)) / len(captions)

    return accuracy(low), accuracy(high)


def _silhouette(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed vase-like ellipse mask and a left-to-right shading ramp, [1, 1, size, size]."""
    ax = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    v, u = torch.meshgrid(ax, ax, indexing="ij")
    mask = (((u - 0.5) / 0.3) ** 2 + ((v - 0.52) / 0.4) ** 2 < 1.0).float()
    shade = 0.6 + 0.4 * (1.0 - u)
    return mask[None, None], shade[None, None]


def sds_hue_hits(stage: StageModel, encode, *, steps: int = 120, guidance: float = 15.0, views: int = 4,
                 size: int = 64, lr: float = 0.01, lr_step: int = 40, seed: int = 0,
                 prompts: tuple[tuple[str, str], ...] = PROMPTS) -> tuple[int, list[str | None]]:
    """(hits, dominant hue per prompt) of the flat SDS stand-in described in the module docstring."""
    sds = SDSGuidance(stage, guidance_scale=guidance)
    mask, shade = _silhouette(size)
    uncond = encode([""])
    got: list[str | None] = []
    for i, (prompt, _) in enumerate(prompts):
        embeds = PromptEmbeds(cond=encode([prompt]), uncond=uncond)
        albedo = torch.full((1, 3, size, size), 0.5, requires_grad=True)
        opt = torch.optim.Adam([albedo], lr=lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=lr_step, gamma=0.9)
        gen = torch.Generator().manual_seed(seed + i)
        for step in range(steps):
            background = torch.rand(views, 3, 1, 1, generator=gen)
            images = albedo * shade * mask + background * (1 - mask)
            loss, _ = sds.loss(images, embeds=embeds, progress=step / steps, generator=gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                albedo.clamp_(0, 1)
        visible = albedo.detach()[0].permute(1, 2, 0)[mask[0, 0] > 0].numpy()
        got.append(dominant_hue(visible[None]))
    hits = sum(g == c for g, (_, c) in zip(got, prompts))
    return hits, got


def encoder_fn(tokenizer, text_encoder, max_length: int = 77):
    """prompts -> [N, 77, D] embeddings, as `PromptEncoder.encode` pads and masks them."""

    @torch.no_grad()
    def encode(prompts: list[str]) -> torch.Tensor:
        tok = tokenizer(prompts, max_length=max_length, padding="max_length", truncation=True, return_tensors="pt")
        return text_encoder(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state

    return encode


__all__ = ["encoder_fn", "sample_colour_accuracy", "sds_hue_hits", "stage_model"]
