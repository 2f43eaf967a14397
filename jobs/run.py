"""`castex run`: texture a whole manifest on a Ray cluster (the `ray job submit` entrypoint).

    python -m jobs.run --manifest s3://bucket/manifest/ --out s3://bucket/out/ --preset castex-xl-l

Joins the cluster named by `RAY_ADDRESS` (as `ray job submit` sets it), or starts a local Ray
instance sized to this machine. Exit codes: 0 when the run completed (even with failed rows:
they are in the index with their reasons), 2 for expected errors (bad manifest, unknown preset,
unusable storage), 1 for bugs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Callable

from core.errors import CastexError, ConfigError

log = logging.getLogger("castex.run")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `castex run` (shared by `python -m jobs.run` and the `castex` CLI)."""
    p.add_argument("--manifest", required=True, help="Parquet manifest: file, directory or glob (local, s3://, gs://)")
    add_execution_arguments(p)
    p.add_argument("--run-id", default=None, help="run id (default: UTC time + random suffix)")


def add_execution_arguments(p: argparse.ArgumentParser) -> None:
    """Where output goes and how the cluster textures: every `castex run` argument except the
    manifest and run id, so `castex nightly` (which derives both) shares them verbatim."""
    from core.presets import PRESETS

    p.add_argument("--out", required=True, help="output root (local dir, s3://, gs://)")
    p.add_argument("--preset", default="cpu-demo", choices=sorted(PRESETS),
                   help="default preset for rows that name none (default: cpu-demo)")
    p.add_argument("--actors", type=int, default=None,
                   help="texture actors (default: one per GPU, or one per 2 CPUs)")
    p.add_argument("--storage-options", default=None,
                   help="fsspec storage options as JSON (e.g. endpoint, credentials); never logged")
    p.add_argument("--models", default=os.environ.get("CASTEX_MODELS", "models"),
                   help="root for local models ({models} in presets); must exist on every node")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto = cuda if the cluster has GPUs)")
    p.add_argument("--rasterizer", default="auto", choices=["auto", "torch", "nvdiffrast"])
    p.add_argument("--cache-dir", default=None,
                   help="prompt-embedding cache shared by the actors (default: a temp dir; single node only)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a locally started Ray (default: all)")
    p.add_argument("--actor-cpus", type=float, default=0.5, help="CPU share per CPU actor (default 0.5)")


def parse_storage_options(raw: str | None) -> dict:
    """The `--storage-options` JSON object ({} when absent); ConfigError when it is not one."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--storage-options is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise ConfigError("--storage-options must be a JSON object")
    return value


def init_ray(num_cpus: int | None = None) -> None:
    """Join RAY_ADDRESS's cluster, or start a local instance without the dashboard.

    `address="local"`: without it `ray.init()` silently joins whatever cluster `ray start` last
    recorded in /tmp/ray (and then refuses `num_cpus`), instead of the local instance we mean."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)


def run_from_args(args: argparse.Namespace) -> int:
    """Run the manifest and print the one-line outcome. Raises CastexError on user errors."""
    summary = run_manifest(args)
    c = summary["counts"]
    print(f"run {summary['run_id']}: {c['ok']} ok, {c['failed']} failed, {c['skipped']} skipped "
          f"of {c['total']} rows; {summary.get('seconds_per_asset', 0.0):.1f} s/asset; "
          f"wall {summary.get('wall_seconds') or 0.0:.1f}s")
    return 0


def run_manifest(args: argparse.Namespace) -> dict:
    """Build the RunConfig, make sure the demo models exist, run; returns the run summary
    (callers such as `castex nightly` judge it). Raises CastexError on user errors."""
    from pipeline.config import RunConfig
    from pipeline.graph import run_pipeline
    from pipeline.redact import register_secrets

    options = parse_storage_options(args.storage_options)
    register_secrets(options)
    from core.presets import get_preset

    from jobs.cli import ensure_preset_models

    ensure_preset_models(get_preset(args.preset), args.models)
    config = RunConfig(manifest=args.manifest, out=args.out, preset=args.preset, storage_options=options,
                       run_id=args.run_id, models_root=args.models, device=args.device, rasterizer=args.rasterizer,
                       actors=args.actors, actor_num_cpus=args.actor_cpus, cache_dir=args.cache_dir)
    from pipeline.manifest import read_manifest

    table = read_manifest(config.manifest, options)  # fail fast, before starting Ray
    init_ray(args.num_cpus)
    return run_pipeline(config, table)


def exit_code(entry: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run an entry point: a CastexError becomes one `error [code]: ...` line (credentials masked)
    on stderr and exit code 2, never a traceback. Shared by every `castex` command."""
    try:
        return entry(args)
    except CastexError as exc:
        from pipeline.redact import redact

        print(f"error [{exc.code}]: {redact(str(exc))}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="castex run", description="Texture a manifest of meshes with Ray Data.")
    add_run_arguments(parser)
    return exit_code(run_from_args, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
