"""TextureActor observability and fault hooks, without Ray: metrics, CPU threads, test-only kills."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from actors.faults import AFTER_COMMIT, AFTER_OPTIMIZE, ENV_VAR, crash_count, maybe_die
from actors.metrics import ASSET_SECONDS, ASSETS, STAGE_SECONDS, AssetMetrics
from actors.texture_actor import TextureActor

ROOT = Path(__file__).resolve().parents[1]


class FakeMetric:
    """Records every call; stands in for ray.util.metrics.Counter / Histogram."""

    def __init__(self, kind: str, name: str, tag_keys: tuple[str, ...]) -> None:
        self.kind, self.name, self.tag_keys = kind, name, tag_keys
        self.calls: list[tuple[float, dict[str, str]]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        assert self.kind == "counter" and set(tags or {}) == set(self.tag_keys)
        self.calls.append((value, dict(tags or {})))

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        assert self.kind == "histogram" and set(tags or {}) == set(self.tag_keys)
        self.calls.append((value, dict(tags or {})))


class FakeFactory:
    def __init__(self) -> None:
        self.made: dict[str, FakeMetric] = {}

    def __call__(self, kind: str, name: str, description: str, tag_keys: tuple[str, ...]) -> FakeMetric:
        assert description
        self.made[name] = FakeMetric(kind, name, tag_keys)
        return self.made[name]


def _batch(asset_id: str) -> dict[str, np.ndarray]:
    cols = dict(asset_id=[asset_id], key=[asset_id], row_index=[0], mesh_uri=["m.obj"], prompt=["x"],
                negative_prompt=[""], seed=[1], preset=["cpu-demo"], options=[""], content_key=["0" * 64])
    return {k: np.array(v, dtype=object) for k, v in cols.items()}


def _fake_texture_one(actor: TextureActor, timings: dict[str, float], fail_for: str = "bad"):
    def texture_one(row, work_dir):
        if row["asset_id"] == fail_for:
            raise RuntimeError("boom")
        bundle = work_dir / "bundle"
        bundle.mkdir()
        return {"timings": dict(timings), "losses": {}, "model_ids": {}}, bundle
    return texture_one


def test_actor_records_asset_and_stage_metrics(monkeypatch):
    factory = FakeFactory()
    actor = TextureActor(preset="cpu-demo", commit=lambda result, bundle: None, device="cpu",
                         metrics=AssetMetrics(factory, enabled=True))
    timings = {"fetch": 0.1, "stage_1": 3.0, "stage_2": 2.0, "preview": 0.2, "export": 0.5}
    monkeypatch.setattr(actor, "_texture_one", _fake_texture_one(actor, timings))
    assert actor(_batch("good"))["status"] == ["ok"]
    assert actor(_batch("bad"))["status"] == ["failed"]

    assets = factory.made[ASSETS].calls
    assert [(v, t["status"], t["preset"]) for v, t in assets] == [(1.0, "ok", "cpu-demo"), (1.0, "failed", "cpu-demo")]
    seconds = factory.made[ASSET_SECONDS].calls
    assert [t["status"] for _, t in seconds] == ["ok", "failed"] and all(v >= 0 for v, _ in seconds)
    stages = factory.made[STAGE_SECONDS].calls  # only the ok asset reached the stages
    assert sorted((t["stage"], v) for v, t in stages) == [("export", 0.5), ("stage_1", 3.0), ("stage_2", 2.0)]


def test_broken_or_disabled_metrics_never_fail_an_asset(monkeypatch):
    def broken_factory(kind, name, description, tag_keys):
        raise RuntimeError("no metrics agent")

    for metrics in (AssetMetrics(broken_factory, enabled=True), AssetMetrics(FakeFactory(), enabled=False)):
        actor = TextureActor(preset="cpu-demo", commit=lambda result, bundle: None, device="cpu", metrics=metrics)
        monkeypatch.setattr(actor, "_texture_one", _fake_texture_one(actor, {"stage_1": 1.0}))
        assert actor(_batch("good"))["status"] == ["ok"]
        assert not metrics.enabled

    class ExplodingMetric(FakeMetric):
        def inc(self, value=1.0, tags=None):
            raise ValueError("bad tag")

    metrics = AssetMetrics(lambda kind, name, d, keys: ExplodingMetric(kind, name, keys), enabled=True)
    metrics.record_asset(preset="p", status="ok", seconds=1.0, timings={})
    assert not metrics.enabled  # disabled after the first failure, silently afterwards


def test_ray_metrics_work_without_a_cluster():
    pytest.importorskip("ray")
    metrics = AssetMetrics(enabled=True)  # real ray.util.metrics, no ray.init(): must not raise
    metrics.record_asset(preset="cpu-demo", status="ok", seconds=1.5, timings={"stage_1": 1.0, "export": 0.1})
    assert metrics.enabled


def test_cpu_actor_sets_its_thread_share():
    import torch

    before = torch.get_num_threads()
    try:
        actor = TextureActor(preset="cpu-demo", commit=lambda r, b: None, device="cpu", num_threads=1,
                             metrics=AssetMetrics(enabled=False))
        assert actor.num_threads == 1 and torch.get_num_threads() == 1
        huge = TextureActor(preset="cpu-demo", commit=lambda r, b: None, device="cpu", num_threads=10_000,
                            metrics=AssetMetrics(enabled=False))
        assert huge.num_threads == (os.cpu_count() or 1)
        untouched = TextureActor(preset="cpu-demo", commit=lambda r, b: None, device="cpu",
                                 metrics=AssetMetrics(enabled=False))
        assert untouched.num_threads is None
    finally:
        torch.set_num_threads(before)


def test_fault_hook_is_inert_without_its_variable(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    maybe_die(AFTER_OPTIMIZE, "anything")  # would SIGKILL pytest if it fired
    monkeypatch.setenv(ENV_VAR, json.dumps({"dir": "/nonexistent", "faults": {"x": {"point": AFTER_COMMIT}}}))
    maybe_die(AFTER_OPTIMIZE, "x")  # other point
    maybe_die(AFTER_COMMIT, "y")    # other asset


def test_fault_hook_kills_the_process_a_bounded_number_of_times(tmp_path):
    markers = tmp_path / "markers"
    asset = "weird/id ü"
    env = {**os.environ, ENV_VAR: json.dumps({"dir": str(markers),
                                              "faults": {asset: {"point": AFTER_COMMIT, "times": 2}}})}
    code = f"from actors.faults import maybe_die; maybe_die({AFTER_COMMIT!r}, {asset!r}); print('alive')"
    runs = [subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=60) for _ in range(3)]
    assert [r.returncode for r in runs] == [-9, -9, 0]
    assert "alive" in runs[2].stdout
    assert crash_count(markers, asset, AFTER_COMMIT) == 2
