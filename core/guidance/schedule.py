"""Timestep annealing for SDS: which noise levels the diffusion model is asked about, and when.

Early in a stage large timesteps (heavy noise) let the model decide coarse structure and colour;
later the range shrinks towards smaller timesteps so the model only refines details. CasTex anneals
both ends of the range with the square root of progress: `bound = start - (start - end) * sqrt(p)`.
"""

from __future__ import annotations

import math

import torch

DEFAULT_T_MIN: tuple[int, int] = (300, 200)
DEFAULT_T_MAX: tuple[int, int] = (980, 500)


def anneal(start: float, end: float, progress: float) -> float:
    """One bound at `progress` in [0, 1]; sqrt makes the range shrink fast early, slowly late."""
    p = min(max(float(progress), 0.0), 1.0)
    return start - (start - end) * math.sqrt(p)


def timestep_range(progress: float, t_min: tuple[int, int] = DEFAULT_T_MIN,
                   t_max: tuple[int, int] = DEFAULT_T_MAX) -> tuple[int, int]:
    """Half-open integer range `[lo, hi)` to draw t from at `progress` (= iter / N).

    `hi` is kept strictly above `lo` so sampling never sees an empty range even with odd configs.
    """
    lo = int(round(anneal(t_min[0], t_min[1], progress)))
    hi = int(round(anneal(t_max[0], t_max[1], progress)))
    return lo, max(hi, lo + 1)


def sample_timesteps(progress: float, generator: torch.Generator | None, *, t_min: tuple[int, int] = DEFAULT_T_MIN,
                     t_max: tuple[int, int] = DEFAULT_T_MAX, n: int = 1,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """`n` timesteps ~ U[lo, hi) as a long tensor, drawn on the generator's device.

    CasTex uses one t per batch (n = 1). Drawing on the generator's device keeps the step free of
    host syncs and makes runs reproducible from the generator seed alone (None: torch's global RNG).
    """
    lo, hi = timestep_range(progress, t_min, t_max)
    draw_on = generator.device if generator is not None else (device or "cpu")
    t = torch.randint(lo, hi, (n,), generator=generator, device=draw_on, dtype=torch.long)
    return t if device is None else t.to(device)
