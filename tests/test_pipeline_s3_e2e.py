"""Batch runs against S3 end to end: moto in server mode holds the manifest and the meshes, the
output goes to `s3://`, and the real pipeline runs on local Ray (2 CPUs) with the shipped demo cascade.

Two ways of handing the endpoint and credentials to the run are exercised, because production
uses both: the standard AWS variables (read by botocore in the driver *and* in every Ray worker,
which inherit the driver's environment on a local cluster), and `--storage-options` JSON through
the `python -m jobs.run` CLI in a subprocess whose environment has no AWS variables at all.

Distinctive fake credentials (plus a URL password and a presigned-URL signature in the manifest)
are then searched for in everything the runs left behind: captured driver logs and output,
every file under the Ray session directories, every object under the output prefixes (Parquet
rows decoded, tar shards member by member) and the CLI's error messages.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("aiohttp")  # fsspec's HTTP filesystem (presigned-URL rows)

from batch_checks import UNSAFE_ID, Row, check_run, free_ports, make_meshes, manifest_bytes, validate_glbs  # noqa: E402
from leak_scan import files_under, find_secrets, objects_under  # noqa: E402
from pipeline.config import RunConfig  # noqa: E402
from pipeline.manifest import read_manifest  # noqa: E402
from pipeline.storage import Storage  # noqa: E402
from s3_server import ACCESS_KEY, SECRET_KEY, S3Endpoint, s3  # noqa: E402,F401

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Fake credentials nobody would type by accident, so a hit anywhere is a real leak.
ENV_KEY = "AKIACASTEXENVKEY7781"
ENV_SECRET = "castexEnvSecret/Qw3rty+Zx9dontlog"
OPT_KEY = "AKIACASTEXOPTKEY4412"
OPT_SECRET = "castexOptSecret/Mn8bvc+Lk2dontlog"
URL_PASSWORD = "castexUrlPassw0rdDontLog"
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
            "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
            "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_REGION", "AWS_DEFAULT_REGION")


@dataclass(frozen=True)
class Inputs:
    """What the module's runs share: the manifest URI and rows, the output bucket, and every
    string that must never show up in output (credentials, URL password, URL signature)."""

    manifest: str
    rows: list[Row]
    out_bucket: str
    secrets: tuple[str, ...]


@pytest.fixture(scope="module")
def inputs(s3: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Inputs:  # noqa: F811
    """Meshes and the Parquet manifest in the input bucket; an empty output bucket."""
    import boto3
    from botocore.config import Config

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log prints URLs
    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                          config=Config(signature_version="s3v4"))  # presigned URLs in SigV4 form
    out_bucket = f"{s3.bucket}-out"
    client.create_bucket(Bucket=out_bucket)
    meshes = make_meshes(tmp_path_factory.mktemp("meshes"))
    src = Storage(s3.uri(), s3.storage_options)
    for path in Path(meshes["vase"]).parent.iterdir():
        src.put_atomic(f"meshes/{path.name}", path)
    presigned = client.generate_presigned_url("get_object", ExpiresIn=3600,
                                              Params={"Bucket": s3.bucket, "Key": "meshes/torus.obj"})
    signature = parse_qs(urlsplit(presigned).query)["X-Amz-Signature"][0]
    closed_port = free_ports(1)[0]
    rows = [
        Row("vase-obj", s3.uri("meshes/vase.obj"), "a red vase", "ok"),
        Row("box-glb", s3.uri("meshes/box.glb"), "a wooden crate", "ok"),
        Row(UNSAFE_ID, s3.uri("meshes/sphere.glb"), "a marble ball", "ok"),
        Row("torus-presigned", presigned, "a golden ring", "ok"),
        Row("bad-mesh", s3.uri("meshes/points.ply"), "a broken thing", "mesh_no_faces"),
        Row("empty-prompt", s3.uri("meshes/box.glb"), "   ", "empty_field"),
        Row("missing", s3.uri("meshes/ghost.obj"), "a ghost", "unreachable"),
        Row("url-password", f"http://castex:{URL_PASSWORD}@127.0.0.1:{closed_port}/m.obj", "a thing",
            "unreachable"),
    ]
    src.write_atomic("manifests/m/part-0.parquet", manifest_bytes(rows))
    secrets = (ENV_KEY, ENV_SECRET, OPT_KEY, OPT_SECRET, URL_PASSWORD, signature, ACCESS_KEY, SECRET_KEY)
    return Inputs(s3.uri("manifests/m"), rows, out_bucket, secrets)


@pytest.fixture()
def ray_tmp() -> Iterator[Path]:
    """A short, private Ray temp root: its session logs are ours alone to scan, and unix socket
    paths stay under the 107-byte limit (pytest's tmp_path can be too deep)."""
    path = Path(tempfile.mkdtemp(prefix="cxs3-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without AWS or Ray-address variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in AWS_VARS and k != "RAY_ADDRESS"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def _start_ray(ray, **kwargs) -> None:
    """`ray.init`, tried twice: on a CPU-starved machine Ray's own 30 s raylet-registration wait
    (`ray/_private/node.py`) can expire before a healthy node registers."""
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception here
        if "timed out during startup" not in str(exc):
            raise
        ray.shutdown()
        ray.init(**kwargs)


def _assert_no_leaks(where: str, blobs: dict[str, bytes], secrets: tuple[str, ...]) -> None:
    hits = find_secrets(blobs, secrets)
    assert not hits, f"credentials leaked into {where}:\n" + "\n".join(hits[:20])


def test_leak_scanner_finds_what_it_looks_for(s3, inputs: Inputs) -> None:  # noqa: F811
    """Control: the input bucket's manifest holds the URL password, and the scanner sees it in
    the decoded Parquet rows (so a clean output scan means something)."""
    blobs = objects_under(Storage(s3.uri("manifests"), s3.storage_options))
    hits = find_secrets(blobs, inputs.secrets)
    assert any(h.startswith("m/part-0.parquet#rows: ") and URL_PASSWORD in h for h in hits), hits
    assert find_secrets({"x": b"a=" + ENV_SECRET.replace("/", "%2F").replace("+", "%2B").encode()},
                        [ENV_SECRET]) == [f"x: {ENV_SECRET}"]


def test_env_endpoint_variables_reach_s3fs(s3, inputs: Inputs, monkeypatch, tmp_path) -> None:  # noqa: F811
    """botocore (>= 1.31) reads AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL itself; no mapping is
    needed in `Storage`. Checked for both names, with credentials from the environment only."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        for var in AWS_VARS:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ENV_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv(name, s3.endpoint_url)
        s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches by arguments, not environment
        assert read_manifest(inputs.manifest).num_rows == len(inputs.rows)
        out = Storage(f"s3://{inputs.out_bucket}/probe-{name}")
        out.write_atomic("x.bin", b"x")
        assert [f.path for f in out.list()] == ["x.bin"]
        out.delete("x.bin")


def test_run_with_aws_environment(s3, inputs: Inputs, models_root: str, ray_tmp: Path, monkeypatch,  # noqa: F811
                                  caplog, capfd, tmp_path: Path) -> None:
    """Credentials and endpoint only in AWS_* variables: driver and Ray workers find S3 alone."""
    import ray

    from pipeline.graph import run_pipeline

    for var in AWS_VARS + ("RAY_ADDRESS",):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ENV_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()
    caplog.set_level(logging.INFO, logger="castex")
    out = f"s3://{inputs.out_bucket}/env"
    # No credentials in runtime_env: a local cluster's raylet, hence every worker, inherits
    # this process's environment (the run below could not reach S3 otherwise).
    try:  # shutdown also after a failed start, which can leave Ray's processes behind
        _start_ray(ray, num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
                   _temp_dir=str(ray_tmp), runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}})
        config = RunConfig(manifest=inputs.manifest, out=out, preset="cpu-demo", run_id="env",
                           models_root=models_root, device="cpu", rasterizer="torch", actors=2,
                           cache_dir=str(tmp_path / "cache"), pack_every=2)
        summary = run_pipeline(config)
    finally:
        ray.shutdown()
    assert summary["counts"]["total"] == len(inputs.rows)
    storage = Storage(out)
    _index, members = check_run(storage, "env", inputs.rows)
    assert validate_glbs(members, tmp_path / "glb") == sum(r.expect == "ok" for r in inputs.rows)

    captured = capfd.readouterr()
    _assert_no_leaks("driver output", {"caplog": caplog.text.encode(), "stdout": captured.out.encode(),
                                       "stderr": captured.err.encode()}, inputs.secrets)
    session = files_under(ray_tmp)
    assert any(b"asset vase-obj ok" in data for data in session.values()), "worker logs not found"
    _assert_no_leaks("Ray session files", session, inputs.secrets)
    _assert_no_leaks("output objects", objects_under(storage), inputs.secrets)


def test_cli_run_with_storage_options(s3, inputs: Inputs, models_root: str, ray_tmp: Path,  # noqa: F811
                                      tmp_path: Path) -> None:
    """`python -m jobs.run --storage-options '{...}'` in a subprocess without any AWS variable."""
    options = {"key": OPT_KEY, "secret": OPT_SECRET,
               "client_kwargs": {"endpoint_url": s3.endpoint_url, "region_name": "us-east-1"}}
    out = f"s3://{inputs.out_bucket}/opts"
    cmd = [sys.executable, "-m", "jobs.run", "--manifest", inputs.manifest, "--out", out, "--run-id", "opts",
           "--models", models_root, "--device", "cpu", "--rasterizer", "torch", "--actors", "2",
           "--num-cpus", "2", "--cache-dir", str(tmp_path / "cache"), "--storage-options", json.dumps(options)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_clean_env(RAY_TMPDIR=str(ray_tmp)), capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    storage = Storage(out, options)
    _index, members = check_run(storage, "opts", inputs.rows)
    assert validate_glbs(members, tmp_path / "glb") == 4

    _assert_no_leaks("CLI output", {"stdout": proc.stdout.encode(), "stderr": proc.stderr.encode()},
                     inputs.secrets)
    session = files_under(ray_tmp)
    assert any(b"asset vase-obj ok" in data for data in session.values()), "worker logs not found"
    _assert_no_leaks("Ray session files", session, inputs.secrets)
    _assert_no_leaks("output objects", objects_under(storage), inputs.secrets)

    # An error that names a secret (here inside the manifest URI) is masked before it is shown.
    bad = subprocess.run([sys.executable, "-m", "jobs.run", "--manifest", f"s3://{inputs.out_bucket}/{OPT_SECRET}/",
                          "--out", out, "--models", models_root, "--storage-options", json.dumps(options)],
                         cwd=ROOT, env=_clean_env(RAY_TMPDIR=str(ray_tmp)), capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "error [" in bad.stderr, bad.stderr[-2000:]
    _assert_no_leaks("CLI error", {"stdout": bad.stdout.encode(), "stderr": bad.stderr.encode()}, inputs.secrets)
