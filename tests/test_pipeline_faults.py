"""Fault acceptance of the batch pipeline on local Ray (2 CPUs, shipped demo cascade, seconds per asset).

(a) A texture actor's process dies inside an asset (SIGKILL through the test-only hook in
    `actors.faults`): Ray restarts the actor and retries the row a bounded number of times; the
    run completes and every manifest row is in the index exactly once, a row that kills its actor
    on every attempt as `failed` / `actor_died`.
(b) The driver (and the local Ray it started) is SIGKILLed after at least one asset committed:
    the same command again textures only the missing rows, the merged index holds each row once,
    and after `castex gc` no temp or unreferenced file is left under OUT.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.faults import AFTER_COMMIT, AFTER_OPTIMIZE, ENV_VAR, crash_count
from core.examples import write_example_mesh
from pipeline.config import RunConfig
from pipeline.index import committed_content_keys, list_runs, read_index, read_merged_index
from pipeline.layout import parse_staging_name, success_path
from pipeline.storage import TMP_MARKER, Storage

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FAST = {"stage_1.steps": 2, "stage_2.steps": 1, "texture_size": 32, "render_size": 32, "preview_size": 32,
        "views": 1, "preview_views": 1}
BUNDLE_EXTS = ("albedo.png", "orm.png", "normal.png", "glb", "preview.png", "json")
FAULTS = {"crash-mid": {"point": AFTER_OPTIMIZE, "times": 1},
          "crash-commit": {"point": AFTER_COMMIT, "times": 1},
          "poison": {"point": AFTER_OPTIMIZE, "times": 99}}


@pytest.fixture
def ray_with_faults(tmp_path_factory, monkeypatch):
    """Local Ray whose workers see the fault spec (markers count the crashes)."""
    ray = pytest.importorskip("ray")
    markers = tmp_path_factory.mktemp("fault-markers")
    spec = {"dir": str(markers), "faults": FAULTS}
    monkeypatch.setenv("RAY_worker_niceness", "0")  # see _env()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", ENV_VAR: json.dumps(spec)}})
    yield markers
    ray.shutdown()


def _manifest(tmp: Path, rows: list[tuple[str, str, str]], extra: list[tuple[str, str, str, str]] = ()) -> str:
    """Parquet manifest of (asset_id, example mesh, prompt) rows with FAST options, plus raw rows."""
    meshes = tmp / "meshes"
    meshes.mkdir(exist_ok=True)
    ids, uris, prompts, options = [], [], [], []
    for asset_id, mesh, prompt in rows:
        path = meshes / f"{mesh}.obj"
        if not path.exists():
            write_example_mesh(mesh, path)
        ids.append(asset_id), uris.append(str(path)), prompts.append(prompt), options.append(json.dumps(FAST))
    for asset_id, uri, prompt, opts in extra:
        ids.append(asset_id), uris.append(uri), prompts.append(prompt), options.append(opts)
    table = pa.table({"asset_id": ids, "mesh_uri": uris, "prompt": prompts,
                      "seed": pa.array(list(range(len(ids))), pa.int64()), "options": options})
    path = tmp / "manifest.parquet"
    pq.write_table(table, path)
    return str(path)


def _shard_member_counts(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for shard in out.glob("run=*/shards/*.tar"):
        with tarfile.open(shard) as tar:
            for name in tar.getnames():
                counts[name] = counts.get(name, 0) + 1
    return counts


# -- (a) actor process killed mid-asset ----------------------------------------------------------


def test_actor_killed_mid_asset_is_restarted_and_row_retried(ray_with_faults, models_root, tmp_path):
    from pipeline.graph import run_pipeline

    markers = ray_with_faults
    manifest = _manifest(tmp_path, [("plain", "vase", "a red vase"), ("crash-mid", "box", "a crate"),
                                    ("crash-commit", "torus", "a ring"), ("poison", "sphere", "a ball")])
    out = tmp_path / "out"
    config = RunConfig(manifest=manifest, out=str(out), run_id="faults", models_root=models_root, device="cpu",
                       rasterizer="torch", actors=2, cache_dir=str(tmp_path / "cache"), pack_every=1,
                       actor_task_retries=1)
    t0 = time.perf_counter()
    summary = run_pipeline(config)
    print(f"fault (a) run: {time.perf_counter() - t0:.1f}s")

    # The hooks really fired: once each for the crash-once rows, on every attempt for the poison row.
    assert crash_count(markers, "crash-mid", AFTER_OPTIMIZE) == 1
    assert crash_count(markers, "crash-commit", AFTER_COMMIT) == 1
    assert crash_count(markers, "poison", AFTER_OPTIMIZE) == config.actor_task_retries + 1

    assert summary["counts"] == {"total": 4, "ok": 3, "failed": 1, "skipped": 0}
    assert (out / success_path("faults")).is_file()
    index = read_index(str(out), run_ids=["faults"]).to_pylist()
    assert sorted(r["row_index"] for r in index) == [0, 1, 2, 3]  # every row exactly once
    by_id = {r["asset_id"]: r for r in index}
    assert len(by_id) == 4
    for asset_id in ("plain", "crash-mid", "crash-commit"):
        assert by_id[asset_id]["status"] == "ok", by_id[asset_id]
    assert (by_id["poison"]["status"], by_id["poison"]["error_code"]) == ("failed", "actor_died")
    assert "died" in by_id["poison"]["error"]

    # The asset committed before its actor died (then textured and committed again by the retry)
    # is stored once: every member of every ok asset is in exactly one shard, staging is empty.
    counts = _shard_member_counts(out)
    for asset_id in ("plain", "crash-mid", "crash-commit"):
        key = by_id[asset_id]["key"]
        assert all(counts.get(f"{key}.{ext}") == 1 for ext in BUNDLE_EXTS), (asset_id, counts)
    assert not any(name.startswith(by_id["poison"]["key"] + ".") for name in counts)
    assert not list((out / "run=faults" / "staging").glob("*.tar"))


# -- (b) driver killed mid-run -------------------------------------------------------------------


RUN_MARKER = "CASTEX_TEST_RUN"  # environment variable that tags every process of one test run


def _run_processes(marker: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries RUN_MARKER=marker (reads /proc).

    Why the environment and not the process group: the raylet can start workers outside the driver's
    process group, so a `killpg` of the driver can leave an actor alive for a moment, and one that
    was inside a commit finishes it after the kill. Every process of the run inherits the driver's
    environment, so the marker finds them all.
    """
    tag = f"{RUN_MARKER}={marker}".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
            if stat[stat.rfind(")") + 2:].split()[0] == "Z":
                continue
            if tag in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue
    return pids


