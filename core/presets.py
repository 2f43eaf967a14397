"""Presets: every knob of one CasTex run, as frozen dataclasses, with validated overrides.

`castex-xl-l` is the paper configuration; `cpu-demo` is sized to finish in minutes on 2 CPU
cores with the trained demo cascade that ships in `weights/`. Model references are Hub ids or
local directories; the token `{models}` is replaced by the models root (CLI `--models`, env
`CASTEX_MODELS`, default `./models`) and `{weights}` by the shipped weights directory, so the
demo preset needs nothing from the network.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError

TINY_CASCADE_DIR = "{models}/tiny-cascade"
# The trained demo cascade ships with the code (weights/demo-cascade, see its MODEL_CARD.md), so
# `{weights}` resolves next to the packages: in a checkout, and in the working directory that
# `ray job submit --working-dir .` unpacks on every node. CASTEX_WEIGHTS points elsewhere.
DEMO_CASCADE_DIR = "{weights}/demo-cascade"
_SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def weights_root() -> str:
    """Directory of the weights shipped with castex (`{weights}` in model references)."""
    return os.environ.get("CASTEX_WEIGHTS") or str(_SHIPPED_WEIGHTS)


@dataclass(frozen=True)
class StageSpec:
    """One cascade stage: which UNet guides, for how many steps, at what guidance scale."""

    name: str
    model: str
    steps: int
    guidance_scale: float
    t_min: tuple[int, int] = (300, 200)
    t_max: tuple[int, int] = (980, 500)
    lr: float = 0.01
    lr_step: int = 100
    lr_gamma: float = 0.9
    noise_level: int = 500


@dataclass(frozen=True)
class Preset:
    name: str
    stages: tuple[StageSpec, ...]
    text_encoder: str
    views: int = 8
    render_size: int = 512
    texture_size: int = 1024
    fov_deg: float = 30.0
    environment: str = "studio"
    env_intensity: float = 2.0
    env_resolution: int = 256
    dtype: str = "bf16"  # UNet dtype on GPU; CPU always runs float32
    preview_views: int = 4
    preview_size: int = 512
    expected_seconds_gpu: float = 0.0  # rough per-asset time, used for progress timeouts

    @property
    def model_ids(self) -> dict[str, str]:
        ids = {s.name: s.model for s in self.stages}
        ids["text_encoder"] = self.text_encoder
        return ids

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def resolved(self, models_root: str | os.PathLike | None = None) -> "Preset":
        """Replace `{models}` (the models root) and `{weights}` (the shipped weights) in model references."""
        root = str(models_root or os.environ.get("CASTEX_MODELS", "models"))
        shipped = weights_root()

        def resolve(ref: str) -> str:
            return ref.replace("{models}", root).replace("{weights}", shipped)

        stages = tuple(dataclasses.replace(s, model=resolve(s.model)) for s in self.stages)
        return dataclasses.replace(self, stages=stages, text_encoder=resolve(self.text_encoder))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_IF_I_XL = "DeepFloyd/IF-I-XL-v1.0"
_IF_I_M = "DeepFloyd/IF-I-M-v1.0"
_IF_II_L = "DeepFloyd/IF-II-L-v1.0"

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="castex-xl-l",
            stages=(StageSpec("stage_1", _IF_I_XL, 500, 15.0), StageSpec("stage_2", _IF_II_L, 1000, 10.0)),
            text_encoder=_IF_I_XL,
            expected_seconds_gpu=710.0,
        ),
        Preset(name="castex-xl", stages=(StageSpec("stage_1", _IF_I_XL, 500, 15.0),), text_encoder=_IF_I_XL,
               expected_seconds_gpu=174.0),
        Preset(name="castex-m", stages=(StageSpec("stage_1", _IF_I_M, 500, 15.0),), text_encoder=_IF_I_M,
               expected_seconds_gpu=38.0),
        Preset(
            name="cpu-demo",
            stages=(
                StageSpec("stage_1", DEMO_CASCADE_DIR + "/stage_1", 120, 15.0, lr_step=40),
                StageSpec("stage_2", DEMO_CASCADE_DIR + "/stage_2", 40, 10.0, lr_step=40),
            ),
            text_encoder=DEMO_CASCADE_DIR + "/stage_1",
            views=4,
            render_size=128,
            texture_size=256,
            env_resolution=64,
            dtype="fp32",
            preview_size=256,
            expected_seconds_gpu=60.0,
        ),
    )
}

# Overrides a manifest row or the CLI may set. Stage fields are addressed as "stage_1.steps".
_TOP_LEVEL_OVERRIDES = {"views", "render_size", "texture_size", "environment", "env_intensity", "dtype",
                        "preview_views", "preview_size"}
_STAGE_OVERRIDES = {"steps", "guidance_scale", "lr", "model"}


def get_preset(name: str, overrides: dict[str, Any] | None = None) -> Preset:
    """Look up a preset by name and apply validated overrides; ConfigError says what is wrong."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    preset = PRESETS[name]
    return apply_overrides(preset, overrides or {})


def apply_overrides(preset: Preset, overrides: dict[str, Any]) -> Preset:
    top: dict[str, Any] = {}
    stage_changes: dict[str, dict[str, Any]] = {}
    stage_names = {s.name for s in preset.stages}
    for key, value in overrides.items():
        if "." in key:
            stage, attr = key.split(".", 1)
            if stage not in stage_names or attr not in _STAGE_OVERRIDES:
                raise ConfigError(f"unknown override {key!r} for preset {preset.name!r}; stage keys are "
                                  f"<{'|'.join(sorted(stage_names))}>.<{'|'.join(sorted(_STAGE_OVERRIDES))}>")
            stage_changes.setdefault(stage, {})[attr] = _coerce(key, value, getattr(_stage(preset, stage), attr))
        elif key in _TOP_LEVEL_OVERRIDES:
            top[key] = _coerce(key, value, getattr(preset, key))
        else:
            raise ConfigError(f"unknown override {key!r}; allowed: {', '.join(sorted(_TOP_LEVEL_OVERRIDES))} "
                              f"and <stage>.<{'|'.join(sorted(_STAGE_OVERRIDES))}>")
    stages = tuple(dataclasses.replace(s, **stage_changes.get(s.name, {})) for s in preset.stages)
    result = dataclasses.replace(preset, stages=stages, **top)
    _validate(result)
    return result


def _stage(preset: Preset, name: str) -> StageSpec:
    return next(s for s in preset.stages if s.name == name)


def _coerce(key: str, value: Any, current: Any) -> Any:
    """Same type as the preset's value; bool is not accepted as a number."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"override {key!r} must be a {type(current).__name__}, got {value!r}")
    try:
        if isinstance(current, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, str):
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"override {key!r} must be a {type(current).__name__}, got {value!r}")


def _validate(p: Preset) -> None:
    checks = [
        (p.views >= 1, "views must be >= 1"),
        (16 <= p.render_size <= 2048, "render_size must be in [16, 2048]"),
        (8 <= p.texture_size <= 8192, "texture_size must be in [8, 8192]"),
        (p.env_intensity > 0, "env_intensity must be > 0"),
        (p.dtype in ("fp32", "fp16", "bf16"), "dtype must be fp32, fp16 or bf16"),
        (all(s.steps >= 0 for s in p.stages), "stage steps must be >= 0"),
        (all(s.guidance_scale >= 1 for s in p.stages), "guidance_scale must be >= 1"),
        (all(s.lr > 0 for s in p.stages), "lr must be > 0"),
        (p.preview_views >= 1, "preview_views must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"preset {p.name!r}: {message}")
