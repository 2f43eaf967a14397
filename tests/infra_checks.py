"""Offline checks of the deployment files under infra/ (used by tests/test_infra.py).

Every check is a function that returns a list of problems (empty = fine) instead of asserting,
so the tests can run it on the real files and on deliberately broken copies: a check that cannot
fail on a broken copy proves nothing about the real one.

What is checked against what:
* core Kubernetes objects (CronJob, Secret, PVC) and every pod template embedded in the KubeRay
  objects: the official Kubernetes OpenAPI schema, strict (unknown fields are errors), as shipped
  offline by `kubernetes-validate`;
* KubeRay objects (RayCluster, RayJob, RayCronJob): our own JSON schemas in infra/schemas/, which
  cover the fields we use (the CRDs themselves are too large to vendor, and too lax: the API
  server silently prunes unknown fields);
* entrypoints: parsed with the argparse parsers of `jobs.run` / `jobs.nightly` themselves;
* the Dockerfile: a small static reading (pins, nvdiffrast, extras, no baked secrets).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S_DIR = INFRA / "k8s"
SCHEMA_DIR = INFRA / "schemas"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
# Oldest Kubernetes minor we claim to support (CronJob.spec.timeZone is GA since 1.27).
K8S_VERSION = "1.33.0"
RAY_KINDS = {"RayCluster": "raycluster", "RayJob": "rayjob", "RayCronJob": "raycronjob"}
GPU = "nvidia.com/gpu"

Doc = dict[str, Any]


# -- loading -----------------------------------------------------------------------------------


def load_docs(path: Path) -> list[Doc]:
    """All non-empty YAML documents of a file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifest_files() -> list[Path]:
    return sorted(K8S_DIR.glob("*.yaml"))


