"""Does SDS with the demo cascade follow colour words? Texture meshes and check the albedo's dominant hue.

    python -m tools.demo_cascade.hue [--meshes vase torus] [--prompts 10] [--preset cpu-demo]

For each mesh and each of 10 prompts naming a colour, runs the full per-asset optimization (the
`cpu-demo` preset by default, exactly as `castex texture` does) and names the dominant hue of the
albedo map: every clearly coloured texel (saturation and value above a floor; the grey initial
albedo and untouched texels drop out) votes, weighted by saturation, for the nearest of the eight
chromatic named colours by hue angle. Prints one line per run and the matches per mesh; the issue's
target is >= 8 of 10 per mesh. Exit 1 when a mesh misses it.
"""

from __future__ import annotations

import argparse
import colorsys
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tools.demo_cascade.materials import PALETTE

CHROMATIC = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink")
HUE_DEG = {c: colorsys.rgb_to_hsv(*PALETTE[c])[0] * 360.0 for c in CHROMATIC}
PROMPTS: tuple[tuple[str, str], ...] = (
    ("a red vase", "red"), ("orange wood", "orange"), ("a yellow ball", "yellow"), ("green marble", "green"),
    ("a teal object", "teal"), ("blue stripes", "blue"), ("a purple vase", "purple"), ("pink tiles", "pink"),
    ("red bricks with grey mortar", "red"), ("a green and white checkerboard", "green"),
)
TARGET = 8


def hue_votes(albedo: np.ndarray, min_saturation: float = 0.2, min_value: float = 0.12) -> dict[str, float]:
    """Saturation-weighted votes of the coloured texels of an [H, W, 3] albedo for each chromatic colour."""
    rgb = albedo.reshape(-1, 3).astype(np.float64)
    mx, mn = rgb.max(1), rgb.min(1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-8), 0.0)
    keep = (sat >= min_saturation) & (mx >= min_value)
    votes = {c: 0.0 for c in CHROMATIC}
    if not keep.any():
        return votes
    r, g, b = rgb[keep].T
    # Hue angle in degrees, the same definition as colorsys (vectorized).
    delta = np.maximum(mx[keep] - mn[keep], 1e-8)
    h = np.where(mx[keep] == r, ((g - b) / delta) % 6, np.where(mx[keep] == g, (b - r) / delta + 2, (r - g) / delta + 4))
    h = h * 60.0
    anchors = np.array([HUE_DEG[c] for c in CHROMATIC])
    diff = np.abs((h[:, None] - anchors[None, :] + 180.0) % 360.0 - 180.0)
    nearest = diff.argmin(1)
    weights = sat[keep]
    for i, c in enumerate(CHROMATIC):
        votes[c] = float(weights[nearest == i].sum())
    return votes


def dominant_hue(albedo: np.ndarray) -> str | None:
    """The chromatic colour with the most votes, or None when the albedo has no coloured texels."""
    votes = hue_votes(albedo)
    best = max(votes, key=votes.get)
    return best if votes[best] > 0 else None


def texture_once(texturer, mesh, prompt: str, seed: int, cache_dir: str):
    """One full per-asset optimization; returns (albedo [H, W, 3] numpy, the TextureResult)."""
    embeds = texturer.encode_prompts([prompt], cache_dir=cache_dir)[prompt]
    result = texturer.texture(mesh, embeds, seed=seed)
    return result.textures.albedo.detach().cpu().numpy(), result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.demo_cascade.hue", description=__doc__.split("\n\n")[0])
    p.add_argument("--meshes", nargs="+", default=["vase", "torus"], help="example meshes (castex example-mesh)")
    p.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the 10 prompts to run")
    p.add_argument("--preset", default="cpu-demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--previews", default=None, help="directory for preview PNGs of every run")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads (run one process per mesh with --threads 1 on 2 cores)")
    args = p.parse_args(argv)

    import torch

    from core.examples import write_example_mesh
    from core.mesh import load_mesh
    from core.presets import get_preset
    from core.texturer import Texturer

    torch.set_num_threads(args.threads)
    texturer = Texturer(get_preset(args.preset).resolved(), device="cpu", rasterizer="torch")
    failed_meshes = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.meshes:
            mesh = load_mesh(write_example_mesh(name, Path(tmp) / f"{name}.obj"))
            hits = 0
            for prompt, colour in PROMPTS[:args.prompts]:
                t0 = time.time()
                albedo, result = texture_once(texturer, mesh, prompt, args.seed, tmp)
                got = dominant_hue(albedo)
                hits += got == colour
                print(f"{name:6} {prompt!r:36} expected {colour:7} got {str(got):7} "
                      f"{'ok' if got == colour else 'MISS'} ({time.time() - t0:.0f}s)", flush=True)
                if args.previews:
                    from PIL import Image

                    Path(args.previews).mkdir(parents=True, exist_ok=True)
                    slug = prompt.replace(" ", "-")
                    Image.fromarray(result.preview).save(Path(args.previews) / f"{name}--{slug}.png")
            n = min(args.prompts, len(PROMPTS))
            print(f"{name}: {hits}/{n} prompts matched (target {TARGET}/10)", flush=True)
            failed_meshes += n == len(PROMPTS) and hits < TARGET
    return 1 if failed_meshes else 0


if __name__ == "__main__":
    sys.exit(main())
