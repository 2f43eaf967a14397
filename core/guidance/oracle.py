"""Oracle guidance for tests: a 'diffusion model' whose x0 prediction is the exact render of a
known ground-truth material under the same cameras, mesh rotation and light.

With it, SDS reduces to image-space regression, so recovering the ground truth proves that the
renderer, texture sampling, gradients and optimizer loop work end to end.
"""

from __future__ import annotations

import torch

from core.camera import Views
from core.material import TextureSet
from core.render import Scene, render


class OracleGuidance:
    def __init__(self, scene: Scene, target: TextureSet, resolution: int) -> None:
        self.scene = scene
        self.target = target.detach_clone()
        self.resolution = resolution

    def loss(self, images: torch.Tensor, *, embeds=None, progress: float = 0.0,
             generator: torch.Generator | None = None, cond_images: torch.Tensor | None = None,
             views: Views | None = None) -> tuple[torch.Tensor, dict]:
        if views is None:
            raise ValueError("OracleGuidance needs the views that produced `images`")
        with torch.no_grad():
            x0_hat = render(self.scene, self.target, views, self.resolution).permute(0, 3, 1, 2)
        loss = 0.5 * ((images - x0_hat) ** 2).sum() / images.shape[0]
        return loss, {"x0_hat": x0_hat}
