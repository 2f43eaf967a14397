"""Deployment files under infra/ (issue 3), checked offline in a few seconds.

What the tests prove (the checks themselves live in tests/infra_checks.py):
* every YAML parses; core Kubernetes objects and every pod template embedded in the KubeRay
  objects pass the official Kubernetes OpenAPI schema in strict mode (kubernetes-validate);
* RayCluster / RayJob / RayCronJob pass our schemas in infra/schemas/ (rayVersion = the Ray pin of
  pyproject.toml, a GPU worker group, a GPU-free head, clusters that shut down, no unknown fields);
* the commands the manifests and the cron wrapper run name modules that exist and parse with
  those modules' own argparse, with a production preset, as many actors as GPUs, and paths on
  the shared volume;
* the manifests agree with each other (one image, the head Service address, the token Secret,
  volumes, schedules) and only reference Secrets that secrets.example.yaml declares, whose values
  are placeholders; nothing under infra/ looks like a real credential;
* the Dockerfile pins its bases, builds nvdiffrast for H100, installs the project extras and
  bakes in no secrets;
* infra/docker/entrypoint.sh and infra/cron/nightly.sh behave as documented (run with stub `hf`
  and `ray` executables);
and, for each validator, a mutated copy of a real file fails it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import infra_checks as ic

# -- parsing and schemas -----------------------------------------------------------------------

MANIFESTS = ic.all_manifests()
CORE = [(label, doc) for label, doc in MANIFESTS if doc["kind"] not in ic.RAY_KINDS]
RAY = [(label, doc) for label, doc in MANIFESTS if doc["kind"] in ic.RAY_KINDS]
TEMPLATES = [(f"{label} {where}", t) for label, doc in MANIFESTS for where, t in ic.pod_templates(doc)]


def _one(kind: str) -> dict:
    docs = ic.docs_of_kind(kind)
    assert len(docs) == 1, f"expected one {kind}, found {len(docs)}"
    return docs[0]


def test_every_yaml_parses_into_named_objects():
    files = sorted(ic.INFRA.rglob("*.yaml")) + sorted(ic.INFRA.rglob("*.yml"))
    assert {p.name for p in files} >= {"raycluster.yaml", "rayjob.yaml", "nightly-raycronjob.yaml",
                                       "nightly-cronjob.yaml", "secrets.example.yaml", "storage.yaml"}
    for path in files:
        docs = ic.load_docs(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
            assert doc["metadata"]["namespace"] == "castex", f"{path}: every object lives in namespace castex"
    assert {d["kind"] for _, d in MANIFESTS} == {"RayCluster", "RayJob", "RayCronJob", "CronJob", "Secret",
                                                 "PersistentVolumeClaim"}


def test_broken_yaml_is_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: CronJob\nspec:\n  schedule: [unclosed\n")
    with pytest.raises(yaml.YAMLError):
        ic.load_docs(bad)


@pytest.mark.parametrize("label,doc", CORE, ids=[label for label, _ in CORE])
def test_core_objects_pass_the_kubernetes_openapi_schema(label, doc):
    assert ic.k8s_problems(doc) == []


@pytest.mark.parametrize("label,template", TEMPLATES, ids=[label for label, _ in TEMPLATES])
def test_embedded_pod_templates_pass_the_kubernetes_openapi_schema(label, template):
    assert ic.pod_template_problems(template) == []


@pytest.mark.parametrize("label,doc", RAY, ids=[label for label, _ in RAY])
def test_kuberay_objects_match_our_schemas(label, doc):
    assert ic.kuberay_problems(doc) == []
    assert ic.replica_problems(doc) == []


def test_schema_ray_version_is_the_pyproject_pin():
    assert ic.load_schema("kuberay-common")["$defs"]["rayVersion"]["const"] == ic.ray_pin()
    for _, doc in RAY:
        for _, cs in ic.cluster_specs(doc):
            assert cs["rayVersion"] == ic.ray_pin()


def test_kubernetes_validator_rejects_broken_core_objects():
    cron = _one("CronJob")
    secret = ic.docs_of_kind("Secret")[0]
    pvc = _one("PersistentVolumeClaim")
    broken = [
        ic.mutated(cron, lambda d: d["spec"].update(scheduel=d["spec"].pop("schedule"))),  # typo
        ic.mutated(cron, lambda d: d["spec"]["jobTemplate"]["spec"].update(backoffLimit="none")),
        ic.mutated(secret, lambda d: d.update(stringdata=d.pop("stringData"))),
        ic.mutated(pvc, lambda d: d["spec"].update(accessModes="ReadWriteMany")),  # not a list
    ]
    for doc in broken:
        assert ic.k8s_problems(doc), doc


def test_pod_template_validator_rejects_broken_templates():
    worker = _one("RayCluster")["spec"]["workerGroupSpecs"][0]["template"]

    def typo(t):
        t["spec"]["containers"][0]["imagePullPolicyy"] = "Always"

    def nameless_env(t):
        t["spec"]["containers"][0]["env"].append({"value": "1"})

    def bad_mount(t):
        t["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] = 5

    for edit in (typo, nameless_env, bad_mount):
        assert ic.pod_template_problems(ic.mutated(worker, edit)), edit.__name__


def test_kuberay_schema_rejects_broken_objects():
    cluster, job, cron = _one("RayCluster"), _one("RayJob"), _one("RayCronJob")

    def no_worker_gpu(d):
        for c in d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"]:
            for part in ("limits", "requests"):
                c["resources"][part].pop(ic.GPU, None)

    def head_gpu(d):
        d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"][ic.GPU] = 1

    broken = {
        "old ray": ic.mutated(cluster, lambda d: d["spec"].update(rayVersion="2.59.0")),
        "no worker gpu": ic.mutated(cluster, no_worker_gpu),
        "gpu on head": ic.mutated(cluster, head_gpu),
        "int start param": ic.mutated(cluster, lambda d: d["spec"]["headGroupSpec"]["rayStartParams"]
                                      .update({"num-cpus": 0})),
        "typo in group": ic.mutated(cluster, lambda d: d["spec"]["workerGroupSpecs"][0].update(replica=2)),
        "bad auth mode": ic.mutated(cluster, lambda d: d["spec"]["authOptions"].update(mode="password")),
        "keeps cluster": ic.mutated(job, lambda d: d["spec"].update(shutdownAfterJobFinishes=False)),
        "typo in job": ic.mutated(job, lambda d: d["spec"].update(shutdownAfterJobFinish=True)),
        "bad mode": ic.mutated(job, lambda d: d["spec"].update(submissionMode="ShellMode")),
        "no entrypoint": ic.mutated(job, lambda d: d["spec"].pop("entrypoint")),
        "six cron fields": ic.mutated(cron, lambda d: d["spec"].update(schedule="0 0 2 * * *")),
        "TZ in schedule": ic.mutated(cron, lambda d: d["spec"].update(schedule="CRON_TZ=UTC 0 2 * * *")),
        "no template": ic.mutated(cron, lambda d: d["spec"].pop("jobTemplate")),
        "schedule on RayJob": ic.mutated(job, lambda d: d["spec"].update(schedule="0 2 * * *")),
        "wrong kind": ic.mutated(job, lambda d: d.update(kind="RayService")),
    }
    for name, doc in broken.items():
        assert ic.kuberay_problems(doc), name
    # replicas outside [min, max], GPU request != limit
    assert ic.replica_problems(ic.mutated(cluster, lambda d: d["spec"]["workerGroupSpecs"][0].update(replicas=9)))

    def split_gpu(d):
        d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["requests"][ic.GPU] = 2

    assert ic.replica_problems(ic.mutated(cluster, split_gpu))


# -- commands ----------------------------------------------------------------------------------


def _ray_containers(cs: dict) -> list[dict]:
    """Main containers of the head and worker pods (not init containers)."""
    groups = [cs["headGroupSpec"]] + list(cs["workerGroupSpecs"])
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _mount_paths(c: dict) -> set[str]:
    return {m["mountPath"] for m in c.get("volumeMounts") or []}


def _assert_on_shared_volume(path: str, cs: dict) -> None:
    for c in _ray_containers(cs):
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in _mount_paths(c)), \
            f"{path} is not on a volume every Ray container mounts ({c['name']})"


def _submitter_command() -> list[str]:
    return _one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]


def test_ray_job_entrypoints_parse_with_the_modules_own_argparse():
    modules = set()
    for doc in (_one("RayJob"), _one("RayCronJob")):
        for where, js in ic.job_specs(doc):
            argv = ic.entrypoint_argv(js["entrypoint"])
            assert ic.command_problems(argv) == [], where
            assert ic.unquoted_globs(js["entrypoint"]) == [], where
            module, ns = ic.parse_command(argv)
            modules.add(module)
            cs = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else js["rayClusterSpec"]
            assert ns.actors == ic.gpu_count(cs), "one texture actor per GPU of the cluster"
            for path in (ns.models, ns.cache_dir):
                _assert_on_shared_volume(path, cs)
    assert modules == {"jobs.run", "jobs.nightly"}


def test_cronjob_submits_nightly_to_the_standing_cluster_head():
    cluster = _one("RayCluster")
    opts, entry = ic.ray_submit_split(_submitter_command())
    assert opts["--address"] == f"http://{cluster['metadata']['name']}-head-svc:8265"
    assert opts["--working-dir"] == "/app"  # where the Dockerfile puts the code
    assert ic.command_problems(entry) == []
    module, ns = ic.parse_command(entry)
    assert module == "jobs.nightly"
    assert ns.actors is None or ns.actors <= ic.gpu_count(cluster["spec"])
    if ns.cache_dir:
        _assert_on_shared_volume(ns.cache_dir, cluster["spec"])


def test_command_checks_reject_bad_commands():
    good = ic.entrypoint_argv(_one("RayJob")["spec"]["entrypoint"])
    bad = {
        "unknown flag": good + ["--manifests", "x"],
        "missing --out": [a for i, a in enumerate(good) if a != "--out" and (i == 0 or good[i - 1] != "--out")],
        "unknown preset": [("castex-xxl" if a == "castex-xl-l" else a) for a in good],
        "demo preset": [("cpu-demo" if a == "castex-xl-l" else a) for a in good],
        "cpu device": [("cpu" if a == "cuda" else a) for a in good],
        "no such module": ["python", "-m", "jobs.nope"] + good[3:],
        "not python -m": ["castex", "run"] + good[3:],
    }
    for name, argv in bad.items():
        assert ic.command_problems(argv), name
    assert ic.unquoted_globs("python -m jobs.run --manifest s3://b/m/*.parquet --out s3://b/o")
    with pytest.raises(ValueError):
        ic.ray_submit_split(["ray", "job", "submit", "python", "-m", "jobs.nightly"])  # no --


# -- cross-file consistency and secrets --------------------------------------------------------


def _all_templates() -> list[dict]:
    return [t for _, t in TEMPLATES]


def test_one_pinned_image_everywhere():
    images = {c["image"] for t in _all_templates() for c in ic.containers(t)}
    assert len(images) == 1, images
    (image,) = images
    assert re.search(r":\d+\.\d+\.\d+$", image), f"{image}: use a release tag, not latest"


def test_only_the_fetch_init_container_sees_the_hf_token():
    for _, doc in RAY:
        for _, cs in ic.cluster_specs(doc):
            for c in _ray_containers(cs):
                env = {e["name"]: e for e in c.get("env") or []}
                assert "HF_TOKEN" not in env, c["name"]
                assert env["HF_HUB_OFFLINE"]["value"] == "1", "Ray processes resolve Hub ids from the volume"
                assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env), "S3 credentials"
            for g in cs["workerGroupSpecs"]:
                inits = g["template"]["spec"].get("initContainers") or []
                assert [i["args"] for i in inits] == [["fetch-weights"]]
                assert "HF_TOKEN" in {e["name"] for e in inits[0]["env"]}
    cron_env = {e["name"] for e in _one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
                ["containers"][0]["env"]}
    assert "HF_TOKEN" not in cron_env and "RAY_AUTH_TOKEN" in cron_env


def test_submitter_uses_the_clusters_token_secret():
    cluster = _one("RayCluster")
    token_env = next(e for e in _one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
                     ["containers"][0]["env"] if e["name"] == "RAY_AUTH_TOKEN")
    ref = token_env["valueFrom"]["secretKeyRef"]
    assert cluster["spec"]["authOptions"] == {"mode": "token", "secretName": ref["name"]}
    assert ref["key"] == "auth_token"


def test_referenced_secrets_are_declared_with_placeholders_only():
    secrets = ic.load_docs(ic.K8S_DIR / "secrets.example.yaml")
    docs = [d for _, d in MANIFESTS]
    assert ic.secret_refs(docs), "the manifests should read their credentials from Secrets"
    assert ic.secret_ref_problems(docs, secrets) == []
    assert ic.placeholder_problems(secrets) == []
    # negative: an undeclared key, a real-looking value
    bad_ref = ic.mutated(_one("CronJob"), lambda d: d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
                         ["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"].update(key="token"))
    assert ic.secret_ref_problems([bad_ref], secrets)
    leaked = [ic.mutated(secrets[0], lambda d: d["stringData"].update(HF_TOKEN="hf_" + "a1" * 17))]
    assert ic.placeholder_problems(leaked)


def test_no_credentials_anywhere_under_infra():
    for path in sorted(p for p in ic.INFRA.rglob("*") if p.is_file()):
        assert ic.credential_problems(path.read_text(errors="replace"), str(path)) == []
    assert ic.credential_problems("aws_access_key_id = AKIA" + "ABCDEFGHIJKLMNOP", "x")
    assert ic.credential_problems("token: hf_" + "Q" * 34, "x")


def test_volumes_are_declared():
    claims = {d["metadata"]["name"] for d in ic.docs_of_kind("PersistentVolumeClaim")}
    docs = [d for _, d in MANIFESTS]
    assert ic.claim_problems(docs, claims) == []
    assert ic.claim_problems(docs, claims - {"castex-models"})


def test_nightly_variants_share_one_schedule():
    cron_text = (ic.INFRA / "cron" / "castex-nightly.cron").read_text()
    (line,) = ic.cron_lines(cron_text)
    assert _one("RayCronJob")["spec"]["schedule"] == _one("CronJob")["spec"]["schedule"] == " ".join(line[:5])


# -- Dockerfile --------------------------------------------------------------------------------


DOCKERFILE_TEXT = ic.DOCKERFILE.read_text()


def test_dockerfile_static_checks():
    assert ic.dockerfile_problems(DOCKERFILE_TEXT) == []
    # facts the manifests rely on
    assert "COPY infra/docker/entrypoint.sh /usr/local/bin/castex-entrypoint" in DOCKERFILE_TEXT
    assert re.search(r"^WORKDIR /app$", DOCKERFILE_TEXT, re.M)
    assert re.search(r"wget", DOCKERFILE_TEXT), "KubeRay's default probes run wget"


@pytest.mark.parametrize("name,old,new", [
    ("unpinned base", "nvidia/cuda:13.0.0-runtime-ubuntu24.04", "nvidia/cuda:latest"),
    ("untagged base", "nvidia/cuda:13.0.0-devel-ubuntu24.04", "nvidia/cuda"),
    ("cuda mismatch", "whl/cu130", "whl/cu126"),
    ("no nvdiffrast", 'pip install --no-build-isolation "git+https://github.com/NVlabs/nvdiffrast.git@${NVDIFFRAST_REF}"',
     "true"),
    ("nvdiffrast main", "ARG NVDIFFRAST_REF=v0.4.0", "ARG NVDIFFRAST_REF=main"),
    ("no H100 arch", "ARG TORCH_CUDA_ARCH_LIST=9.0", "ARG TORCH_CUDA_ARCH_LIST=8.0"),
    ("no extras", 'pip install "/app[pipeline]"', 'pip install "/app"'),
    ("gpu extra too", 'pip install "/app[pipeline]"', 'pip install "/app[gpu,pipeline]"'),
    ("token env", "ENV PATH=/opt/venv/bin:${PATH} \\", "ENV HF_TOKEN=x PATH=/opt/venv/bin:${PATH} \\"),
    ("token arg", "ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.13.0\nARG HF_TOKEN"),
    ("copied secret", "COPY pyproject.toml README.md ./", "COPY pyproject.toml README.md .env ./"),
    ("missing source", "COPY jobs ./jobs", "COPY job ./jobs"),
    ("root user", "USER ray", "USER root"),
])
def test_dockerfile_checks_reject_mutations(name, old, new):
    assert old in DOCKERFILE_TEXT, f"mutation {name!r} no longer applies to the Dockerfile"
    assert ic.dockerfile_problems(DOCKERFILE_TEXT.replace(old, new)), name


# -- shell scripts, run against stub executables -----------------------------------------------


ENTRYPOINT = ic.INFRA / "docker" / "entrypoint.sh"
NIGHTLY = ic.INFRA / "cron" / "nightly.sh"


def _stub(path: Path, body: str) -> Path:
    """A Python executable (this interpreter) that records its argv and some env as JSON lines."""
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


HF_STUB = """
    import json, os, pathlib, sys
    log = pathlib.Path(os.environ["STUB_LOG"])
    with log.open("a") as f:
        f.write(json.dumps({"argv": sys.argv[1:], "token": os.environ.get("HF_TOKEN"),
                            "offline": os.environ.get("HF_HUB_OFFLINE")}) + "\\n")
    repo = sys.argv[2]
    root = pathlib.Path(os.environ["HF_HOME"]) / "hub" / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text("abc123")
    snap = root / "snapshots" / "abc123"
    for sub in ("unet", "scheduler", "text_encoder", "tokenizer"):
        (snap / sub).mkdir(parents=True, exist_ok=True)
    (snap / "unet" / "config.json").write_text("{}")
    if os.environ.get("STUB_BROKEN") != "1":
        (snap / "unet" / "diffusion_pytorch_model.safetensors").write_text("w")
        (snap / "text_encoder" / "model.safetensors").write_text("w")
