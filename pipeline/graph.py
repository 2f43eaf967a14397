"""The driver flow of a batch run: manifest -> content keys -> resume -> prompts -> textures -> shards.

    read + validate manifest (driver)            invalid rows -> failed records
    content keys: fetch + sha256 mesh            unreachable meshes -> failed records
      (driver threads for small manifests, a Ray map for large ones)
    resume: content key committed under OUT?     -> skipped records (already_committed)
    prompt stage (PromptActor pool, GPU runs)    fills the embedding cache once per prompt
    texture stage (TextureActor pool)            each asset committed to staging when done
    pack shards periodically + at the end, write summary.json and _SUCCESS

Every manifest row ends up in the run's index exactly once: validation failures, hashing
failures and resume skips are written as one records part before GPU work; textured rows are
committed by the actors (ok or failed) and indexed by the packer; a row whose commit itself
failed, or whose actor process died on every attempt (`actor_died`), is written by the driver at
the end unless an attempt committed it. `write_summary` refuses to mark the run complete if the
count does not match.

Crashes. A texture actor whose process dies is restarted and its row retried
(`RunConfig.actor_task_retries`); a retry commits under the same staging name, so the asset is
indexed once. After the driver dies, the same command again (a new run id) skips every asset
whose content an earlier run committed, staged or packed (`pipeline.index.read_merged_index`
gives one row per asset across runs); the same command with the crashed run's `--run-id`
instead finishes that run: rows it indexed or staged are not redone.

Limitations (documented, not hidden): the driver holds the validated manifest in memory (fine
for ~1e6 rows); remote meshes are downloaded twice (once to hash, once to texture); rows with
equal content keys inside one run are all textured and the packer keeps one (`duplicate_content`);
resuming a run id assumes the same manifest.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.config import RunConfig
from pipeline.content_key import content_key, sha256_file
from pipeline.fetch import fetch_mesh
from pipeline.index import committed_content_keys, read_index, skipped_record, write_records_part, write_summary
from pipeline.layout import check_run_id, new_run_id, parse_staging_name, staging_dir
from pipeline.manifest import ManifestRow, read_manifest, validate_rows
from pipeline.records import STATUS_FAILED, STATUS_OK, AssetRecord
from pipeline.redact import redact
from pipeline.shards import ShardConfig, ShardPacker, commit_asset, commit_bundle_dir
from pipeline.storage import Storage

log = logging.getLogger("castex.run")

CODE_HASH = "hash_failed"
# A row whose texture task produced no status row: its actor process died on every attempt
# (`RunConfig.actor_task_retries` + 1 times), e.g. an asset that reliably gets OOM-killed.
CODE_ACTOR_DIED = "actor_died"


# -- per-row helpers that run on workers (module level so they pickle) ----------------------------


def row_to_dict(row: ManifestRow, default_seed: int) -> dict[str, Any]:
    """A validated row as a flat Ray Data row (options as JSON text: mixed-type values)."""
    return {"row_index": row.row_index, "asset_id": row.asset_id, "key": row.key, "mesh_uri": row.mesh_uri,
            "prompt": row.prompt, "negative_prompt": row.negative_prompt,
            "seed": row.seed if row.seed is not None else default_seed, "preset": row.preset,
            "options": json.dumps(row.options, sort_keys=True) if row.options else ""}


def compute_content_key(row: dict[str, Any], *, storage_options: Mapping[str, Any] | None,
                        pipeline_version: str) -> dict[str, Any]:
    """Fetch the mesh, hash it and derive the row's content key; errors become columns.

    The preset and model ids go in *unresolved* (`{models}` templates), so a result does not
    depend on where a worker keeps its models.
    """
    from core.presets import get_preset

    out = dict(row)
    out["content_key"], out["error_code"], out["error"] = "", "", ""
    tmp = tempfile.mkdtemp(prefix="castex-hash-")
    try:
        path = fetch_mesh(row["mesh_uri"], tmp, storage_options, with_obj_siblings=False)
        preset = get_preset(row["preset"], json.loads(row["options"] or "{}"))
        out["content_key"] = content_key(sha256_file(path), row["prompt"], row["negative_prompt"],
                                         preset.to_dict(), int(row["seed"]), preset.model_ids, pipeline_version)
    except Exception as exc:  # noqa: BLE001 - per-row outcome
        out["error_code"] = getattr(exc, "code", CODE_HASH)
        out["error"] = redact(f"{exc}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _record_from_result(result: Mapping[str, Any], run_id: str, pipeline_version: str) -> AssetRecord:
    options = result.get("options") or ""
    return AssetRecord(
        run_id=run_id, asset_id=result.get("asset_id"), key=result.get("key"), status=result["status"],
        row_index=result.get("row_index"), error_code=result.get("error_code") or None,
        error=result.get("error") or None, mesh_uri=result.get("mesh_uri"), prompt=result.get("prompt"),
        negative_prompt=result.get("negative_prompt"), seed=result.get("seed"), preset=result.get("preset"),
        options=json.loads(options) if options else {}, content_key=result.get("content_key") or None,
        model_ids=dict(result.get("model_ids") or {}), pipeline_version=pipeline_version,
        timings={k: float(v) for k, v in (result.get("timings") or {}).items()},
        losses={k: float(v) for k, v in (result.get("losses") or {}).items()},
        gpu_seconds=float(result.get("gpu_seconds") or 0.0), finished_at=time.time())


class Committer:
    """The `commit` callable handed to `TextureActor`: stages one outcome under OUT.

    Picklable (it travels to the actors); the `Storage` is opened lazily on the worker.
    """

    def __init__(self, out: str, storage_options: Mapping[str, Any] | None, run_id: str,
                 pipeline_version: str) -> None:
        self.out = out
        self.storage_options = dict(storage_options or {})
        self.run_id = run_id
        self.pipeline_version = pipeline_version
        self._storage: Storage | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_storage"] = None
        return state

    def __call__(self, result: dict[str, Any], bundle_dir: str | None) -> str:
        if self._storage is None:
            self._storage = Storage(self.out, self.storage_options)
        record = _record_from_result(result, self.run_id, self.pipeline_version)
        if record.status == STATUS_OK:
            if bundle_dir is None:
                raise ValueError("an ok result needs its bundle directory")
            return commit_bundle_dir(self._storage, record, bundle_dir)
        return commit_asset(self._storage, record.with_(status=STATUS_FAILED))


# -- the driver ---------------------------------------------------------------------------------


def _failed(row: ManifestRow, run_id: str, code: str, error: str) -> AssetRecord:
    return AssetRecord.from_row(row, run_id, STATUS_FAILED, error_code=code, error=error, finished_at=time.time())


def _use_gpu(device: str) -> bool:
    import ray

    if device.startswith("cuda"):
        return True
    if device == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return False


def _resources(config: RunConfig, gpu: bool) -> dict[str, Any]:
    """map_batches resources: one GPU per actor, or a CPU fraction (never num_gpus=0)."""
    return {"num_gpus": 1} if gpu else {"num_cpus": config.actor_num_cpus}


def _actor_count(config: RunConfig, gpu: bool, rows: int) -> int:
    import ray

    if config.actors:
        n = config.actors
    elif gpu:
        n = int(ray.cluster_resources().get("GPU", 1))
    else:
        n = max(1, int(ray.cluster_resources().get("CPU", 2)) // 2)
    return max(1, min(n, rows))


def _set_timeout(presets: set[str], config: RunConfig, gpu: bool) -> float:
    """No-progress timeout from the slowest preset's expected time per asset (+ model load)."""
    from ray.data import DataContext

    from core.presets import get_preset

    expected = max((get_preset(p).expected_seconds_gpu for p in presets), default=0.0) or 600.0
    if not gpu:
        expected *= config.cpu_slowdown
    timeout = max(1800.0, 3.0 * expected + 600.0)
    DataContext.get_current().execution_no_progress_timeout_s = timeout
    return timeout


