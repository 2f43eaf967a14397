"""`castex` command line: texture one mesh, run the offline demo, build the tiny cascade.

Expected failures (bad mesh, unknown preset, missing model) print one clear line and exit 2;
anything else is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from core.errors import ConfigError

DEFAULT_MODELS = os.environ.get("CASTEX_MODELS", "models")
DEMO_STAGE1_SIZE, DEMO_STAGE2_SIZE = 32, 64
DEFAULT_CACHE = os.environ.get("CASTEX_CACHE", str(Path.home() / ".cache" / "castex"))


def _add_texture_options(p: argparse.ArgumentParser) -> None:
    from core.presets import PRESETS

    p.add_argument("--preset", default="cpu-demo", choices=sorted(PRESETS), help="optimization preset (default: cpu-demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed; CPU runs are reproducible (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--rasterizer", default="auto", choices=["auto", "torch", "nvdiffrast"],
                   help="auto = nvdiffrast on CUDA when installed, else pure PyTorch")
    p.add_argument("--negative-prompt", default="", help="text for the unconditional branch (default: empty)")
    p.add_argument("--environment", default=None,
                   help="built-in environment name (studio, sky, ...) or an .hdr file (default: preset's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="preset override, e.g. texture_size=512 or stage_1.steps=200 (repeatable)")
    p.add_argument("--models", default=DEFAULT_MODELS, help="root for local models ({models} in presets)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE, help="prompt-embedding and FG-table cache")
    p.add_argument("--max-faces", type=int, default=500_000, help="reject meshes with more faces (default 500000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="castex", description="CasTex: text-to-PBR textures for 3D meshes.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("texture", help="texture one mesh from a prompt and write a bundle")
    t.add_argument("mesh", help="mesh file: OBJ(+MTL), GLB/glTF, PLY or STL")
    t.add_argument("prompt", help="text prompt")
    t.add_argument("--out", required=True, help="output bundle directory (replaced if it exists)")
    _add_texture_options(t)

    d = sub.add_parser("demo", help="offline demo: the batch job on example meshes, local Ray, demo cascade on CPU")
    from jobs.demo import add_demo_arguments

    add_demo_arguments(d)

    m = sub.add_parser("make-tiny-cascade", help="write the tiny IF-layout test cascade (offline, seeded)")
    m.add_argument("out", nargs="?", default=None, help="directory (default: MODELS/tiny-cascade)")
    m.add_argument("--models", default=DEFAULT_MODELS)
    m.add_argument("--seed", type=int, default=0)

    e = sub.add_parser("example-mesh", help="write a procedural example mesh")
    e.add_argument("name", help="example name (see `castex presets --examples`)")
    e.add_argument("out", help="output file (.obj, .glb, .ply, .stl)")

    r = sub.add_parser("run", help="texture a Parquet manifest on a Ray cluster (see jobs/run.py)")
    from jobs.run import add_run_arguments

    add_run_arguments(r)

    n = sub.add_parser("nightly", help="incremental dated run of a catalog + HTML report (see jobs/nightly.py)")
    from jobs.nightly import add_nightly_arguments

    add_nightly_arguments(n)

    g = sub.add_parser("gc", help="list (or --delete) the debris crashed runs left under a batch output root")
    g.add_argument("--out", required=True, help="output root of `castex run` (local dir, s3://, gs://)")
    g.add_argument("--delete", action="store_true", help="delete the debris (default: only list it)")
    g.add_argument("--older-than-hours", type=float, default=24.0,
                   help="only temp files / orphan shards / empty runs older than this (default 24; 0 = "
                        "everything, only when no run is writing to OUT)")
    g.add_argument("--storage-options", default=None, help="fsspec storage options as JSON; never logged")

    p = sub.add_parser("presets", help="list presets (and example meshes)")
    p.add_argument("--examples", action="store_true", help="list example meshes instead")
    return parser


def parse_overrides(items: list[str]) -> dict[str, object]:
    """KEY=VALUE pairs; VALUE is parsed as JSON when it can be (numbers), else kept as a string."""
    overrides: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return overrides


def ensure_preset_models(preset, models_root: str) -> None:
    """Build the tiny random cascade when a preset (or an override) refers to it: it is made
    offline on first use. The shipped demo cascade (`{weights}`) needs nothing."""
    if any("tiny-cascade" in ref for ref in preset.model_ids.values()):
        ensure_tiny_cascade(models_root)


def ensure_tiny_cascade(models_root: str, seed: int = 0) -> Path:
    """Write `MODELS/tiny-cascade` (the untrained test cascade) unless it is there (seconds)."""
    from core.guidance.tiny import write_tiny_cascade

    path = Path(models_root) / "tiny-cascade"
    if not (path / "stage_1" / "unet").is_dir() or not (path / "stage_2" / "unet").is_dir():
        logging.getLogger("castex").info("building the tiny demo cascade in %s", path)
        # 32 px stage I and a x2 stage II keep the CPU demo within minutes on 2 cores.
        write_tiny_cascade(path, seed=seed, stage1_size=DEMO_STAGE1_SIZE, stage2_size=DEMO_STAGE2_SIZE)
    return path


def run_texture(args: argparse.Namespace, mesh_path: str, prompt: str) -> int:
    from tqdm import tqdm

    from core.mesh import load_mesh
    from core.presets import get_preset
    from core.texturer import Texturer

    if not prompt.strip():
        raise ConfigError("the prompt is empty; say what the texture should look like")
    preset = get_preset(args.preset, parse_overrides(args.overrides)).resolved(args.models)
    mesh = load_mesh(mesh_path, max_faces=args.max_faces)  # fail fast, before loading models
    ensure_preset_models(preset, args.models)
    start = time.perf_counter()
    texturer = Texturer(preset, device=args.device, rasterizer=args.rasterizer, environment=args.environment,
                        fg_cache_dir=Path(args.cache_dir) / "fg")
    embeds = texturer.encode_prompts([prompt], args.negative_prompt, cache_dir=Path(args.cache_dir) / "embeddings")
    bar = tqdm(total=preset.total_steps, desc="texturing", unit="step", disable=args.quiet, file=sys.stderr)

    def progress(stage: str, step: int, total: int, loss: float | None) -> None:
        bar.n = sum(s.steps for s in preset.stages[: [s.name for s in preset.stages].index(stage)]) + step
        bar.set_postfix(stage=stage, loss=f"{loss:.4g}" if loss is not None else "-")
        bar.refresh()

    try:
        result = texturer.texture(mesh, embeds[prompt], seed=args.seed, progress=progress)
    finally:
        bar.close()
    meta = texturer.metadata(mesh=mesh, prompt=prompt, negative_prompt=args.negative_prompt, seed=args.seed,
                             result=result, extra={"source_mesh": str(mesh_path)})
    texturer.export(args.out, mesh=mesh, result=result, metadata=meta)
    losses = ", ".join(f"{s.name} loss {s.final_loss:.4g}" for s in result.optimization.stages if s.final_loss is not None)
    print(f"ok: {Path(mesh_path).name} \"{prompt}\" -> {args.out} | preset {preset.name}, "
          f"{preset.total_steps} steps in {result.optimization.seconds:.1f}s "
          f"(total {time.perf_counter() - start:.1f}s), uv {mesh.uv_source}, {losses}")
    return 0


def run_gc(args: argparse.Namespace) -> int:
    """`castex gc`: print every debris path (see pipeline/gc.py), then one summary line."""
    from jobs.run import parse_storage_options as _storage_options
    from pipeline.gc import gc
    from pipeline.redact import register_secrets

    options = _storage_options(args.storage_options)
    register_secrets(options)
    report = gc(args.out, options, dry_run=not args.delete, older_than_s=args.older_than_hours * 3600.0)
    verb = "removed" if args.delete else "would remove"
    for path in [*report.paths, *report.empty_runs]:
        print(f"{verb}: {path}")
    print(f"gc: {verb} {len(report.tmp_files)} temp file(s), {len(report.packed_staging)} packed staging object(s), "
          f"{len(report.orphan_shards)} orphan shard(s), {len(report.empty_runs)} empty run dir(s); "
          f"{report.bytes} bytes" + ("" if args.delete else " (dry run: pass --delete)"))
    return 0


def main(argv: list[str] | None = None) -> int:
    from jobs.run import exit_code

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return exit_code(dispatch, build_parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run the chosen subcommand (CastexError propagates to `exit_code`)."""
    if args.command == "texture":
        return run_texture(args, args.mesh, args.prompt)
    if args.command == "demo":
        from jobs.demo import run_demo

        return run_demo(args)
    if args.command == "run":
        from jobs.run import run_from_args

        return run_from_args(args)
    if args.command == "nightly":
        from jobs.nightly import nightly_from_args

        return nightly_from_args(args)
    if args.command == "gc":
        return run_gc(args)
    if args.command == "make-tiny-cascade":
        from core.guidance.tiny import write_tiny_cascade

        path = write_tiny_cascade(Path(args.out or Path(args.models) / "tiny-cascade"), seed=args.seed,
                                  stage1_size=DEMO_STAGE1_SIZE, stage2_size=DEMO_STAGE2_SIZE)
        print(f"ok: tiny cascade written to {path}")
        return 0
    if args.command == "example-mesh":
        from core.examples import write_example_mesh

        print(f"ok: {write_example_mesh(args.name, args.out)}")
        return 0
    if args.command == "presets":
        if args.examples:
            from core.examples import EXAMPLE_MESHES

            print("\n".join(EXAMPLE_MESHES))
        else:
            from core.presets import PRESETS

            for p in PRESETS.values():
                stages = " + ".join(f"{s.model} x{s.steps} (cfg {s.guidance_scale:g})" for s in p.stages)
                print(f"{p.name:12s} {p.views} views, {p.render_size}px renders, {p.texture_size}^2 textures: {stages}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