def _kill_run(marker: str, timeout: float = 60.0) -> None:
    """SIGKILL every process of the run (a machine crash of driver, raylet, GCS and workers) and wait."""
    deadline = time.monotonic() + timeout
    while pids := _run_processes(marker):
        assert time.monotonic() < deadline, f"processes of the killed run survive: {pids}"
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def _committed_ok(out: Path) -> int:
    """Assets committed so far by any run: ok staging objects plus shards' assets (by listing)."""
    staged = [p for p in out.glob("run=*/staging/*.tar") if (n := parse_staging_name(p.name)) and n.ok]
    return len(staged) + len(list(out.glob("run=*/shards/*.tar")))


def _run_cmd(manifest: str, out: Path, models: str, cache: Path) -> list[str]:
    return [sys.executable, "-m", "jobs.run", "--manifest", manifest, "--out", str(out), "--models", models,
            "--device", "cpu", "--rasterizer", "torch", "--actors", "1", "--num-cpus", "2",
            "--cache-dir", str(cache)]


def _env(marker: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", ENV_VAR)}
    if marker:
        env[RUN_MARKER] = marker
    # Ray starts workers at niceness 15; on a shared test machine they then starve for minutes.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", RAY_worker_niceness="0")
    return env


def test_driver_killed_then_rerun_textures_only_missing_rows(models_root, tmp_path, capsys):
    good = [("vase-1", "vase", "a red vase"), ("box-1", "box", "a crate"), ("torus-1", "torus", "a ring"),
            ("sphere-1", "sphere", "a ball"), ("vase-2", "vase", "a blue vase")]
    manifest = _manifest(tmp_path, good, extra=[("empty-prompt", str(tmp_path / "meshes" / "box.obj"), " ", "")])
    out, cache = tmp_path / "out", tmp_path / "cache"
    cmd = _run_cmd(manifest, out, models_root, cache)

    # First run: its own process group (driver + the local Ray it starts), killed as a whole.
    log1 = tmp_path / "run1.log"
    with open(log1, "wb") as log:
        marker = f"{os.getpid()}-{time.time_ns()}"
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(marker), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 900  # generous: the machine may be shared
    while _committed_ok(out) < 1:
        if proc.poll() is not None:
            pytest.fail(f"first run ended before committing (rc {proc.returncode}):\n{log1.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"nothing committed in time:\n{log1.read_text()[-4000:]}")
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    _kill_run(marker)  # raylet, GCS and workers of the killed run, in its process group or not

    (first,) = list_runs(Storage(str(out)))
    assert not (out / success_path(first)).exists(), "the first run finished before it was killed"
    committed_first = set(committed_content_keys(str(out)))
    assert 1 <= len(committed_first) < len(good), "kill must land after the first commit and before the end"
    # Where the kill lands is up to the scheduler; make sure the debris a kill inside a write
    # leaves is present too: a temp file of an interrupted commit, a shard without index part.
    run1 = out / f"run={first}"
    planted = [run1 / "staging" / f"{'0' * 64}.half-written.tar.tmp-{'1' * 32}",
               run1 / "shards" / "shard-09999-deadbeef.tar"]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")

    # Second run: the same command, a new run id; only the rows without a committed bundle run.
    log2 = tmp_path / "run2.log"
    with open(log2, "wb") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, timeout=1200,
                            start_new_session=True).returncode
    output = log2.read_text(errors="replace")
    assert rc == 0, output[-4000:]
    printed = re.search(r"^run (\S+): (\d+) ok, (\d+) failed, (\d+) skipped of (\d+) rows", output, re.M)
    assert printed, output[-4000:]
    second, ok, failed, skipped, total = printed.group(1), *map(int, printed.groups()[1:])
    figures = f"second run {second}: textured {ok}, skipped {skipped} (first run had committed {len(committed_first)})"
    print(figures)
    assert (ok, failed, skipped, total) == (len(good) - len(committed_first), 1, len(committed_first), 6)
    assert set(list_runs(Storage(str(out)))) == {first, second}
    assert (out / success_path(second)).is_file()

    rows2 = read_index(str(out), run_ids=[second]).to_pylist()
    assert sorted(r["row_index"] for r in rows2) == list(range(6))
    assert {r["content_key"] for r in rows2 if r["status"] == "skipped"} == committed_first
    assert all(r["error_code"] == "already_committed" for r in rows2 if r["status"] == "skipped")

    # gc removes the crashed run's debris (temp files, orphan shards, packed staging).
    from jobs.cli import main as cli

    capsys.readouterr()
    assert cli(["gc", "--out", str(out), "--delete", "--older-than-hours", "0"]) == 0
    gc_output = capsys.readouterr().out
    print(gc_output)
    for path in planted:
        assert f"removed: {path.relative_to(out)}" in gc_output and not path.exists()
    assert not [p for p in out.rglob("*") if TMP_MARKER in p.name]

    # No bundle was textured twice: each content key is ok in one index row or one staging object.
    everything = read_index(str(out)).to_pylist()
    ok_keys = [r["content_key"] for r in everything if r["status"] == "ok"]
    ok_keys += [n.content_key for p in out.glob("run=*/staging/*.tar") if (n := parse_staging_name(p.name)) and n.ok]
    assert len(ok_keys) == len(set(ok_keys)) == len(good)

    # The merged view: every manifest row once, each ok/skipped row pointing at a readable bundle.
    merged = read_merged_index(str(out)).to_pylist()
    assert sorted(r["row_index"] for r in merged) == list(range(6))
    assert len({r["key"] for r in merged}) == 6
    referenced = set()
    for r in merged:
        if r["status"] == "failed":
            assert r["error_code"] == "empty_field"
            continue
        referenced.add(r["shard"])
        with tarfile.open(out / r["shard"]) as tar:
            names = set(tar.getnames())
        assert {f"{r['key']}.{ext}" for ext in BUNDLE_EXTS} <= names, (r, names)
    # Nothing unreachable is left: every shard / staging object is named by an index row.
    indexed_shards = {r["shard"] for r in everything if r["shard"]}
    for path in out.glob("run=*/*/*.tar"):
        rel = str(path.relative_to(out))
        assert rel in indexed_shards or rel in referenced, f"unreferenced {rel}"
    json.loads((out / f"run={second}" / "summary.json").read_text())
    print(figures)
