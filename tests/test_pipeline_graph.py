"""Driver pieces of `pipeline.graph` that need no Ray cluster: content keys, commit, timeout."""

from __future__ import annotations

import json
import pickle

import pytest

from core.examples import write_example_mesh
from pipeline.config import RunConfig
from pipeline.graph import Committer, compute_content_key
from pipeline.index import read_index
from pipeline.shards import ShardPacker


def _row(mesh: str, **over) -> dict:
    row = {"row_index": 0, "asset_id": "a", "key": "a", "mesh_uri": mesh, "prompt": "a vase",
           "negative_prompt": "", "seed": 0, "preset": "cpu-demo", "options": ""}
    row.update(over)
    return row


def test_content_key_is_deterministic_and_depends_on_inputs(tmp_path):
    mesh = str(write_example_mesh("box", tmp_path / "box.obj"))
    a = compute_content_key(_row(mesh), storage_options=None, pipeline_version="1")
    assert a["error_code"] == "" and len(a["content_key"]) == 64
    assert compute_content_key(_row(mesh), storage_options=None, pipeline_version="1")["content_key"] == a["content_key"]
    for changed in (_row(mesh, seed=1), _row(mesh, prompt="a box"),
                    _row(mesh, options=json.dumps({"stage_1.steps": 3}))):
        assert compute_content_key(changed, storage_options=None, pipeline_version="1")["content_key"] != a["content_key"]
    assert compute_content_key(_row(mesh), storage_options=None, pipeline_version="2")["content_key"] != a["content_key"]


def test_content_key_failure_is_a_column(tmp_path):
    out = compute_content_key(_row(str(tmp_path / "nope.obj")), storage_options=None, pipeline_version="1")
    assert out["content_key"] == "" and out["error_code"] == "unreachable" and "nope.obj" in out["error"]


def test_committer_pickles_and_stages_failures(tmp_path):
    commit = Committer(str(tmp_path / "out"), {}, "r1", "1")
    commit = pickle.loads(pickle.dumps(commit))
    result = {**_row("m.obj"), "status": "failed", "error_code": "mesh_no_faces", "error": "no faces",
              "content_key": "", "seconds": 1.0, "gpu_seconds": 1.0}
    assert commit(result, None).endswith("failed.a.tar")
    ShardPacker(commit._storage, "r1").pack(final=True)
    rows = read_index(str(tmp_path / "out"), run_ids=["r1"]).to_pylist()
    assert [(r["asset_id"], r["status"], r["error_code"]) for r in rows] == [("a", "failed", "mesh_no_faces")]


def test_config_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig(manifest="m", out="o", models_root="models", cache_dir="c")
    assert cfg.resolved_models_root() == str(tmp_path / "models")
    assert cfg.resolved_cache_dir() == str(tmp_path / "c")


def test_cpu_threads_per_actor_share_or_fixed(monkeypatch):
    """CPU actors share the cluster's cores unless a fixed per-actor count is configured; GPU actors keep torch's default."""
    ray = pytest.importorskip("ray")
    from pipeline.graph import _cpu_threads

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    assert _cpu_threads(False, 1) == 8 and _cpu_threads(False, 3) == 2 and _cpu_threads(False, 16) == 1
    assert _cpu_threads(False, 2, fixed=1) == 1 and _cpu_threads(False, 1, fixed=1) == 1
    assert _cpu_threads(True, 2) is None and _cpu_threads(True, 2, fixed=1) is None
    assert RunConfig(manifest="m", out="o").cpu_threads_per_actor is None
