"""Frames/s of the pure-PyTorch rasterizer on a ~10k-triangle mesh (prints figures, asserts nothing).

    python -m tools.bench_raster [--repeats 15]

Two figures per resolution: rasterize alone, and the full per-view texturing path
(rasterize + interpolate uv with derivatives + 1024^2 mip-mapped texture lookup + antialias).
Medians over the repeats after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from core.camera import make_views
from core.examples import example_mesh
from core.raster import get_rasterizer


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    mesh = example_mesh("sphere-10k").to(args.device)
    raster = get_rasterizer("torch", args.device)
    views = make_views(torch.tensor([20.0]), torch.tensor([30.0]), 3.2).to(args.device)
    clip = torch.einsum("vj,bij->bvi", torch.nn.functional.pad(mesh.positions, (0, 1), value=1.0), views.mvp)
    tri = mesh.faces.to(torch.int32)
    tex = torch.rand(1, 1024, 1024, 8, device=args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"mesh sphere-10k: {mesh.num_faces} triangles")
    for res in (256, 512):
        def raster_only():
            return raster.rasterize(clip, tri, (res, res))

        def full_path():
            rast, db = raster.rasterize(clip, tri, (res, res))
            uv, uv_da = raster.interpolate(mesh.uvs, rast, tri, rast_db=db, diff_attrs="all")
            color = raster.texture(tex, uv, uv_da, filter_mode="linear-mipmap-linear")
            return raster.antialias(color, rast, clip, tri)

        coverage = float((raster_only()[0][..., 3] > 0).float().mean())
        t_r = _median_seconds(raster_only, args.repeats)
        t_f = _median_seconds(full_path, args.repeats)
        print(f"{res}x{res}: rasterize {1 / t_r:6.1f} frames/s ({t_r * 1e3:6.1f} ms) | "
              f"raster+interpolate+texture+antialias {1 / t_f:6.1f} frames/s ({t_f * 1e3:6.1f} ms) | "
              f"coverage {coverage:.0%}")


if __name__ == "__main__":
    main()
