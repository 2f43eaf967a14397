"""Per-asset Ray metrics of the texture stage: assets done/failed, seconds per asset and per stage.

Why: the per-asset log line says what happened to one asset; a long run also needs rates and
distributions on a dashboard (Prometheus/Grafana through Ray's metrics agent) without grepping
logs. Exported names (Prometheus adds `ray_` in front, and `_total` to counters):

    castex_assets_total{preset, status}        finished assets (status: ok | failed)
    castex_asset_seconds{preset, status}       wall time of one asset (fetch .. commit)
    castex_stage_seconds{preset, stage}        stage_1 / stage_2 (optimizer) and export time

Cheap and safe when export is off: `ray.util.metrics` objects are created once per actor and
only buffer values locally when no metrics agent collects them; if Ray is missing or creating a
metric fails, recording becomes a no-op (a broken metrics path must never fail an asset).
`CASTEX_METRICS=0` turns recording off entirely.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

log = logging.getLogger("castex.metrics")

ASSETS = "castex_assets"
ASSET_SECONDS = "castex_asset_seconds"
STAGE_SECONDS = "castex_stage_seconds"
# Timing keys (from TextureActor._texture_one) that are exported as stages.
STAGES = ("stage_1", "stage_2", "export")
# Seconds: a tiny CPU asset takes ~1 s, a paper-preset GPU asset ~10 min.
BOUNDARIES = [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 3600]


class Counter(Protocol):
    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None: ...


class Histogram(Protocol):
    def observe(self, value: float, tags: dict[str, str] | None = None) -> None: ...


MetricFactory = Callable[[str, str, str, tuple[str, ...]], Any]


def ray_metric(kind: str, name: str, description: str, tag_keys: tuple[str, ...]) -> Any:
    """Create a `ray.util.metrics` Counter or Histogram (the default factory)."""
    from ray.util import metrics

    if kind == "counter":
        return metrics.Counter(name, description=description, tag_keys=tag_keys)
    return metrics.Histogram(name, description=description, boundaries=BOUNDARIES, tag_keys=tag_keys)


def metrics_enabled() -> bool:
    return os.environ.get("CASTEX_METRICS", "1").strip().lower() not in ("0", "false", "no", "off")


class AssetMetrics:
    """The texture actor's metrics; `factory(kind, name, description, tag_keys)` makes one metric
    (tests pass a fake). Every failure inside is logged once and swallowed."""

    def __init__(self, factory: MetricFactory | None = None, enabled: bool | None = None) -> None:
        self.enabled = metrics_enabled() if enabled is None else enabled
        self._assets: Counter | None = None
        self._asset_seconds: Histogram | None = None
        self._stage_seconds: Histogram | None = None
        self._warned = False
        if not self.enabled:
            return
        make = factory or ray_metric
        try:
            self._assets = make("counter", ASSETS, "Finished assets by preset and status.", ("preset", "status"))
            self._asset_seconds = make("histogram", ASSET_SECONDS, "Wall seconds per asset (fetch to commit).",
                                       ("preset", "status"))
            self._stage_seconds = make("histogram", STAGE_SECONDS,
                                       "Seconds per asset stage (stage_1, stage_2 optimizer; export).",
                                       ("preset", "stage"))
        except Exception as exc:  # noqa: BLE001 - metrics must never break texturing
            self._disable(exc)

    def _disable(self, exc: BaseException) -> None:
        self.enabled = False
        if not self._warned:
            self._warned = True
            log.warning("metrics disabled: %s: %s", type(exc).__name__, exc)

    def record_asset(self, *, preset: str, status: str, seconds: float, timings: Mapping[str, float]) -> None:
        """One finished asset (ok or failed); stage timings that are missing (a failure before
        that stage) are simply not observed."""
        if not self.enabled:
            return
        try:
            tags = {"preset": str(preset), "status": str(status)}
            assert self._assets is not None and self._asset_seconds is not None and self._stage_seconds is not None
            self._assets.inc(1.0, tags=tags)
            self._asset_seconds.observe(float(seconds), tags=tags)
            for stage in STAGES:
                if stage in timings and timings[stage] is not None:
                    self._stage_seconds.observe(float(timings[stage]), tags={"preset": str(preset), "stage": stage})
        except Exception as exc:  # noqa: BLE001
            self._disable(exc)


__all__ = ["ASSETS", "ASSET_SECONDS", "AssetMetrics", "STAGES", "STAGE_SECONDS", "metrics_enabled", "ray_metric"]
