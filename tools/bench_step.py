"""Seconds per optimization step of a preset (default `cpu-demo`), per stage.

Runs a few warm-up steps then times N steps of each stage on the example vase with the real
guidance (tiny cascade for cpu-demo). Prints figures; asserts nothing.

    python -m tools.bench_step [--preset cpu-demo] [--steps 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from core.examples import example_mesh
from core.optimize import optimize_textures
from core.presets import get_preset
from core.texturer import Texturer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="cpu-demo")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", default="models")
    ap.add_argument("--mesh", default="vase")
    args = ap.parse_args()

    preset = get_preset(args.preset).resolved(args.models)
    from jobs.cli import ensure_preset_models

    ensure_preset_models(preset, args.models)
    t0 = time.perf_counter()
    texturer = Texturer(preset, device=args.device)
    embeds = texturer.encode_prompts(["a red brick wall"])["a red brick wall"]
    mesh = example_mesh(args.mesh)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {texturer.device}, "
          f"rasterizer {texturer.rasterizer.name}, setup {time.perf_counter() - t0:.2f}s")
    print(f"preset {preset.name}: {preset.views} views x {preset.render_size}^2, texture {preset.texture_size}^2, "
          f"mesh {args.mesh} ({mesh.num_faces} faces)")
    scene = texturer.scene(mesh)
    embeds = embeds.to(texturer.device, texturer.dtype)
    total_projected = 0.0
    for spec, guidance in texturer.stages:
        # Each stage timed on its own (stage II conditions on the initial texture: same cost).
        per_step = 0.0
        for steps in (args.warmup, args.steps):
            timed = dataclasses.replace(spec, steps=steps)
            result = optimize_textures(scene, [(timed, guidance)], embeds, preset, seed=0)
            per_step = result.stages[0].seconds / steps
        total_projected += per_step * spec.steps
        print(f"{spec.name}: {per_step:.3f} s/step over {args.steps} steps "
              f"(preset runs {spec.steps} steps -> {per_step * spec.steps:.1f} s)")
    print(f"projected optimization time per asset: {total_projected:.1f} s")


if __name__ == "__main__":
    main()