def all_manifests() -> list[tuple[str, Doc]]:
    """(label, document) for every document under infra/k8s, label = file#index kind/name."""
    out = []
    for path in manifest_files():
        for i, doc in enumerate(load_docs(path)):
            out.append((f"{path.name}#{i} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc))
    return out


def docs_of_kind(kind: str) -> list[Doc]:
    return [doc for _, doc in all_manifests() if doc.get("kind") == kind]


def ray_pin() -> str:
    """The X of `ray[...]==X` in the `pipeline` extra of pyproject.toml."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: read the one line we need
        line = re.search(r"^pipeline\s*=\s*(\[.*\])", (REPO / "pyproject.toml").read_text(), re.M)
        reqs = json.loads(line.group(1)) if line else []
    else:
        reqs = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["pipeline"]
    for req in reqs:
        m = re.fullmatch(r"ray(\[[^\]]*\])?==([0-9.]+)", req.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError("no ray==X pin in the pipeline extra of pyproject.toml")


# -- Kubernetes OpenAPI (kubernetes-validate) ----------------------------------------------------


def k8s_problems(doc: Doc) -> list[str]:
    """Strict validation of a core object against the Kubernetes OpenAPI schema."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "<root>"
        return [f"{where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    return []


def pod_template_problems(template: Doc) -> list[str]:
    """A pod template as Kubernetes would check it: wrapped into a v1 PodTemplate object."""
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "embedded"},
               "template": template}
    return k8s_problems(wrapped)


def cluster_specs(doc: Doc) -> list[tuple[str, Doc]]:
    """The RayClusterSpecs inside a KubeRay object, with where they sit."""
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind == "RayCluster":
        return [("spec", spec)]
    if kind == "RayJob" and "rayClusterSpec" in spec:
        return [("spec.rayClusterSpec", spec["rayClusterSpec"])]
    if kind == "RayCronJob":
        job = spec.get("jobTemplate") or {}
        if "rayClusterSpec" in job:
            return [("spec.jobTemplate.rayClusterSpec", job["rayClusterSpec"])]
    return []


def job_specs(doc: Doc) -> list[tuple[str, Doc]]:
    """The RayJobSpecs of a RayJob / RayCronJob."""
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayJob":
        return [("spec", spec)]
    if doc.get("kind") == "RayCronJob" and "jobTemplate" in spec:
        return [("spec.jobTemplate", spec["jobTemplate"])]
    return []


def pod_templates(doc: Doc) -> list[tuple[str, Doc]]:
    """Every pod template embedded in a document (KubeRay groups, submitters, CronJob)."""
    out = []
    for where, cs in cluster_specs(doc):
        head = cs.get("headGroupSpec") or {}
        if "template" in head:
            out.append((f"{where}.headGroupSpec.template", head["template"]))
        for i, group in enumerate(cs.get("workerGroupSpecs") or []):
            if "template" in group:
                out.append((f"{where}.workerGroupSpecs[{i}].template", group["template"]))
    for where, js in job_specs(doc):
        if "submitterPodTemplate" in js:
            out.append((f"{where}.submitterPodTemplate", js["submitterPodTemplate"]))
    if doc.get("kind") == "CronJob":
        out.append(("spec.jobTemplate.spec.template", doc["spec"]["jobTemplate"]["spec"]["template"]))
    return out


def containers(template: Doc) -> list[Doc]:
    spec = template.get("spec") or {}
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


# -- KubeRay (our schemas) ---------------------------------------------------------------------


def _schema_registry():
    from referencing import Registry, Resource

    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        contents = json.loads(path.read_text())
        resources.append((contents["$id"], Resource.from_contents(contents)))
    return Registry().with_resources(resources)


def load_schema(name: str) -> Doc:
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


def kuberay_problems(doc: Doc) -> list[str]:
    """A KubeRay object against infra/schemas/<kind>.schema.json."""
    import jsonschema

    kind = doc.get("kind")
    if kind not in RAY_KINDS:
        return [f"no castex schema for kind {kind!r}"]
    schema = load_schema(RAY_KINDS[kind])
    validator = jsonschema.Draft202012Validator(schema, registry=_schema_registry())
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {_short(e.message)} ({e.validator})"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def _short(text: str, limit: int = 160) -> str:
    """jsonschema quotes whole instances in `not`/`contains` errors; keep messages readable."""
    return text if len(text) <= limit else text[:limit] + " ..."


def replica_problems(doc: Doc) -> list[str]:
    """minReplicas <= replicas <= maxReplicas, and GPU requests equal limits (extended resources)."""
    out = []
    for where, cs in cluster_specs(doc):
        for i, g in enumerate(cs.get("workerGroupSpecs") or []):
            if not g.get("minReplicas", 0) <= g.get("replicas", 0) <= g.get("maxReplicas", 0):
                out.append(f"{where}.workerGroupSpecs[{i}]: replicas outside [minReplicas, maxReplicas]")
    for where, template in pod_templates(doc):
        for c in containers(template):
            res = c.get("resources") or {}
            req, lim = (res.get("requests") or {}).get(GPU), (res.get("limits") or {}).get(GPU)
            if req is not None and str(req) != str(lim):
                out.append(f"{where} {c.get('name')}: {GPU} request {req} != limit {lim}")
    return out


def gpu_count(cs: Doc) -> int:
    """GPUs of a cluster spec at its configured replicas."""
    total = 0
    for g in cs.get("workerGroupSpecs") or []:
        per_pod = sum(int((c.get("resources") or {}).get("limits", {}).get(GPU, 0))
                      for c in g["template"]["spec"]["containers"])
        total += per_pod * int(g.get("replicas", 0))
    return total


# -- entrypoints -------------------------------------------------------------------------------


class _ArgumentError(Exception):
    pass


class _StrictParser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so a bad command line is a test failure."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgumentError(message)


def _module_parser(module: str) -> argparse.ArgumentParser:
    parser = _StrictParser(prog=module)
    if module == "jobs.run":
        from jobs.run import add_run_arguments

        add_run_arguments(parser)
    elif module == "jobs.nightly":
        from jobs.nightly import add_nightly_arguments

        add_nightly_arguments(parser)
    else:
        raise _ArgumentError(f"unexpected module {module!r} (expected jobs.run or jobs.nightly)")
    return parser


def split_python_module(argv: list[str]) -> tuple[str, list[str]]:
    """`python -m MODULE ARGS...` -> (MODULE, ARGS)."""
    if len(argv) < 3 or argv[0] not in ("python", "python3") or argv[1] != "-m":
        raise _ArgumentError(f"not a `python -m <module>` command: {argv[:3]}")
    return argv[2], argv[3:]


def parse_command(argv: list[str]) -> tuple[str, argparse.Namespace]:
    """Parse `python -m jobs.X ...` with that module's own argparse; raises on a bad command."""
    from importlib.util import find_spec

    module, args = split_python_module(argv)
    if find_spec(module) is None:
        raise _ArgumentError(f"module {module} does not exist")
    return module, _module_parser(module).parse_args(args)


def command_problems(argv: list[str]) -> list[str]:
    """The command parses, and runs the production configuration (not the CPU demo defaults)."""
    try:
        module, ns = parse_command(argv)
    except _ArgumentError as exc:
        return [str(exc)]
    from core.presets import PRESETS

    out = []
    if ns.preset == "cpu-demo" or any(demo in s.model for s in PRESETS[ns.preset].stages
                                      for demo in ("tiny-cascade", "demo-cascade")):
        out.append(f"{module}: --preset {ns.preset} is the CPU demo cascade, not a production preset")
    if ns.device not in ("cuda", "auto"):
        out.append(f"{module}: --device {ns.device} on a GPU cluster")
    return out


def entrypoint_argv(entrypoint: str) -> list[str]:
    """A RayJob entrypoint as the submitter's shell splits it."""
    return shlex.split(entrypoint)


def unquoted_globs(entrypoint: str) -> list[str]:
    """Arguments with glob characters that are not single-quoted in the entrypoint string.
    KubeRay's submitter runs the entrypoint through bash and Ray's job supervisor through
    /bin/sh again, so an unquoted `*` could be expanded against a local directory."""
    return [tok for tok in shlex.split(entrypoint)
            if any(ch in tok for ch in "*?[") and shlex.quote(tok) not in entrypoint]


def ray_submit_split(command: list[str]) -> tuple[dict[str, str], list[str]]:
    """`ray job submit [--opt value]... -- ENTRYPOINT...` -> (options, entrypoint)."""
    if command[:3] != ["ray", "job", "submit"] or "--" not in command:
        raise ValueError(f"not a `ray job submit ... -- ...` command: {command[:4]}")
    sep = command.index("--")
    opts, i = {}, 3
    while i < sep:
        opts[command[i]] = command[i + 1] if i + 1 < sep and not command[i + 1].startswith("--") else ""
        i += 2 if opts[command[i]] else 1
    return opts, command[sep + 1:]


# -- secrets, volumes, images ------------------------------------------------------------------


def walk(node: Any) -> Iterator[Doc]:
    """Every mapping inside a YAML tree."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def secret_refs(docs: list[Doc]) -> list[tuple[str, str | None, bool]]:
    """(secret name, key or None for a whole-secret ref, optional) for every reference."""
    refs = []
    for doc in docs:
        for node in walk(doc):
            ref = node.get("secretKeyRef")
            if isinstance(ref, dict):
                refs.append((ref.get("name"), ref.get("key"), bool(ref.get("optional"))))
            ref = node.get("secretRef")
            if isinstance(ref, dict):
                refs.append((ref.get("name"), None, bool(ref.get("optional"))))
        for _, cs in cluster_specs(doc):
            name = (cs.get("authOptions") or {}).get("secretName")
            if name:
                refs.append((name, "auth_token", False))  # KubeRay's key for static tokens
    return refs


def secret_ref_problems(docs: list[Doc], secrets: list[Doc]) -> list[str]:
    """Every referenced secret (and non-optional key) is defined by secrets.example.yaml."""
    defined = {s["metadata"]["name"]: set((s.get("stringData") or {}) | (s.get("data") or {}))
               for s in secrets if s.get("kind") == "Secret"}
    out = []
    for name, key, optional in secret_refs(docs):
        if name not in defined:
            out.append(f"secret {name!r} is referenced but not defined in secrets.example.yaml")
        elif key is not None and key not in defined[name] and not optional:
            out.append(f"secret {name!r} has no key {key!r}")
    return out


PLACEHOLDER = re.compile(r"<[^<>]+>")


def placeholder_problems(secrets: list[Doc]) -> list[str]:
    """The example Secrets hold only <placeholders>, never values (nor base64 `data`)."""
    out = []
    for s in secrets:
        name = s["metadata"]["name"]
        if s.get("data"):
            out.append(f"{name}: uses `data` (base64 values) instead of placeholder stringData")
        for key, value in (s.get("stringData") or {}).items():
            if not PLACEHOLDER.fullmatch(str(value)):
                out.append(f"{name}.{key}: not a <placeholder>")
    return out


# Shapes of real credentials that must never appear anywhere under infra/.
CREDENTIAL_PATTERNS = {
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}


def credential_problems(text: str, where: str) -> list[str]:
    return [f"{where}: looks like a {what}" for what, rx in CREDENTIAL_PATTERNS.items() if rx.search(text)]


def claim_problems(docs: list[Doc], claims: set[str]) -> list[str]:
    out = []
    for doc in docs:
        for node in walk(doc):
            pvc = node.get("persistentVolumeClaim")
            if isinstance(pvc, dict) and pvc.get("claimName") not in claims:
                out.append(f"claim {pvc.get('claimName')!r} is not defined in storage.yaml")
    return out


# -- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        if buf:
            instr, _, args = buf.partition(" ")
            out.append((instr.upper(), args.strip()))
        buf = ""
    return out


_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|ACCESS_KEY|API_KEY|CREDENTIAL", re.I)
_SECRET_FILE = re.compile(r"(^|/)(\.env|\.netrc|\.npmrc|\.pypirc|credentials|id_rsa|id_ed25519|\.aws|"
                          r"\.huggingface|token)(\b|$)", re.I)


def _arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    defaults = {}
    for instr, args in instructions:
        if instr == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def _cuda_major_of_image(image: str) -> int | None:
    m = re.match(r"(?:[\w./-]*/)?cuda:(\d+)\.", image)
    return int(m.group(1)) if m else None


def dockerfile_problems(text: str, repo: Path = REPO) -> list[str]:
    """Static checks of the image recipe; `repo` resolves COPY sources."""
    ins = dockerfile_instructions(text)
    args = _arg_defaults(ins)
    resolve = lambda s: _VAR.sub(lambda m: args.get(m.group(1), m.group(0)), s)  # noqa: E731
    runs = [resolve(a) for i, a in ins if i == "RUN"]
    out: list[str] = []

    stages, images = set(), []
    for instr, a in ins:
        if instr != "FROM":
            continue
        words = resolve(a).split()
        image = next(w for w in words if not w.startswith("--"))
        if "AS" in (w.upper() for w in words):
            stages.add(words[-1])
        if image in stages:
            continue
        images.append(image)
        name = image.split("@")[0]
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
        if "$" in image:
            out.append(f"FROM {image}: unresolved build argument")
        elif "@sha256:" not in image and (not tag or tag == "latest" or not re.search(r"\d", tag)):
            out.append(f"FROM {image}: base image not pinned to a version tag or digest")
    if not images:
        out.append("no FROM instruction")

    # torch: a CUDA wheel whose CUDA major matches the base images (nvcc builds nvdiffrast).
    torch_runs = [r for r in runs if re.search(r"pip install [^&;]*[\"']?torch==", r)]
    cu = [re.search(r"download\.pytorch\.org/whl/cu(\d+)", r) for r in torch_runs]
    if not torch_runs or not all(cu):
        out.append("torch is not installed from a CUDA wheel index (download.pytorch.org/whl/cuXYZ)")
    else:
        torch_major = int(cu[0].group(1)[:-1])
        for image in images:
            major = _cuda_major_of_image(image)
            if major is not None and major != torch_major:
                out.append(f"{image}: CUDA {major} but the torch wheel is CUDA {torch_major}")

    nvd = [r for r in runs if re.search(r"pip install[^&;|]*nvdiffrast", r)]
    if not nvd:
        out.append("nvdiffrast is not installed")
    for r in nvd:
        git = re.search(r"git\+https://github\.com/NVlabs/nvdiffrast(?:\.git)?(@[\w.\-]+)?", r)
        if git and (not git.group(1) or git.group(1)[1:] in ("main", "master", "HEAD")):
            out.append("nvdiffrast from git without a pinned tag/commit")
        if git and "--no-build-isolation" not in r:
            out.append("nvdiffrast from source needs --no-build-isolation (it builds against torch)")
        if not git and not re.search(r"diffrp-nvdiffrast==", r):
            out.append("nvdiffrast neither from a pinned git ref nor a pinned wheel")
    arch = args.get("TORCH_CUDA_ARCH_LIST", "") + " " + " ".join(
        a for i, a in ins if i == "ENV" and "TORCH_CUDA_ARCH_LIST" in a)
    if "9.0" not in arch:
        out.append("TORCH_CUDA_ARCH_LIST does not include 9.0 (H100)")

    extras = [m.group(1) for r in runs for m in re.finditer(r"pip install [^&;]*?[\"']?[./\w]*\[([\w,\s-]+)\]", r)]
    if not any("pipeline" in e for e in extras):
        out.append("the project is not installed with its `pipeline` extra")
    if any("gpu" in e.split(",") for e in extras) and any("git+" in r for r in nvd):
        out.append("the `gpu` extra (diffrp-nvdiffrast) would overwrite the source-built nvdiffrast")

    for instr, a in ins:
        if instr in ("ENV", "ARG"):
            # `ENV A=1 B=2`, legacy `ENV A 1`, `ARG A=1`, `ARG A`: every name declared.
            names = re.findall(r"(?:^|\s)([A-Za-z_]\w*)=", a) or a.split()[:1]
            for name in names:
                if _SECRET_NAME.search(name):
                    out.append(f"{instr} {name}: secrets must not be build args or image env")
        if instr == "RUN" and re.search(r"HF_TOKEN=|--token\b|AWS_SECRET_ACCESS_KEY=", a):
            out.append(f"RUN passes a credential: {a[:60]}...")
        if instr in ("COPY", "ADD") and not a.startswith("--from"):
            srcs = [w for w in a.split() if not w.startswith("--")][:-1]
            for src in srcs:
                if _SECRET_FILE.search(src):
                    out.append(f"{instr} {src}: copies a credential file into the image")
                elif not (repo / src).exists():
                    out.append(f"{instr} {src}: no such path in the repository")
    out += credential_problems(text, "Dockerfile")

    users = [a for i, a in ins if i == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        out.append("the image runs as root (no non-root USER at the end)")
    return out


# -- crontab -----------------------------------------------------------------------------------


_CRON_FIELD = re.compile(r"^[0-9*/,\-]+$")


def cron_lines(text: str) -> list[list[str]]:
    """Job lines of a system crontab (comments and VAR=value lines skipped), split in 7+ parts."""
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", s):
            continue
        out.append(s.split(None, 6))
    return out


def crontab_problems(text: str, script_exists: Callable[[str], bool]) -> list[str]:
    lines = cron_lines(text)
    if not lines:
        return ["no job line"]
    out = []
    for parts in lines:
        if len(parts) < 7:
            out.append(f"{' '.join(parts)}: needs 5 time fields, a user and a command")
            continue
        if not all(_CRON_FIELD.match(f) for f in parts[:5]):
            out.append(f"{' '.join(parts[:5])}: bad time fields")
        script = parts[6].split()[0]
        if not script_exists(script):
            out.append(f"{script}: the command is not infra/cron/nightly.sh")
    return out


def mutated(doc: Doc, edit: Callable[[Doc], Any]) -> Doc:
    """A deep copy of `doc` changed by `edit` (for negative tests)."""
    clone = copy.deepcopy(doc)
    edit(clone)
    return clone
