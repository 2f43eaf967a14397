"""The judges of the evaluation: a colour classifier (nearest named colour by pixel majority) and a
small CNN pattern classifier trained on the procedural swatches themselves (colour-normalized input,
so it judges the pattern, not the colour)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tools.demo_cascade.materials import COLOURS, PATTERNS, Material, nearest_colour, random_material, render_material


def dominant_colour(image: np.ndarray) -> str:
    """The named colour most pixels of an [H, W, 3] sRGB image in [0, 1] are nearest to."""
    labels = nearest_colour(image.reshape(-1, 3).astype(np.float32))
    return COLOURS[int(np.bincount(labels, minlength=len(COLOURS)).argmax())]


def _normalize(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luminance with zero mean and unit contrast per image."""
    lum = (images * torch.tensor([0.3, 0.59, 0.11]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    lum = lum - lum.mean(dim=(2, 3), keepdim=True)
    return lum / (lum.std(dim=(2, 3), keepdim=True) + 0.02)


class PatternClassifier(nn.Module):
    """Four conv blocks and global pooling over 64 px luminance; 8 pattern classes."""

    def __init__(self) -> None:
        super().__init__()
        chans = (1, 16, 32, 64, 64)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans[:-1], chans[1:]))
        self.head = nn.Linear(chans[-1] * 2, len(PATTERNS))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _normalize(images)
        for conv in self.convs:
            x = F.max_pool2d(F.gelu(conv(x)), 2)
        return self.head(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1))

    def predict(self, images: torch.Tensor) -> list[str]:
        with torch.no_grad():
            return [PATTERNS[i] for i in self(images).argmax(1).tolist()]


def _warp(x: torch.Tensor, gen: torch.Generator, pixels: float = 1.5) -> torch.Tensor:
    """Bend images by a smooth random displacement field (about `pixels` px) and add a little noise.

    Why: sampled patterns are never ruled straight; a judge trained on perfect swatches only called
    clearly drawn but slightly wavy checkerboards "marble"."""
    b, _, h, w = x.shape
    coarse = torch.randn(b, 2, 4, 4, generator=gen) * (pixels * 2.0 / w)
    flow = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grid = torch.stack([xs, ys], dim=-1).unsqueeze(0) + flow
    bent = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    return (bent + 0.02 * torch.randn(bent.shape, generator=gen)).clamp(0, 1)


def _swatches(rng: np.random.Generator, n: int, size: int = 64,
              distort: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random swatches of every colour/pattern pair (held-out pairs included: it judges, not generates),
    half of them blurred to 32 px and back, as the cascade's 64 px samples start from 32 px, and
    `distort` of them bent by `_warp`."""
    images, labels = [], []
    for _ in range(n):
        m = random_material(rng, object_prob=0.0, train=False)
        images.append(render_material(Material(m.pattern, m.colour, m.second), rng, size))
        labels.append(PATTERNS.index(m.pattern))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    soft = torch.rand(n, generator=torch.Generator().manual_seed(int(rng.integers(1 << 31)))) < 0.5
    x[soft] = F.interpolate(F.avg_pool2d(x[soft], 2), scale_factor=2, mode="bilinear", align_corners=False)
    if distort:
        gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
        bend = torch.rand(n, generator=gen) < distort
        if bend.any():
            x[bend] = _warp(x[bend], gen)
    return x, torch.tensor(labels)


def train_pattern_classifier(seed: int = 0, steps: int = 400, batch: int = 64) -> tuple[PatternClassifier, float]:
    """Train on fresh procedural swatches; returns the model and its accuracy on 512 new ones."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 100)
    model = PatternClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(steps):
        x, y = _swatches(rng, batch, distort=0.5)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = _swatches(np.random.default_rng(seed + 999), 512)
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    return model, accuracy
