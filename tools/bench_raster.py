"""Frames/s of the pure-PyTorch rasterizer on a ~10k-triangle closed mesh (prints, asserts nothing).

    python -m tools.bench_raster [--repeats 15] [--threads N] [--sizes 256 512]

Self-contained on purpose (it only imports `core.raster`): a UV sphere of radius 0.75 with 9,936
triangles built here in numpy, seen from 3 units away with a 30 degree field of view (the sphere
covers ~70% of the frame). Per resolution it times

* rasterize alone, and
* the per-view texturing path: rasterize + interpolate(uv, with screen derivatives) +
  texture(1024^2, linear-mipmap-linear, pyramid rebuilt every call as in optimization) +
  antialias, with a 3-channel and an 8-channel texture (render.py samples 8 packed channels).

Figures are medians (and minima) of wall-clock time over `--repeats` runs after one warm-up, for
one image. The load average is printed because other processes sharing the CPU distort timings
(with 2 threads every parallel region waits for both cores).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from typing import Callable

import numpy as np
import torch

from core.raster import get_rasterizer


def uv_sphere(n_lat: int = 70, n_lon: int = 72, radius: float = 0.75):
    """Positions [V,3], triangles [F,3] (int32, outward CCW) and glTF-style uvs [V,2]; the seam
    and pole vertices are split as a UV-unwrapped asset's would be."""
    theta = np.linspace(0.0, np.pi, n_lat + 1)
    phi = np.linspace(0.0, 2.0 * np.pi, n_lon + 1)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    pos = np.stack([radius * np.sin(t) * np.cos(p), radius * np.cos(t), -radius * np.sin(t) * np.sin(p)], -1)
    uv = np.stack([p / (2.0 * np.pi), t / np.pi], -1)
    idx = np.arange((n_lat + 1) * (n_lon + 1)).reshape(n_lat + 1, n_lon + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    # Skip the zero-area triangles at the poles (both their top or bottom corners coincide).
    faces = np.concatenate([np.stack([a, c, b], -1)[1:].reshape(-1, 3), np.stack([b, c, d], -1)[:-1].reshape(-1, 3)])
    return (torch.tensor(pos.reshape(-1, 3), dtype=torch.float32), torch.tensor(faces, dtype=torch.int32),
            torch.tensor(uv.reshape(-1, 2), dtype=torch.float32))


def mvp(distance: float = 3.0, fov_deg: float = 30.0, elevation_deg: float = 20.0, azimuth_deg: float = 30.0):
    """OpenGL projection @ view for a camera orbiting the origin and looking at it."""
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    eye = distance * np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
    fwd = -eye / np.linalg.norm(eye)
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    view = np.eye(4)
    view[0, :3], view[1, :3], view[2, :3] = right, up, -fwd
    view[:3, 3] = -view[:3, :3] @ eye
    f, near, far = 1.0 / math.tan(math.radians(fov_deg) / 2), 0.1, 100.0
    proj = np.array([[f, 0, 0, 0], [0, f, 0, 0], [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
                     [0, 0, -1, 0]])
    return torch.tensor(proj @ view, dtype=torch.float32)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, min) wall seconds after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def report(label: str, seconds: tuple[float, float]) -> None:
    med, best = seconds
    print(f"  {label:58s} {1 / med:7.1f} frames/s  (median {med * 1e3:7.1f} ms, min {best * 1e3:7.1f} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    raster = get_rasterizer("torch", dev)
    verts, tri, uv = (t.to(dev) for t in uv_sphere())
    clip = (torch.nn.functional.pad(verts, (0, 1), value=1.0) @ mvp().to(dev).T).unsqueeze(0).contiguous()
    gen = torch.Generator().manual_seed(0)
    textures = {c: torch.rand(1, 1024, 1024, c, generator=gen).to(dev) for c in (3, 8)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {dev}, "
          f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    print(f"mesh: UV sphere, {tri.shape[0]} triangles, {verts.shape[0]} vertices; fov 30, distance 3")

    for res in args.sizes:
        def raster_only():
            return raster.rasterize(clip, tri, (res, res))

        def full(tex: torch.Tensor):
            def run():
                rast, rast_db = raster.rasterize(clip, tri, (res, res))
                tc, tc_da = raster.interpolate(uv, rast, tri, rast_db=rast_db, diff_attrs="all")
                color = raster.texture(tex, tc, tc_da, filter_mode="linear-mipmap-linear")
                return raster.antialias(color, rast, clip, tri)
            return run

        coverage = float((raster_only()[0][..., 3] > 0).float().mean())
        print(f"{res}x{res} (mesh covers {coverage:.0%} of the pixels):")
        report("rasterize", timed(raster_only, args.repeats))
        for c, tex in textures.items():
            report(f"rasterize+interpolate+texture(1024^2x{c}, lml)+antialias", timed(full(tex), args.repeats))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