"""


def _run(script: Path, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": str(cwd), "LANG": "C.UTF-8"}
    return subprocess.run(["bash", str(script), *args], env=base | env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def _calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def models_env(tmp_path):
    log = tmp_path / "hf-calls.jsonl"
    env = {"CASTEX_MODELS": str(tmp_path / "models"), "STUB_LOG": str(log),
           "CASTEX_HF_BIN": str(_stub(tmp_path / "hf", HF_STUB)), "HF_HUB_OFFLINE": "1"}
    return env, log, tmp_path


def test_fetch_weights_downloads_the_preset_models_once_with_the_token_from_env(models_env):
    from core.presets import PRESETS

    env, log, tmp = models_env
    secret = "hf_" + "x" * 34
    first = _run(ENTRYPOINT, ["fetch-weights"], env | {"HF_TOKEN": secret}, tmp)
    assert first.returncode == 0, first.stderr
    calls = _calls(log)
    wanted = {s.model for s in PRESETS["castex-xl-l"].stages} | {PRESETS["castex-xl-l"].text_encoder}
    assert {c["argv"][1] for c in calls} == wanted and len(calls) == len(wanted)
    for c in calls:
        assert c["argv"][0] == "download" and c["token"] == secret and c["offline"] == "0"
        assert secret not in " ".join(c["argv"]) and "--token" not in c["argv"]
        pairs = list(zip(c["argv"][2::2], c["argv"][3::2]))
        assert ("--include", "unet/*") in pairs and ("--exclude", "*.bin") in pairs
    assert secret not in first.stdout + first.stderr
    # second start: markers present, nothing downloaded, works without the token
    again = _run(ENTRYPOINT, ["fetch-weights"], env, tmp)
    assert again.returncode == 0, again.stderr
    assert len(_calls(log)) == len(wanted)


def test_fetch_weights_without_token_fails_clearly(models_env):
    env, log, tmp = models_env
    result = _run(ENTRYPOINT, ["fetch-weights"], env, tmp)
    assert result.returncode == 3
    assert "DeepFloyd/IF-I-XL-v1.0" in result.stderr and "HF_TOKEN" in result.stderr
    assert _calls(log) == []


def test_fetch_weights_accepts_a_seeded_volume_and_rejects_a_broken_download(models_env):
    env, log, tmp = models_env
    repos = {"CASTEX_HF_REPOS": "Org/seeded"}
    # seed the cache as `hf download` would have, then start without a token
    subprocess.run([env["CASTEX_HF_BIN"], "download", "Org/seeded"], check=True,
                   env=os.environ | env | {"HF_HOME": env["CASTEX_MODELS"] + "/hf"})
    seeded = _run(ENTRYPOINT, ["fetch-weights"], env | repos, tmp)
    assert seeded.returncode == 0, seeded.stderr
    assert len(_calls(log)) == 1  # only the seeding call
    broken = _run(ENTRYPOINT, ["fetch-weights"], env | {"CASTEX_HF_REPOS": "Org/broken", "HF_TOKEN": "t",
                                                        "STUB_BROKEN": "1"}, tmp)
    assert broken.returncode == 4 and "safetensors" in broken.stderr


def test_entrypoint_execs_the_command(tmp_path):
    result = _run(ENTRYPOINT, ["echo", "hello from castex"], {"CASTEX_MODELS": str(tmp_path)}, tmp_path)
    assert result.returncode == 0 and result.stdout == "hello from castex\n"


RAY_STUB = """
    import json, os, sys
    with open(os.environ["STUB_LOG"], "a") as f:
        f.write(json.dumps({"argv": sys.argv[1:], "token_path": os.environ.get("RAY_AUTH_TOKEN_PATH"),
                            "mode": os.environ.get("RAY_AUTH_MODE")}) + "\\n")
    if sys.argv[1:3] == ["job", "status"]:
        print(os.environ.get("STUB_STATUS_TEXT", ""))
        sys.exit(int(os.environ.get("STUB_STATUS_RC", "1")))
