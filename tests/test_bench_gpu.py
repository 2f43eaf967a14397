"""tools.bench_gpu: the IF FLOP figures the GPU benchmark is judged against, the CPU-mode report
end to end, and the GPU-mode code path (random-weight StageModels) driven on the CPU.

CI has no GPU, so these tests are what keeps the GPU entry point from rotting: every line of the
report is produced in CPU mode by the same code, only the device, dtype and models differ.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

import pytest
import torch

from core.guidance.tiny import tiny_unet_config
from core.presets import get_preset

# `tools` is not an installed package: `python -m pytest` (the Makefile) finds it through the working
# directory, a bare `pytest` does not, so put the repository root on the path for both.
_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from tools import bench_gpu  # noqa: E402
from tools.if_configs import if_i_m_config, if_i_xl_config, if_ii_l_config  # noqa: E402


@functools.lru_cache(maxsize=None)
def _flops(name: str, size: int) -> tuple[float, int]:
    """Meta-device counts, cached: IF-I-XL is counted once for the whole module."""
    configs = {"xl": if_i_xl_config, "ii-l": if_ii_l_config, "m": if_i_m_config}
    return bench_gpu.unet_flops_per_image(configs[name](), size)


@pytest.mark.parametrize("name, size, tflop, params_b", [
    ("xl", 64, 2.88, 4.3),     # IF-I-XL: 4.3B parameters
    ("ii-l", 256, 3.09, 1.2),  # IF-II-L: 1.2B parameters
])
def test_if_unet_flops_on_meta_match_the_issue(name, size, tflop, params_b):
    flops, params = _flops(name, size)
    assert flops / 1e12 == pytest.approx(tflop, rel=0.10)
    assert params / 1e9 == pytest.approx(params_b, rel=0.05)  # the architecture really is the released one


def test_if_i_m_is_roughly_400m_and_cheaper_than_xl():
    flops_m, params_m = _flops("m", 64)
    flops_xl, _ = _flops("xl", 64)
    assert 0.3e9 < params_m < 0.5e9
    assert flops_m < flops_xl / 5


def test_castex_xl_l_floor_counts_cfg_batch_and_both_stages():
    flops = {"stage_1": 2.88e12, "stage_2": 3.09e12}
    floor = bench_gpu.preset_floor_flops(get_preset("castex-xl-l"), flops, views=8)
    assert floor == pytest.approx(16 * (500 * 2.88e12 + 1000 * 3.09e12))


@pytest.mark.slow  # ~25 s on 2 busy cores: diffusers import, tiny cascade, 2 stages of the real step
def test_cpu_mode_prints_the_full_report(capsys):
    report = bench_gpu.main(["--mode", "cpu", "--steps", "1", "--warmup", "0"])
    text = capsys.readouterr().out
    for field in ("mode cpu", "IF-I-XL @ 64 px", "IF-II-L @ 256 px", "IF-I-M @ 64 px", "castex-xl-l floor",
                  "PFLOP", "matmul peak", "preset cpu-demo", "per step (ms)", "render+shade fwd", "UNet fwd",
                  "SDS other", "render+shade bwd", "optimizer", "TFLOP/s", "% of matmul peak", "peak memory",
                  "projected seconds per asset", "floor/measured", "stage_1", "stage_2"):
        assert field in text, f"report lacks {field!r}:\n{text}"
    assert report["castex_xl_l_floor_pflop"] == pytest.approx(16 * (500 * 2.88 + 1000 * 3.09) / 1e3, rel=0.10)
    assert [s["name"] for s in report["stages"]] == ["stage_1", "stage_2"]
    for stage in report["stages"]:
        assert stage["phase_ms"]["unet_fwd"] > 0 and stage["phase_ms"]["render_fwd"] > 0
        assert stage["unet_tflops"] > 0 and stage["peak_memory_bytes"] is None
    assert report["projected_seconds_per_asset"] > 0
    # Below 1 on a quiet machine (nothing beats its own floor); not asserted: on a shared CI CPU the
    # matmul peak and the step are timed at different moments of neighbours' load.
    assert report["floor_over_measured"] > 0 and report["floor_seconds"] > 0


@pytest.mark.slow  # ~15 s on 2 busy cores
def test_random_weight_stage_models_run_a_timed_step_on_cpu():
    """The GPU mode's model path (meta -> to_empty -> re-init -> StageModel -> SDSGuidance), at toy size."""
    stages = [("tiny-I", tiny_unet_config(32, super_resolution=False)),
              ("tiny-II", tiny_unet_config(64, super_resolution=True))]
    models, configs = bench_gpu.random_stage_models(stages, torch.device("cpu"), torch.float32)
    assert all(torch.isfinite(p).all() for m in models for p in m.unet.parameters())
    preset = get_preset("cpu-demo", {"render_size": 64, "texture_size": 64})
    preset = dataclasses.replace(preset, stages=tuple(dataclasses.replace(s, steps=3) for s in preset.stages))
    lines: list[str] = []
    device = torch.device("cpu")
    timings, floor, views = bench_gpu.time_preset(preset, models, configs, device=device, clock=bench_gpu.Clock(device),
                                                  views=1, steps=1, warmup=0, mesh_name="box", seed=0, peak=1e11,
                                                  unet_dtype=torch.float32, out=lines.append)
    assert views == 1 and len(timings) == 2 and floor > 0
    assert timings[1].resolution == 64 and timings[1].extra["nan_steps"] == 0
    # floor = sum over stages of steps x (UNet FLOPs of one CFG call)
    assert floor == pytest.approx(3 * (timings[0].unet_flops_per_call + timings[1].unet_flops_per_call))
    assert any("stage_2 [tiny-II (random weights)]" in line for line in lines)
