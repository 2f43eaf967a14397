"""Explicit PBR texture maps: the parameters CasTex optimizes directly (no activation, no network)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TextureSet:
    """Linear-space PBR maps, row 0 = top row of the image (see docs/architecture.md).

    albedo [H,W,3], roughness [H,W,1], metalness [H,W,1], normal [H,W,3] (tangent space, unit).
    """

    albedo: torch.Tensor
    roughness: torch.Tensor
    metalness: torch.Tensor
    normal: torch.Tensor

    @classmethod
    def constant(
        cls,
        size: int,
        *,
        albedo: float = 0.5,
        roughness: float = 0.5,
        metalness: float = 0.5,
        device: torch.device | str = "cpu",
    ) -> "TextureSet":
        """The CasTex initialization: grey albedo, mid roughness/metalness, flat normal (0,0,1)."""
        normal = torch.zeros(size, size, 3, device=device)
        normal[..., 2] = 1.0
        return cls(
            albedo=torch.full((size, size, 3), albedo, device=device),
            roughness=torch.full((size, size, 1), roughness, device=device),
            metalness=torch.full((size, size, 1), metalness, device=device),
            normal=normal,
        )

    def tensors(self) -> list[torch.Tensor]:
        return [self.albedo, self.roughness, self.metalness, self.normal]

    def requires_grad_(self, flag: bool = True) -> "TextureSet":
        for t in self.tensors():
            t.requires_grad_(flag)
        return self

    def detach_clone(self) -> "TextureSet":
        return TextureSet(*(t.detach().clone() for t in self.tensors()))

    @torch.no_grad()
    def project_(self) -> None:
        """Keep the maps valid after an optimizer step (CasTex): clamp albedo/roughness/metalness
        to [0,1]; normalize the normal, then clamp x,y to [-0.5,0.5] and z to [0.5,1]."""
        self.albedo.clamp_(0.0, 1.0)
        self.roughness.clamp_(0.0, 1.0)
        self.metalness.clamp_(0.0, 1.0)
        n = torch.nn.functional.normalize(self.normal, dim=-1)
        n[..., :2].clamp_(-0.5, 0.5)
        n[..., 2:].clamp_(0.5, 1.0)
        self.normal.copy_(n)

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.tensors())

    def to(self, device: torch.device | str) -> "TextureSet":
        return TextureSet(*(t.to(device) for t in self.tensors()))
