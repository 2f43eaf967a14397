"""Texture stage: a long-lived Ray Data actor that textures one asset per call and commits it.

Used as::

    ds.map_batches(TextureActor, fn_constructor_kwargs={...}, batch_size=1,
                   compute=ray.data.ActorPoolStrategy(size=N, max_tasks_in_flight_per_actor=1),
                   num_gpus=1)            # or num_cpus=<fraction> on CPU

Why an actor: loading the cascade takes far longer than a batch of one row, so each actor loads
it once (one `Texturer` per distinct *resolved* preset, kept in a small cache) and serves many
rows. Why `batch_size=1`: an asset takes seconds to minutes; one row per call keeps work spread
over actors and makes each finished asset visible (and committed) as soon as it is done.

Failure isolation: Ray Data counts errors per block and retries/aborts whole tasks, so every
per-row exception (a `CastexError` with its stable `code`, a CUDA OOM, or a bug) is caught here
and becomes a `failed` status row; the actor keeps serving. The failure is committed too, so the
index records it even if the driver dies right after.

Process deaths (OOM kill, segfault) cannot be caught here: the pipeline asks Ray to restart the
actor and retry the row a bounded number of times (`pipeline.graph._fault_tolerance`). A retry
may texture an asset whose first attempt already committed; commits are keyed by the asset's
key and content key, so the retry overwrites the same staging object and the packer indexes
the key once. `actors.faults` injects such deaths in tests.

Observability: one log line per asset, plus Ray metrics (`actors.metrics`: assets done/failed,
seconds per asset and per stage). On CPU the actor sets torch's thread count to its share of
the cores (`num_threads`, computed by the driver) so actors neither oversubscribe nor idle cores.

Layering: actors must not import `pipeline/`. The pipeline passes in what touches storage:
`commit(result_row, bundle_dir_or_None)` persists one outcome, `fetch(uri, dest_dir)` returns a
local mesh path. Prompt embeddings come from the cache the prompt stage filled
(`actors.prompt_actor`), so the text encoder is not loaded here in steady state; on a cache miss
(e.g. another node's local cache) `Texturer.encode_prompts` falls back to encoding, which is
slower but still correct.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from actors.faults import AFTER_COMMIT, AFTER_OPTIMIZE, maybe_die
from actors.metrics import AssetMetrics
from core.errors import CastexError

log = logging.getLogger("castex.texture")

CommitFn = Callable[[dict[str, Any], "str | None"], Any]
FetchFn = Callable[[str, str], "str | Path"]

# Error codes for failures that are not CastexErrors (stable: they land in the index).
CODE_OOM = "oom"
CODE_INTERNAL = "internal_error"
CODE_COMMIT = "commit_failed"

# Columns of the status rows the actor returns (small: the bundle itself went to storage).
STATUS_COLUMNS = ("asset_id", "key", "row_index", "status", "error_code", "error", "seconds", "committed")


def _local_fetch(uri: str, dest_dir: str) -> Path:
    """Default fetch for local paths / file:// URIs (the pipeline passes a real fetcher)."""
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def _scalar(value: Any) -> Any:
    """numpy scalar -> Python value (Ray hands batches over as numpy arrays)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def classify_error(exc: BaseException) -> tuple[str, str]:
    """(code, message) for an exception raised while texturing one asset."""
    if isinstance(exc, CastexError):
        return exc.code, str(exc)
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return CODE_OOM, f"{name}: {exc}"[:2000]
    return CODE_INTERNAL, f"{name}: {exc}"[:2000]


class TextureActor:
    """Textures one manifest row per call and commits the result (see module doc).

    Input rows carry `asset_id, key, row_index, mesh_uri, prompt, negative_prompt, seed,
    preset, options` (JSON text of preset overrides) and whatever else the commit callable needs
    (e.g. `content_key`); those extra columns are passed through to `commit` unchanged.
    """

    def __init__(self, *, preset: str, commit: CommitFn, models_root: str | None = None, device: str = "auto",
                 rasterizer: str = "auto", fetch: FetchFn | None = None, cache_dir: str | None = None,
                 max_faces: int = 500_000, max_texturers: int = 2, environment: str | None = None,
                 num_threads: int | None = None, metrics: AssetMetrics | None = None) -> None:
        self.default_preset = preset
        self.commit = commit
        self.models_root = models_root
        self.device = device
        self.rasterizer = rasterizer
        self.fetch = fetch or _local_fetch
        self.cache_dir = cache_dir
        self.max_faces = max_faces
        # Each Texturer holds a full cascade: on a GPU only one or two fit next to each other.
        self.max_texturers = max(1, max_texturers)
        self.environment = environment
        self._texturers: OrderedDict[str, Any] = OrderedDict()
        _setup_logging()
        self.num_threads = _limit_cpu_threads(device, num_threads)
        self.metrics = metrics if metrics is not None else AssetMetrics()
        log.info("texture actor ready: device %s, torch threads %s", device, self.num_threads or "default")

    # -- model cache ---------------------------------------------------------------------------

    def _texturer(self, preset_name: str, options: Mapping[str, Any]) -> Any:
        """The Texturer for this row's effective preset, loading (and evicting) as needed."""
        from core.presets import get_preset
        from core.texturer import Texturer

        preset = get_preset(preset_name, dict(options)).resolved(self.models_root)
        ident = json.dumps(preset.to_dict(), sort_keys=True, default=str)
        if ident in self._texturers:
            self._texturers.move_to_end(ident)
            return self._texturers[ident]
        while len(self._texturers) >= self.max_texturers:
            self._texturers.popitem(last=False)
            _free_memory()
        fg_dir = Path(self.cache_dir) / "fg" if self.cache_dir else None
        texturer = Texturer(preset, device=self.device, rasterizer=self.rasterizer, environment=self.environment,
                            fg_cache_dir=fg_dir)
        self._texturers[ident] = texturer
        return texturer

    # -- one asset -----------------------------------------------------------------------------

    def _texture_one(self, row: dict[str, Any], work_dir: Path) -> tuple[dict[str, Any], Path]:
        """Fetch, load, optimize, export; returns (result fields, bundle dir). Raises on failure."""
        from core.mesh import load_mesh

        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        mesh_path = self.fetch(str(row["mesh_uri"]), str(work_dir / "mesh"))
        timings["fetch"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mesh = load_mesh(mesh_path, max_faces=self.max_faces)  # fail fast, before loading models
        timings["load_mesh"] = time.perf_counter() - t0
        options = json.loads(row.get("options") or "{}")
        t0 = time.perf_counter()
        texturer = self._texturer(row.get("preset") or self.default_preset, options)
        timings["load_models"] = time.perf_counter() - t0
        prompt, negative = str(row["prompt"]), str(row.get("negative_prompt") or "")
        t0 = time.perf_counter()
        embeds = texturer.encode_prompts([prompt], negative,
                                         cache_dir=Path(self.cache_dir) / "embeddings" if self.cache_dir else None)
        timings["embeddings"] = time.perf_counter() - t0
        seed = int(row.get("seed") or 0)
        result = texturer.texture(mesh, embeds[prompt], seed=seed)
        timings.update(result.timings)
        maybe_die(AFTER_OPTIMIZE, row.get("asset_id"))  # test-only fault hook (no-op unless configured)
        t0 = time.perf_counter()
        meta = texturer.metadata(mesh=mesh, prompt=prompt, negative_prompt=negative, seed=seed, result=result,
                                 extra={"asset_id": row.get("asset_id"), "content_key": row.get("content_key")})
        bundle = work_dir / "bundle"
        texturer.export(bundle, mesh=mesh, result=result, metadata=meta)
        timings["export"] = time.perf_counter() - t0
        losses = {s.name: s.final_loss for s in result.optimization.stages if s.final_loss is not None}
        fields = {"timings": timings, "losses": losses, "model_ids": dict(texturer.model_ids)}
        return fields, bundle

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Texture and commit one row; never raises. Returns its status row."""
        start = time.perf_counter()
        out: dict[str, Any] = {"asset_id": row.get("asset_id"), "key": row.get("key"),
                               "row_index": row.get("row_index"), "status": "ok", "error_code": None,
                               "error": None, "committed": False}
        work_dir = Path(tempfile.mkdtemp(prefix="castex-asset-"))
        result: dict[str, Any] = dict(row)
        bundle: Path | None = None
        timings: dict[str, float] = {}
        try:
            try:
                fields, bundle = self._texture_one(row, work_dir)
                result.update(fields)
                timings = fields["timings"]
            except BaseException as exc:  # noqa: BLE001 - per-row isolation (see module doc)
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                code, message = classify_error(exc)
                out.update(status="failed", error_code=code, error=message)
                if code == CODE_OOM:
                    _free_memory()
                bundle = None
            seconds = time.perf_counter() - start
            result.update(status=out["status"], error_code=out["error_code"], error=out["error"],
                          seconds=seconds, gpu_seconds=seconds)
            try:
                self.commit(result, str(bundle) if bundle is not None else None)
                out["committed"] = True
                maybe_die(AFTER_COMMIT, row.get("asset_id"))  # test-only fault hook
            except Exception as exc:  # noqa: BLE001 - storage trouble: the driver records the row
                code, message = classify_error(exc)
                out.update(status="failed", error_code=CODE_COMMIT, error=f"commit failed: {message}")
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        out["seconds"] = time.perf_counter() - start
        self.metrics.record_asset(preset=str(row.get("preset") or self.default_preset), status=out["status"],
                                  seconds=out["seconds"], timings=timings)
        if out["status"] == "ok":
            stages = " ".join(f"{k} {timings[k]:.1f}s" for k in ("stage_1", "stage_2", "export") if k in timings)
            log.info("asset %s ok in %.1fs (%s)", out["asset_id"], out["seconds"], stages)
        else:
            log.warning("asset %s failed in %.1fs [%s]: %s", out["asset_id"], out["seconds"], out["error_code"],
                        out["error"])
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        """One status row per input row (batch_size=1 in the pipeline, but any size works)."""
        n = len(next(iter(batch.values()))) if batch else 0
        rows = [{name: _scalar(values[i]) for name, values in batch.items()} for i in range(n)]
        results = [self.process_row(row) for row in rows]
        return {name: [r[name] for r in results] for name in STATUS_COLUMNS}


def _setup_logging() -> None:
    """Ray workers leave the root logger at WARNING: make the per-asset INFO lines visible."""
    logger = logging.getLogger("castex")
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def _limit_cpu_threads(device: str, num_threads: int | None) -> int | None:
    """On CPU, give torch this actor's share of the cores (`num_threads`, from the driver).

    Why: every actor process otherwise starts one intra-op thread per core (or whatever
    OMP_NUM_THREADS Ray set from a fractional CPU request, often 1): N actors on N cores then
    oversubscribe, or one actor alone leaves cores idle. GPU actors keep torch's default.
    Returns the thread count set, or None when nothing was changed.
    """
    if num_threads is None or num_threads < 1:
        return None
    import os

    import torch

    from core.texturer import resolve_device

    if resolve_device(device).type != "cpu":
        return None
    threads = max(1, min(int(num_threads), os.cpu_count() or 1))
    torch.set_num_threads(threads)
    return threads


def _free_memory() -> None:
    """Release cached allocator blocks after an OOM or an evicted model."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass
