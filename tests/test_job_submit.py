"""`ray job submit` end to end: a private local Ray head with the dashboard (the job server lives
there) and token authentication, the repository uploaded as the job's working directory, and
`python -m jobs.run` as the entrypoint, exactly as README's batch-runs section tells users.

Isolation from other Ray users of this machine (other tests, other people): every port is
picked free, `--temp-dir` is private (so `ray_current_cluster` and the session logs are ours
alone), and the token comes from `RAY_AUTH_TOKEN` rather than the shared `~/.ray/auth_token`.
The head is stopped by signalling *our* `ray start --block` process (it tears down its own
children), then its process group, never with `ray stop`: that command kills every Ray process
on the machine by name, whichever cluster it belongs to.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from batch_checks import UNSAFE_ID, Row, check_run, free_ports, make_meshes, manifest_bytes, validate_glbs
from leak_scan import files_under, find_secrets, objects_under
from pipeline.storage import Storage
from s3_server import S3Endpoint, s3  # noqa: F401

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
# Kept out of the working-dir upload (Ray also honours .gitignore; this list does not rely on it).
EXCLUDES = [".venv", ".git", "node_modules", "models", "demo_out", "out", "build", ".cache",
            "__pycache__", ".pytest_cache", ".ruff_cache", "*.egg-info", "*.tar", "*.glb"]
JOB_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Storage credentials live in the *cluster's* environment (as on real nodes: instance roles or
# variables set before `ray start`), never in the submission: Ray logs runtime_env env_vars
# (runtime_env_agent.log) and the entrypoint command line (job driver log) verbatim.
NODE_KEY = "AKIACASTEXNODEKEY0093"
NODE_SECRET = "castexNodeSecret/Pq7+Rs1dontlog"


@dataclass(frozen=True)
class Head:
    """A running private head: its job API address, the client environment (token included,
    storage credentials not), its temp dir and the S3 endpoint its nodes are configured for."""

    address: str
    env: dict[str, str]
    temp_dir: Path
    token: str
    s3: S3Endpoint


def _dashboard_importable() -> str | None:
    """Why the job server cannot run here (the `ray[default]` extra is missing), or None."""
    try:
        import aiohttp  # noqa: F401
        import aiohttp_cors  # noqa: F401

        import ray.dashboard.modules.job.job_head  # noqa: F401
    except ImportError as exc:
        return f"Ray dashboard dependencies missing ({exc}); install ray[default]"
    return None


def _wait_for_jobs_api(address: str, token: str, head: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll the job API until it answers an authenticated request (start-up takes tens of
    seconds on a loaded 2-core machine); fail with the head's log if it dies or never answers."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    last = ""
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(2)
    pytest.fail(f"job API at {address} did not answer in {timeout:.0f}s ({last}):\n{log.read_text()[-3000:]}")


def _leftover_pids(pgid: int, markers: list[str]) -> list[int]:
    """Pids (Linux /proc) still in the head's process group, or whose command line names one of
    our private paths."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            in_group = os.getpgid(pid) == pgid
        except (OSError, ProcessLookupError):
            continue
        if in_group or any(m in cmdline for m in markers):
            pids.append(pid)
    return pids


def _stop_head(head: subprocess.Popen, markers: list[str]) -> None:
    """Stop only what this test started: SIGTERM to `ray start --block` (it tears down its own
    children), then SIGKILL, pid by pid, to whatever is left in its process group or names our
    private paths (job drivers run in a session of their own)."""
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=30)
    for pid in _leftover_pids(head.pid, markers):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


@pytest.fixture()
def ray_head(s3: S3Endpoint, tmp_path: Path) -> Iterator[Head]:  # noqa: F811
    """A private head with the dashboard and token auth, whose nodes get S3 credentials from
    their environment; always stopped afterwards."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request log lines
    reason = _dashboard_importable()
    if reason:
        pytest.skip(reason)
    temp_dir = Path(tempfile.mkdtemp(prefix="cxjob-", dir="/tmp"))  # short: unix socket paths
    token = secrets.token_hex(32)
    (gcs, dash, client, agent_http, agent_grpc, rt_agent, metrics, node_mgr, obj_mgr) = free_ports(9)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    # The entrypoint's `python` is looked up on the head's PATH: put this venv first.
    env.update(JOB_ENV, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    node_env = {**env, "AWS_ACCESS_KEY_ID": NODE_KEY, "AWS_SECRET_ACCESS_KEY": NODE_SECRET,
                "AWS_ENDPOINT_URL_S3": s3.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1"}
    cmd = [RAY, "start", "--head", "--block", "--num-cpus", "2", "--node-ip-address", "127.0.0.1",
           "--port", str(gcs), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
           "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(rt_agent), "--metrics-export-port", str(metrics),
           "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
           "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    log = tmp_path / "head.log"
    with open(log, "wb") as log_file:
        head = subprocess.Popen(cmd, env=node_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_jobs_api(address, token, head, log, timeout=300)
        yield Head(address, env, temp_dir, token, s3)
    finally:
        _stop_head(head, [str(temp_dir), str(tmp_path)])
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job_status(head: Head, submission_id: str) -> str:
    """The job's status from the job REST API (the CLI prints it only in prose)."""
    request = urllib.request.Request(f"{head.address}/api/jobs/{submission_id}",
                                     headers={"Authorization": f"Bearer {head.token}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())["status"]


def _ray_cli(head: Head, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env={**head.env, **env}, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_job_submit_runs_the_pipeline(ray_head: Head, tmp_path: Path) -> None:
    models = ROOT / "models"  # absolute: models/ is not uploaded (cpu-demo's cascade travels in weights/)
    meshes = make_meshes(tmp_path / "meshes")
    rows = [
        Row("vase", str(meshes["vase"]), "a red vase", "ok"),
        Row(UNSAFE_ID, str(meshes["sphere"]), "a marble ball", "ok"),
        Row("bad-mesh", str(meshes["points"]), "a broken thing", "mesh_no_faces"),
        Row("empty-prompt", str(meshes["box"]), " ", "empty_field"),
    ]
    inputs = Storage(ray_head.s3.uri(), ray_head.s3.storage_options)
    inputs.write_atomic("job/manifest/part-0.parquet", manifest_bytes(rows))
    manifest = ray_head.s3.uri("job/manifest")
    out = ray_head.s3.uri("job/out")

    # The head enforces the token: a wrong one is refused before anything runs.
    refused = _ray_cli(ray_head, "job", "list", "--address", ray_head.address, RAY_AUTH_TOKEN="0" * 64)
    assert refused.returncode != 0 and "auth" in (refused.stdout + refused.stderr).lower(), refused

    submission_id = f"castex-test-{secrets.token_hex(4)}"
    runtime_env = json.dumps({"env_vars": JOB_ENV, "excludes": EXCLUDES})
    submit = _ray_cli(ray_head, "job", "submit", "--address", ray_head.address, "--submission-id", submission_id,
                      "--working-dir", str(ROOT), "--runtime-env-json", runtime_env, "--",
                      "python", "-m", "jobs.run", "--manifest", manifest, "--out", out,
                      "--run-id", "job", "--models", str(models), "--device", "cpu", "--rasterizer", "torch",
                      "--actors", "2", "--cache-dir", str(tmp_path / "cache"), timeout=1500)
    logs = submit.stdout + submit.stderr
    assert submit.returncode == 0, logs[-4000:]
    assert _job_status(ray_head, submission_id) == "SUCCEEDED"

    storage = Storage(out, ray_head.s3.storage_options)
    _index, members = check_run(storage, "job", rows)
    assert validate_glbs(members, tmp_path / "glb") == 2
    # The working dir upload left the big directories behind.
    uploaded = [p for p in ray_head.temp_dir.glob("session_*/runtime_resources/working_dir_files/*") if p.is_dir()]
    assert uploaded, "no working_dir package found on the head"
    for pkg in uploaded:
        assert (pkg / "jobs" / "run.py").is_file()
        assert not any((pkg / d).exists() for d in (".venv", "models", ".git", "demo_out"))
        assert (pkg / "weights" / "demo-cascade" / "stage_1" / "unet").is_dir()  # the shipped cascade travels
    # Neither the node credentials nor the cluster token reach the job's log or its output;
    # the node credentials appear in none of the head's logs (job driver, workers, agents).
    hits = find_secrets({"job log": logs.encode(), **objects_under(storage)},
                        [ray_head.token, NODE_KEY, NODE_SECRET])
    session_logs = [files_under(d) for d in ray_head.temp_dir.glob("session_*/logs")]
    assert any(any(b"asset vase ok" in data for data in logs_.values()) for logs_ in session_logs)
    hits += [h for logs_ in session_logs for h in find_secrets(logs_, [NODE_KEY, NODE_SECRET])]
    assert not hits, hits[:20]
