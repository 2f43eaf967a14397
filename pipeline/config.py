"""`RunConfig`: every knob of one batch run, in one place the driver, CLI and tests share."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import __version__


@dataclass
class RunConfig:
    """What `pipeline.graph.run_pipeline` needs.

    `actors=None` picks one texture actor per GPU, or one per two CPUs on CPU. `actor_num_cpus`
    is the CPU share each CPU actor reserves: fractional on purpose, because actors that take
    every logical CPU starve Ray Data's read/map tasks and a small cluster hangs.

    `cache_dir` holds prompt embeddings and the FG table. It must be visible to every worker:
    a local directory works on a single node (the default, a fresh temp dir per run); on a
    multi-node cluster point it at a shared mount, otherwise texture actors on other nodes miss
    the cache and fall back to loading the text encoder themselves (slower, still correct).
    `models_root` likewise must exist on every node.
    """

    manifest: str
    out: str
    preset: str = "cpu-demo"
    storage_options: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    models_root: str | None = None
    device: str = "auto"
    rasterizer: str = "auto"
    actors: int | None = None
    actor_num_cpus: float = 0.5
    cache_dir: str | None = None
    max_faces: int = 500_000
    default_seed: int = 0
    shard_count: int = 256
    shard_bytes: int = 1 << 30
    pack_every: int = 64
    # Ray retries a row this many times when its actor *process* dies inside it (OOM kill,
    # segfault, preemption); the actor itself is always restarted. A row that kills its actor on
    # every attempt becomes a `failed` row (`actor_died`) instead of looping forever.
    actor_task_retries: int = 2
    # Manifests up to this many valid rows get their content keys (fetch + sha256 per mesh) on
    # driver threads: a Ray map starts a worker process per concurrent task, which costs more
    # than hashing a few meshes. Larger manifests use the Ray map.
    driver_hash_max_rows: int = 64
    # Separate prompt-encoding stage before texturing: None = on GPU runs only (it keeps the big
    # text encoder out of the texture actors' GPU memory). On CPU it would cost one more actor
    # start-up, serially, while the texture actors' encode-on-miss costs well under a second.
    prompt_stage: bool | None = None
    pipeline_version: str = __version__
    # Per-asset time used for Ray Data's no-progress timeout: preset.expected_seconds_gpu times
    # this factor on CPU (CPU runs are far slower than the GPU estimate).
    cpu_slowdown: float = 20.0
    # torch threads per CPU actor; None = the cluster's CPUs shared evenly over the actors. Fixing
    # it (e.g. 1) holds each actor's compute constant as actors are added, as a GPU per actor does.
    cpu_threads_per_actor: int | None = None

    def resolved_models_root(self) -> str:
        """Absolute, because Ray workers need not share the driver's working directory."""
        root = self.models_root or os.environ.get("CASTEX_MODELS", "models")
        return root if "://" in root else str(Path(root).resolve())

    def resolved_cache_dir(self) -> str:
        if self.cache_dir:
            return str(Path(self.cache_dir).resolve())
        return tempfile.mkdtemp(prefix="castex-run-cache-")
