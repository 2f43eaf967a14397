"""`SDSGuidance`: the loss one cascade stage contributes to texture optimization.

One instance per stage. Each call: downsample the renders to the stage resolution, noise them at
one annealed timestep, ask the UNet (one batched call for unconditional + text) for the noise,
apply classifier-free guidance and regress the renders towards the clamped x0 estimate (x0-form
SDS, see `core.guidance.sds`). Stage II additionally conditions on the frozen stage-I render,
noised by IF's image-noising scheduler, exactly as IF-II's super-resolution input.

No host syncs happen here: timesteps, weights and losses stay tensors on the device, and the
info dict hands them to callers that decide when to read them.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F

from core.guidance.cascade import StageModel
from core.guidance.prompts import PromptEmbeds
from core.guidance.schedule import DEFAULT_T_MAX, DEFAULT_T_MIN, sample_timesteps
from core.guidance.sds import add_noise, cfg, epsilon_from_output, predict_x0, sds_weight, sds_x0_loss

COND_LOW_RES = 64  # stage-II condition: the stage-I resolution the frozen render is reduced to


class Guidance(Protocol):
    """What the optimizer needs from a guidance: a differentiable loss on a batch of renders."""

    def loss(self, images: torch.Tensor, *, embeds: PromptEmbeds, progress: float, generator: torch.Generator,
             cond_images: torch.Tensor | None = None, views: Any = None) -> tuple[torch.Tensor, dict]: ...


def to_resolution(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize [B, C, H, W] to size x size; bilinear is antialiased so downsampling does not alias."""
    if images.shape[-2:] == (size, size):
        return images
    if mode == "nearest":
        return F.interpolate(images, size=(size, size), mode="nearest")
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def text_batch(embeds: PromptEmbeds, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """[2B, L, D]: unconditional embeddings for the first half, text embeddings for the second."""
    uncond = embeds.uncond.expand(batch, -1, -1) if embeds.uncond.shape[0] == 1 else embeds.uncond
    cond = embeds.cond.expand(batch, -1, -1) if embeds.cond.shape[0] == 1 else embeds.cond
    return torch.cat([uncond, cond], dim=0).to(dtype)


class SDSGuidance:
    """x0-form SDS with one frozen IF stage (I: 64 px text-to-image, II: super-resolution)."""

    def __init__(self, stage: StageModel, guidance_scale: float, t_min: tuple[int, int] = DEFAULT_T_MIN,
                 t_max: tuple[int, int] = DEFAULT_T_MAX, noise_level: int = 500,
                 cond_low_res: int = COND_LOW_RES) -> None:
        steps = stage.alphas_cumprod.shape[0]
        if not all(0 <= t < steps for t in (*t_min, *t_max)):
            raise ValueError(f"timestep bounds {t_min}, {t_max} must lie in [0, {steps})")
        if stage.needs_condition and stage.noising_scheduler is None:
            raise ValueError(f"stage {stage.model_id!r} takes a low-res condition but has no noising scheduler")
        self.stage = stage
        self.guidance_scale = float(guidance_scale)
        self.t_min = tuple(t_min)
        self.t_max = tuple(t_max)
        self.noise_level = int(noise_level)
        self.cond_low_res = int(cond_low_res)

    @property
    def needs_condition(self) -> bool:
        return self.stage.needs_condition

    @property
    def resolution(self) -> int:
        return self.stage.resolution

    def loss(self, images: torch.Tensor, *, embeds: PromptEmbeds, progress: float, generator: torch.Generator,
             cond_images: torch.Tensor | None = None, views: Any = None) -> tuple[torch.Tensor, dict]:
        """SDS loss for renders [B, 3, H, W] in [0, 1] (top row first). `views` is ignored.

        Returns (scalar loss, info) with info tensors `t` [1], `w` [1], `loss` (detached) and
        `x0_hat` ([B, 3, r, r] in [0, 1], the denoised target) for logging or previews.
        """
        if self.needs_condition and cond_images is None:
            raise ValueError("stage II guidance needs cond_images (the frozen stage-I render)")
        x = to_resolution(images.float(), self.resolution, "bilinear") * 2.0 - 1.0
        t = sample_timesteps(progress, generator, t_min=self.t_min, t_max=self.t_max, device=x.device)
        abar = self.stage.alphas_cumprod[t]
        with torch.no_grad():
            noise = self._randn(x.shape, generator, x.device)
            x_t = add_noise(x.detach(), noise, abar)
            cond = self._noised_condition(cond_images, generator, x.device) if self.needs_condition else None
            eps_hat = self.predict_noise(x_t, t, embeds, cond)
            x0_hat = predict_x0(x_t, eps_hat, abar)
        w = sds_weight(abar)
        loss = sds_x0_loss(x, x0_hat, w)
        info = {"t": t, "w": w, "loss": loss.detach(), "x0_hat": (x0_hat + 1.0) * 0.5}
        return loss, info

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, embeds: PromptEmbeds,
                      cond: torch.Tensor | None = None) -> torch.Tensor:
        """Guided noise prediction (float32) from one UNet call on [uncond | text] x B."""
        unet = self.stage.unet
        dtype = self.stage.dtype
        batch = x_t.shape[0]
        sample = x_t if cond is None else torch.cat([x_t, cond], dim=1)
        kwargs = {}
        if cond is not None:
            kwargs["class_labels"] = torch.full((2 * batch,), self.noise_level, device=x_t.device, dtype=torch.long)
        out = unet(torch.cat([sample, sample], dim=0).to(dtype), t.expand(2 * batch),
                   encoder_hidden_states=text_batch(embeds, batch, dtype).to(x_t.device), return_dict=False,
                   **kwargs)[0]
        # Channels 3:6 are the learned variance; the first 3 are eps for IF (see epsilon_from_output).
        eps = epsilon_from_output(out[:, :3].float(), torch.cat([x_t, x_t], dim=0),
                                  self.stage.alphas_cumprod[t], self.stage.prediction_type)
        eps_uncond, eps_text = eps.chunk(2, dim=0)
        return cfg(eps_uncond, eps_text, self.guidance_scale)

    def _noised_condition(self, cond_images: torch.Tensor, generator: torch.Generator,
                          device: torch.device) -> torch.Tensor:
        """Frozen render -> 64 px -> stage resolution (both nearest) -> [-1, 1] -> noised at noise_level."""
        low = to_resolution(cond_images.float(), self.cond_low_res, "nearest")
        up = to_resolution(low, self.resolution, "nearest") * 2.0 - 1.0
        noise = self._randn(up.shape, generator, device)
        level = torch.full((up.shape[0],), self.noise_level, device=device, dtype=torch.long)
        return self.stage.noising_scheduler.add_noise(up, noise, level)

    @staticmethod
    def _randn(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """Noise drawn on the generator's device (reproducible per seed), then moved if needed."""
        draw_on = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=draw_on, dtype=torch.float32).to(device)