def run_pipeline(config: RunConfig, table: pa.Table | None = None) -> dict[str, Any]:
    """Run one batch job end to end (Ray must already be initialised); returns the summary.

    `table` is the manifest when the caller already read it (the CLI does, to fail fast on a
    bad manifest before starting Ray)."""
    from actors.prompt_actor import PromptActor
    from actors.texture_actor import TextureActor
    from core.presets import PRESETS, get_preset

    started = time.time()
    run_id = check_run_id(config.run_id or new_run_id())
    storage = Storage(config.out, config.storage_options)
    models_root = config.resolved_models_root()
    cache_dir = config.resolved_cache_dir()

    if table is None:
        table = read_manifest(config.manifest, config.storage_options)
    valid, errors = validate_rows(table, known_presets=set(PRESETS),
                                  validate_overrides=lambda name, o: get_preset(name, o),
                                  default_preset=config.preset)
    pre_records = [AssetRecord.from_error(e, run_id) for e in errors]
    log.info("run %s: %d manifest rows, %d valid, %d rejected by validation", run_id, table.num_rows,
             len(valid), len(errors))
    # Resuming a run id (the same command with --run-id after a crash, same manifest): rows this
    # run already indexed are done, and assets it staged are indexed by the final pack; neither
    # is recorded or textured again (a `skipped` row for a staged asset of the same key would
    # make the packer delete that asset as already indexed).
    done_rows, staged_keys = _previous_attempts(storage, run_id)
    if done_rows or staged_keys:
        log.info("run %s: resuming: %d row(s) already indexed, %d asset(s) staged by an earlier attempt",
                 run_id, len(done_rows), len(staged_keys))
        pre_records = [r for r in pre_records if r.row_index not in done_rows]
        valid = [r for r in valid if r.row_index not in done_rows and r.key not in staged_keys]

    # Content keys: the mesh bytes must be read, which is I/O + hashing.
    by_index = {row.row_index: row for row in valid}
    phases: dict[str, float] = {"validate": time.time() - started}
    t0 = time.perf_counter()
    keyed = _content_keys([row_to_dict(r, config.default_seed) for r in valid], config)
    phases["content_keys"] = time.perf_counter() - t0

    # This run's own staged assets are left out: the final pack moves them into a shard, so a
    # `skipped` row pointing at their staging object would dangle (the duplicate is textured and
    # the packer dedupes it as `duplicate_content`, with a pointer into the shard).
    committed = {ck: loc for ck, loc in committed_content_keys(storage).items()
                 if not (loc.staged and loc.run_id == run_id)}
    to_run: list[dict[str, Any]] = []
    for item in keyed:
        row = by_index[item["row_index"]]
        if item["error_code"]:
            pre_records.append(_failed(row, run_id, item["error_code"], item["error"]))
        elif item["content_key"] in committed:
            pre_records.append(skipped_record(row, run_id, committed[item["content_key"]])
                               .with_(content_key=item["content_key"], finished_at=time.time()))
        else:
            to_run.append({k: v for k, v in item.items() if k not in ("error_code", "error")})
    # A rejected row can share its key with a row being textured (a duplicate asset_id). The
    # packer treats a staged failure whose key is already indexed as debris, so such records are
    # written only after the final pack; all others go out now, before any GPU work.
    running_keys = {r["key"] for r in to_run} | staged_keys
    deferred = [r for r in pre_records if r.key in running_keys]
    early = [r for r in pre_records if r.key not in running_keys]
    if early:
        write_records_part(storage, run_id, early)
    log.info("run %s: %d to texture, %d skipped (already committed), %d failed before texturing", run_id,
             len(to_run), sum(r.status == "skipped" for r in pre_records),
             sum(r.status == STATUS_FAILED for r in pre_records))

    packer = ShardPacker(storage, run_id, ShardConfig(config.shard_count, config.shard_bytes))
    statuses: list[dict[str, Any]] = []
    if to_run:
        gpu = _use_gpu(config.device)
        device = config.device if config.device != "auto" else ("cuda" if gpu else "cpu")
        timeout = _set_timeout({r["preset"] for r in to_run}, config, gpu)
        log.info("run %s: no-progress timeout %.0fs, device %s", run_id, timeout, device)
        t0 = time.perf_counter()
        if config.prompt_stage if config.prompt_stage is not None else gpu:
            _prompt_stage(to_run, models_root, cache_dir, config, gpu, device, PromptActor)
        phases["prompts"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        statuses = _texture_stage(to_run, run_id, models_root, cache_dir, config, gpu, device, packer,
                                  TextureActor)
        phases["textures"] = time.perf_counter() - t0
    t0 = time.perf_counter()

    # Rows the actors could not commit (storage trouble) or never returned: the driver indexes them.
    returned = {s["row_index"]: s for s in statuses}
    lost = []
    for item in to_run:
        s = returned.get(item["row_index"])
        if s is None:
            lost.append(_failed(by_index[item["row_index"]], run_id, CODE_ACTOR_DIED,
                                f"the texture actor's process died on each of {config.actor_task_retries + 1} "
                                f"attempt(s) at this asset (see the Ray worker logs)"))
        elif not s["committed"]:
            lost.append(_failed(by_index[item["row_index"]], run_id, s["error_code"] or "commit_failed",
                                s["error"] or "not committed"))
    packer.pack(final=True)
    # An attempt may have committed the asset before its process died (or before a later
    # attempt's commit failed): then the final pack has just indexed it; never index it twice.
    indexed = packer.indexed_keys()
    lost = [r for r in lost if r.key not in indexed]
    if lost or deferred:
        write_records_part(storage, run_id, lost + deferred)

    finished = time.time()
    summary = write_summary(storage, run_id, started_at=started, finished_at=finished,
                            expected_rows=table.num_rows,
                            extra={"preset": config.preset, "manifest": config.manifest,
                                   "pipeline_version": config.pipeline_version})
    counts = summary["counts"]
    textured = [s for s in statuses if s["status"] == STATUS_OK]
    per_asset = sum(s["seconds"] for s in textured) / len(textured) if textured else 0.0
    log.info("run %s done: %d ok, %d failed, %d skipped of %d rows in %.1fs (%.1f s/asset)", run_id,
             counts["ok"], counts["failed"], counts["skipped"], counts["total"], finished - started, per_asset)
    phases["finish"] = time.perf_counter() - t0
    summary["seconds_per_asset"] = per_asset
    summary["phase_seconds"] = phases  # driver phases (not in summary.json): where wall time went
    return summary


def _previous_attempts(storage: Storage, run_id: str) -> tuple[set[int], set[str]]:
    """(row indexes in the run's index, keys in its staging area): what earlier attempts of
    this run id left behind; both empty for a new run."""
    table = read_index(storage, run_ids=[run_id], columns=("row_index",))
    done = {i for i in table.column("row_index").to_pylist() if i is not None}
    staged = {n.key for info in storage.list(staging_dir(run_id), suffix=".tar")
              if (n := parse_staging_name(info.path.rsplit("/", 1)[-1])) is not None}
    return done, staged


def _content_keys(items: list[dict[str, Any]], config: RunConfig) -> list[dict[str, Any]]:
    """`compute_content_key` for every row, sorted by row index: on driver threads for small
    manifests (`RunConfig.driver_hash_max_rows`), else as a Ray map over the rows."""
    import ray

    if not items:
        return []
    fn = functools.partial(compute_content_key, storage_options=config.storage_options,
                           pipeline_version=config.pipeline_version)
    if len(items) <= config.driver_hash_max_rows:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
            keyed = list(pool.map(fn, items))
    else:
        ds = ray.data.from_items(items, override_num_blocks=min(len(items), 64))
        keyed = ds.map(compute_content_key, fn_kwargs={"storage_options": config.storage_options,
                                                       "pipeline_version": config.pipeline_version},
                       num_cpus=0.25).take_all()
    return sorted(keyed, key=lambda r: r["row_index"])


def _prompt_stage(rows: list[dict[str, Any]], models_root: str, cache_dir: str, config: RunConfig, gpu: bool,
                  device: str, actor_cls: type) -> None:
    """Encode each (text encoder, text) pair once into the shared embedding cache."""
    import ray

    from core.presets import get_preset

    pairs: dict[tuple[str, str], None] = {}
    for r in rows:
        encoder = get_preset(r["preset"], json.loads(r["options"] or "{}")).resolved(models_root).text_encoder
        pairs[(encoder, r["prompt"])] = None
        pairs[(encoder, r["negative_prompt"] or "")] = None
    items = [{"encoder": e, "text": t} for e, t in pairs]
    t0 = time.perf_counter()
    ds = _map_batches(ray.data.from_items(items), actor_cls,
                      fn_constructor_kwargs={"cache_dir": str(Path(cache_dir) / "embeddings"), "device": device},
                      batch_size=64, compute=ray.data.ActorPoolStrategy(size=1),
                      **_resources(config, gpu), **_fault_tolerance(config))
    try:
        out = ds.take_all()
    except Exception as exc:  # noqa: BLE001 - the cache is an optimization, see below
        # Texture actors encode on a cache miss themselves (slower, still correct), so a dead
        # prompt stage must not sink the run.
        log.warning("prompt stage failed, texture actors will encode prompts themselves: %s",
                    redact(f"{type(exc).__name__}: {exc}"))
        return
    failed = [o for o in out if o["status"] == "failed"]
    for o in failed[:5]:
        log.warning("prompt stage: %s", redact(o["error"]))
    log.info("prompt stage: %d text(s), %d encoded, %d failed in %.1fs", len(items),
             sum(o["status"] == "encoded" for o in out), len(failed), time.perf_counter() - t0)


def _fault_tolerance(config: RunConfig) -> dict[str, Any]:
    """Actor options for map_batches: restart a crashed actor, retry its row a bounded number of times.

    Ray Data's own default is `max_restarts=-1, max_task_retries=-1` (actor_pool_map_operator.
    `_apply_default_remote_args`): a row that kills its actor every time (a mesh that gets the
    process OOM-killed) would be retried forever and the run would never end. Only process
    deaths are retried: exceptions never leave the actors' per-row isolation.

    Ray 2.60 has no named map_batches parameter for these: they go through `**ray_remote_args`,
    which warns that it is deprecated (removal announced for 2.64); `_map_batches` silences that
    one warning. Revisit when upgrading: the bound must then move to whatever replaces it.
    """
    return {"max_restarts": -1, "max_task_retries": max(0, config.actor_task_retries)}


def _map_batches(ds: Any, fn: type, **kwargs: Any) -> Any:
    """`ds.map_batches` without the deprecation warning of `**ray_remote_args` (see `_fault_tolerance`)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
        return ds.map_batches(fn, **kwargs)


def _cpu_threads(gpu: bool, n_actors: int, fixed: int | None = None) -> int | None:
    """torch threads per CPU actor: `fixed`, else the cluster's CPUs shared evenly (None on GPU:
    torch default).

    An approximation on multi-node clusters (actors are not spread evenly per node); the actor
    caps it at its machine's core count."""
    import ray

    if gpu:
        return None
    if fixed is not None:
        return max(1, int(fixed))
    return max(1, int(ray.cluster_resources().get("CPU", 1) // max(1, n_actors)))


def _texture_stage(rows: list[dict[str, Any]], run_id: str, models_root: str, cache_dir: str, config: RunConfig,
                   gpu: bool, device: str, packer: ShardPacker, actor_cls: type) -> list[dict[str, Any]]:
    """Texture every row on an actor pool; pack shards as results stream back."""
    import ray

    n_actors = _actor_count(config, gpu, len(rows))
    committer = Committer(config.out, config.storage_options, run_id, config.pipeline_version)
    kwargs = {"preset": config.preset, "commit": committer, "models_root": models_root, "device": device,
              "rasterizer": config.rasterizer, "cache_dir": cache_dir, "max_faces": config.max_faces,
              "fetch": functools.partial(fetch_mesh, storage_options=config.storage_options),
              "num_threads": _cpu_threads(gpu, n_actors, config.cpu_threads_per_actor)}
    # One block per row so rows spread over the actors instead of queueing behind one.
    ds = _map_batches(ray.data.from_items(rows, override_num_blocks=len(rows)), actor_cls,
                      fn_constructor_kwargs=kwargs, batch_size=1,
                      compute=ray.data.ActorPoolStrategy(size=n_actors, max_tasks_in_flight_per_actor=1),
                      **_resources(config, gpu), **_fault_tolerance(config))
    # A block is one row, so a block whose task failed for good (its actor died on every attempt)
    # is one row: drop it instead of aborting the run; the driver records it as `actor_died`.
    ds.context.max_errored_blocks = len(rows)
    log.info("texture stage: %d asset(s) on %d actor(s)", len(rows), n_actors)
    statuses: list[dict[str, Any]] = []
    since_pack = 0
    for s in ds.iter_rows():
        s = dict(s)
        statuses.append(s)
        if s["status"] == STATUS_OK:
            log.info("[%d/%d] %s ok (%.1fs)", len(statuses), len(rows), s["asset_id"], s["seconds"])
        else:
            log.info("[%d/%d] %s failed [%s]: %s", len(statuses), len(rows), s["asset_id"], s["error_code"],
                     s["error"])
        since_pack += 1
        if since_pack >= config.pack_every:
            packer.pack()
            since_pack = 0
    return statuses


__all__ = ["Committer", "RunConfig", "compute_content_key", "run_pipeline", "row_to_dict"]
