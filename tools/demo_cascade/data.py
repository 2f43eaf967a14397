"""Training batches for the demo cascade: procedural swatches at 64 px, their 32 px versions and captions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tools.demo_cascade.materials import sample

# Words outside the caption vocabulary, inserted into some captions so the model learns that
# unknown words (<unk> after tokenization, e.g. "ceramic" in "a red ceramic vase") carry nothing.
FILLER_WORDS = ("old", "shiny", "ceramic", "realistic", "texture", "detailed", "new", "nice", "high", "quality",
                "photo", "clean", "matte", "glossy", "beautiful", "simple", "fabric", "the", "painted")


@dataclass
class Batch:
    image64: torch.Tensor  # [B, 3, 64, 64] in [-1, 1]
    image32: torch.Tensor  # [B, 3, 32, 32] in [-1, 1] (area downsample)
    captions: list[str]


def augment_caption(caption: str, rng: np.random.Generator, *, unk_prob: float, drop_prob: float) -> str:
    """Empty caption (classifier-free guidance) with drop_prob; else maybe insert unknown words."""
    if rng.random() < drop_prob:
        return ""
    words = caption.split()
    if rng.random() < unk_prob:
        for _ in range(int(rng.integers(1, 4))):
            words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(FILLER_WORDS)))
    return " ".join(words)


def make_batch(rng: np.random.Generator, batch_size: int, *, unk_prob: float = 0.3, drop_prob: float = 0.1,
               size: int = 64) -> Batch:
    images, captions = [], []
    for _ in range(batch_size):
        img, caption, _ = sample(rng, size)
        images.append(img)
        captions.append(augment_caption(caption, rng, unk_prob=unk_prob, drop_prob=drop_prob))
    x64 = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous() * 2.0 - 1.0
    x32 = F.avg_pool2d(x64, 2)
    return Batch(x64, x32, captions)