"""


@pytest.fixture
def nightly_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir / "ray", RAY_STUB)
    token = tmp_path / "ray-token"
    token.write_text("secret-token")
    conf = tmp_path / "nightly.env"
    conf.write_text(textwrap.dedent(f"""\
        RAY_ADDRESS=http://castex-head-svc:8265
        CASTEX_CATALOG='s3://castex-data/catalog/*.parquet'
        CASTEX_OUT=s3://castex-data/nightly
        CASTEX_FAIL_THRESHOLD=0.05
        CASTEX_ACTORS=2
        RAY_AUTH_TOKEN_PATH={token}
        """))
    log = tmp_path / "ray-calls.jsonl"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CASTEX_NIGHTLY_ENV": str(conf), "STUB_LOG": str(log),
           "XDG_RUNTIME_DIR": str(tmp_path), "CASTEX_NIGHTLY_DATE": "2026-11-25"}
    return env, log, tmp_path


def test_nightly_wrapper_submits_a_day_keyed_job(nightly_env):
    env, log, tmp = nightly_env
    result = _run(NIGHTLY, [], env, tmp)
    assert result.returncode == 0, result.stderr
    status, submit = _calls(log)
    assert status["argv"][:2] == ["job", "status"]
    opts, entry = ic.ray_submit_split(["ray", *submit["argv"]])
    assert Path(opts.pop("--working-dir")).resolve() == ic.REPO  # the checkout holding the script
    assert opts == {"--address": "http://castex-head-svc:8265", "--submission-id": "castex-nightly-2026-11-25"}
    assert submit["mode"] == "token" and submit["token_path"].endswith("ray-token")
    assert ic.command_problems(entry) == []
    _, ns = ic.parse_command(entry)
    assert (ns.catalog, ns.preset, ns.actors, ns.fail_threshold) == \
        ("s3://castex-data/catalog/*.parquet", "castex-xl-l", 2, 0.05)
    # the entrypoint Ray's supervisor will run (shlex.join of these args) keeps the glob literal
    assert shlex.split(shlex.join(entry)) == entry


def test_nightly_wrapper_attaches_to_the_days_job_instead_of_resubmitting(nightly_env):
    env, log, tmp = nightly_env
    ok = _run(NIGHTLY, [], env | {"STUB_STATUS_RC": "0", "STUB_STATUS_TEXT": "Job 'x' succeeded"}, tmp)
    assert ok.returncode == 0, ok.stderr
    verbs = [c["argv"][:2] for c in _calls(log)]
    assert ["job", "submit"] not in verbs and ["job", "logs"] in verbs
    assert "--follow" in next(c["argv"] for c in _calls(log) if c["argv"][:2] == ["job", "logs"])
    failed = _run(NIGHTLY, [], env | {"STUB_STATUS_RC": "0", "STUB_STATUS_TEXT": "Job 'x' failed"}, tmp)
    assert failed.returncode == 1


def test_nightly_wrapper_refuses_incomplete_configuration(nightly_env):
    env, log, tmp = nightly_env
    (tmp / "empty.env").write_text("")
    missing = _run(NIGHTLY, [], env | {"CASTEX_NIGHTLY_ENV": str(tmp / "empty.env")}, tmp)
    assert missing.returncode == 2 and "RAY_ADDRESS" in missing.stderr
    # the env file wins over the process env, so point the file's token path at nothing
    conf = Path(env["CASTEX_NIGHTLY_ENV"])
    conf.write_text(conf.read_text().replace(str(tmp / "ray-token"), str(tmp / "nope")))
    no_token = _run(NIGHTLY, [], env, tmp)
    assert no_token.returncode == 2 and "RAY_AUTH_TOKEN_PATH" in no_token.stderr
    assert _calls(log) == []


def test_crontab_runs_the_wrapper():
    text = (ic.INFRA / "cron" / "castex-nightly.cron").read_text()
    assert ic.crontab_problems(text, lambda cmd: cmd.endswith("/infra/cron/nightly.sh")) == []
    assert os.access(NIGHTLY, os.X_OK) and os.access(ENTRYPOINT, os.X_OK)
    assert ic.crontab_problems("0 2 * * castex /x/nightly.sh\n", lambda c: True)  # a field short
    assert ic.crontab_problems("0 25x * * * castex /x/nightly.sh\n", lambda c: True)
    assert ic.crontab_problems(text, lambda cmd: False)


def test_readme_explains_every_infra_file():
    readme = (ic.INFRA / "README.md").read_text()
    for path in sorted(p for p in ic.INFRA.rglob("*") if p.is_file() and p.name != "README.md"):
        assert path.name in readme, f"infra/README.md does not mention {path.relative_to(ic.INFRA)}"
