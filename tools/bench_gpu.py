"""Throughput benchmark of one CasTex optimization step against its FLOP floor (issue 5).

Why: the paper's 710 s per asset (XL+L on an A100) is far above what the UNet FLOPs alone cost, so
before optimizing anything we need to know where a step's time goes. This tool reports

* FLOPs per UNet forward per image for IF-I-XL (64 px), IF-II-L (256 px) and IF-I-M, counted with
  `torch.utils.flop_counter.FlopCounterMode` on the meta device (architecture-identical configs
  from `tools.if_configs`, no weights, no memory, no GPU);
* the FLOP floor of the `castex-xl-l` preset: 2K UNet images per step (K views x [uncond | text]),
  500 stage-I + 1000 stage-II steps;
* the dense matmul peak of the device (a long `torch.matmul` loop);
* the preset's real optimization step (render -> `SDSGuidance` with a `StageModel` -> backward ->
  Adam), timed per phase: render+shade forward, UNet forward, the rest of SDS (resize, noise, CFG,
  loss), backward through the renderer, optimizer+projection; with UNet TFLOP/s, its fraction of
  peak, peak memory, projected seconds per asset and floor/measured.

Modes:
    gpu  random-weight bf16 UNets from the IF configs on CUDA, preset `castex-xl-l` (default on CUDA)
    cpu  the tiny offline cascade (stage sizes 32/64) and preset `cpu-demo`, a few steps; the same
         report, so CI exercises every line of it (default without CUDA)

    python -m tools.bench_gpu [--mode cpu|gpu] [--steps N] [--warmup W] [--k K] [--mesh vase]

`--k` is the number of views per step (default: the preset's); the UNet sees 2K images per call.
Per-phase timing lives here, not in core/, so the production loop keeps no timing hooks or syncs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from tools.if_configs import IF_I_M, IF_I_XL, IF_II_L, if_i_m_config, if_i_xl_config, if_ii_l_config

PHASES = ("render_fwd", "unet_fwd", "sds_other", "backward", "optimizer")
PHASE_LABELS = {"render_fwd": "render+shade fwd", "unet_fwd": "UNet fwd", "sds_other": "SDS other",
                "backward": "render+shade bwd", "optimizer": "loss sync+optimizer"}
PROMPT_TOKENS = 77


# ---------------------------------------------------------------- FLOP counting (meta device)

def build_meta_unet(config: dict[str, Any]) -> torch.nn.Module:
    """A UNet whose parameters are meta tensors: shapes only, so even IF-I-XL costs no memory."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**config).eval()


def unet_flops_per_image(config: dict[str, Any], size: int | None = None,
                         text_len: int = PROMPT_TOKENS) -> tuple[float, int]:
    """(FLOPs of one forward for one image, parameter count), called as SDSGuidance calls the UNet.

    One image suffices: nothing in the UNet mixes the batch, so a batch of 2K costs 2K times this.
    """
    unet = build_meta_unet(config)
    size = int(size or config["sample_size"])
    x = torch.empty(1, config["in_channels"], size, size, device="meta")
    t = torch.zeros(1, dtype=torch.long, device="meta")
    text = torch.empty(1, text_len, config.get("encoder_hid_dim") or config["cross_attention_dim"], device="meta")
    kwargs = {}
    if config.get("class_embed_type") == "timestep":
        kwargs["class_labels"] = torch.zeros(1, dtype=torch.long, device="meta")
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, t, encoder_hidden_states=text, return_dict=False, **kwargs)
    return float(counter.get_total_flops()), sum(p.numel() for p in unet.parameters())


def if_flop_table() -> list[dict[str, Any]]:
    """FLOPs per image for the IF UNets CasTex uses, at the resolution SDS runs them."""
    rows = []
    for name, model_id, config, size in (("IF-I-XL", IF_I_XL, if_i_xl_config(), 64),
                                         ("IF-II-L", IF_II_L, if_ii_l_config(), 256),
                                         ("IF-I-M", IF_I_M, if_i_m_config(), 64)):
        flops, params = unet_flops_per_image(config, size)
        rows.append({"name": name, "model_id": model_id, "size": size, "flops": flops, "params": params})
    return rows


def preset_floor_flops(preset, flops_by_stage: dict[str, float], views: int) -> float:
    """UNet FLOPs of one asset: 2 x views images per step (CFG batch), every stage's steps."""
    return sum(2 * views * spec.steps * flops_by_stage[spec.name] for spec in preset.stages)


# ---------------------------------------------------------------- timing

class Clock:
    """Timestamps on the device timeline: CUDA events on GPU (no host sync per mark), perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start: Any, end: Any) -> float:
        """Milliseconds between two marks; on GPU call `sync()` first."""
        return float(start.elapsed_time(end)) if self.cuda else (end - start) * 1e3

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


class TimedUNet(torch.nn.Module):
    """Wraps the frozen UNet so its forward is timed inside `SDSGuidance.loss` without touching core/."""

    def __init__(self, unet: torch.nn.Module, clock: Clock) -> None:
        super().__init__()
        self.unet = unet
        self.clock = clock
        self.marks: list[tuple[Any, Any]] = []
        self.config = unet.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        start = self.clock.mark()
        out = self.unet(*args, **kwargs)
        self.marks.append((start, self.clock.mark()))
        return out


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, iters: int, trials: int = 3) -> float:
    """Dense matmul throughput in FLOP/s: the practical ceiling the UNet's convs/GEMMs are measured against.

    Best of `trials` timed loops: a peak is a maximum, and on a shared machine (CI, 2 busy cores)
    one loop can be slowed by neighbours.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    clock = Clock(device)
    for _ in range(3):
        torch.matmul(a, b)
    best = 0.0
    for _ in range(trials):
        clock.sync()
        start = clock.mark()
        for _ in range(iters):
            torch.matmul(a, b)
        end = clock.mark()
        clock.sync()
        best = max(best, 2.0 * n ** 3 * iters / (clock.ms(start, end) / 1e3))
    return best


# ---------------------------------------------------------------- stages

def random_weight_unet(config: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """A UNet with the real architecture and random weights, allocated directly in `dtype` on `device`.

    Built on meta, cast, then materialized with `to_empty` and re-initialized per layer, so IF-I-XL
    never exists in fp32 on the host (17 GB). Values are irrelevant for speed; finite ones keep SDS
    numerically sane.
    """
    unet = build_meta_unet(config)
    torch.nn.Module.to(unet, dtype=dtype)  # plain cast: diffusers' own `.to` warns about fp32-kept modules
    unet = unet.to_empty(device=device)  # uninitialized memory: every parameter is written below
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        with torch.no_grad():
            # Bare nn.Parameters (e.g. the text pooling's positional embedding) belong to no layer with
            # reset_parameters(); give everything a small finite value first, then the layer defaults.
            for param in unet.parameters():
                param.normal_(0.0, 0.02)
            for module in unet.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return unet.eval().requires_grad_(False)


def random_stage_models(stages: list[tuple[str, dict[str, Any]]], device: torch.device,
                        dtype: torch.dtype) -> tuple[list[Any], list[dict[str, Any]]]:
    """StageModels around random-weight UNets built from (model id, config) pairs, with IF's DDPM
    schedules (cosine, 1000 steps; stage II also gets the image-noising scheduler)."""
    from core.guidance.cascade import StageModel, use_sdpa
    from core.guidance.tiny import build_noising_scheduler, build_scheduler

    models, configs = [], []
    for i, (model_id, config) in enumerate(stages):
        unet = random_weight_unet(config, device, dtype, seed=i)
        use_sdpa(unet)
        scheduler = build_scheduler()
        noising = build_noising_scheduler() if config["in_channels"] == 6 else None
        models.append(StageModel(unet=unet, scheduler=scheduler,
                                 alphas_cumprod=scheduler.alphas_cumprod.to(device=device, dtype=torch.float32),
                                 model_id=f"{model_id} (random weights)", resolution=int(config["sample_size"]),
                                 in_channels=int(config["in_channels"]), noising_scheduler=noising))
        configs.append(config)
    return models, configs


def gpu_stage_models(device: torch.device, dtype: torch.dtype) -> tuple[list[Any], list[dict[str, Any]]]:
    """Random-weight IF-I-XL and IF-II-L: the castex-xl-l cascade at its real cost."""
    return random_stage_models([(IF_I_XL, if_i_xl_config()), (IF_II_L, if_ii_l_config())], device, dtype)


def cpu_stage_models(root: Path) -> tuple[list[Any], list[dict[str, Any]]]:
    """The tiny offline cascade (32 / 64 px), loaded through the production loader."""
    from transformers.utils import logging as transformers_logging

    from core.guidance import load_stage, write_tiny_cascade

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # its "Writing model shards" bar would clutter the report
    try:
        write_tiny_cascade(root, seed=0, stage1_size=32, stage2_size=64)
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    models = [dataclasses.replace(load_stage(root / stage, device="cpu"), model_id=f"tiny-cascade/{stage}")
              for stage in ("stage_1", "stage_2")]
    return models, [dict(m.unet.config) for m in models]


def _clean_config(config: dict[str, Any]) -> dict[str, Any]:
    """A loaded model's config minus diffusers' bookkeeping keys, usable as constructor kwargs."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


# ---------------------------------------------------------------- the timed loop

@dataclass
class StageTiming:
    name: str
    model_id: str
    resolution: int
    steps: int
    preset_steps: int
    seconds_per_step: float
    phase_ms: dict[str, float]
    unet_flops_per_call: float
    unet_tflops: float
    peak_memory_bytes: int | None
    extra: dict[str, Any] = field(default_factory=dict)


def time_stage(scene, spec, guidance, embeds, preset, views_per_step: int, steps: int, warmup: int,
               clock: Clock, device: torch.device, flops_per_image: float, seed: int) -> StageTiming:
    """Run warmup + timed steps of one stage exactly like `core.optimize._run_stage`, marking phases.

    The loss is read back once per step (the production loop reads it every 10 steps); that sync is
    charged to the optimizer phase. Stage II conditions on the initial texture (same cost as the
    stage-I result).
    """
    from core.camera import ViewDistribution, sample_views
    from core.material import TextureSet
    from core.optimize import needs_low_res_condition
    from core.render import render

    textures = TextureSet.constant(preset.texture_size, device=device).requires_grad_(True)
    frozen = textures.detach_clone() if needs_low_res_condition(guidance) else None
    opt = torch.optim.Adam(textures.tensors(), lr=spec.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=spec.lr_step, gamma=spec.lr_gamma)
    view_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    dist = ViewDistribution(fov_deg=preset.fov_deg)
    timed_unet: TimedUNet = guidance.stage.unet

    totals = dict.fromkeys(PHASES, 0.0)
    wall = 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(warmup + steps):
        timed = step >= warmup
        clock.sync()
        t_wall = time.perf_counter()
        timed_unet.marks.clear()
        m0 = clock.mark()
        views = sample_views(views_per_step, view_gen, dist).to(device)
        images = render(scene, textures, views, preset.render_size).permute(0, 3, 1, 2)
        cond = None
        if frozen is not None:
            with torch.no_grad():
                cond = render(scene, frozen, views, preset.render_size).permute(0, 3, 1, 2)
        m1 = clock.mark()
        loss, _ = guidance.loss(images, embeds=embeds, progress=step / max(warmup + steps, 1), generator=noise_gen,
                                cond_images=cond, views=views)
        m2 = clock.mark()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        m3 = clock.mark()
        opt.step()
        sched.step()
        textures.project_()
        value = float(loss.detach())
        m4 = clock.mark()
        clock.sync()
        if not timed:
            continue
        wall += time.perf_counter() - t_wall
        unet_ms = sum(clock.ms(a, b) for a, b in timed_unet.marks)
        totals["render_fwd"] += clock.ms(m0, m1)
        totals["unet_fwd"] += unet_ms
        totals["sds_other"] += clock.ms(m1, m2) - unet_ms
        totals["backward"] += clock.ms(m2, m3)
        totals["optimizer"] += clock.ms(m3, m4)
        if not math.isfinite(value):  # random weights gone wrong: timings stay valid, but say so
            totals.setdefault("nan_steps", 0.0)
            totals["nan_steps"] += 1
    nan_steps = int(totals.pop("nan_steps", 0))
    phase_ms = {k: v / max(steps, 1) for k, v in totals.items()}
    unet_flops = 2 * views_per_step * flops_per_image
    unet_s = phase_ms["unet_fwd"] / 1e3
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    return StageTiming(name=spec.name, model_id=guidance.stage.model_id, resolution=guidance.resolution, steps=steps,
                       preset_steps=spec.steps, seconds_per_step=wall / max(steps, 1), phase_ms=phase_ms,
                       unet_flops_per_call=unet_flops, unet_tflops=unet_flops / unet_s / 1e12 if unet_s > 0 else 0.0,
                       peak_memory_bytes=peak, extra={"nan_steps": nan_steps})


# ---------------------------------------------------------------- the benchmark

def time_preset(preset, models: list[Any], configs: list[dict[str, Any]], *, device: torch.device, clock: Clock,
                views: int | None, steps: int, warmup: int, mesh_name: str, seed: int, peak: float,
                unet_dtype: torch.dtype, out: Callable[[str], None]) -> tuple[list[StageTiming], float, int]:
    """Time every stage of `preset` with the given StageModels on an example mesh; print each stage.

    Returns (per-stage timings, UNet FLOPs of one whole asset, views per step). Separate from `run`
    so tests can drive the GPU-mode path (random-weight StageModels) on the CPU.
    """
    from core.brdf_lut import fg_lut
    from core.examples import example_mesh
    from core.guidance import PromptEmbeds, SDSGuidance
    from core.raster import get_rasterizer
    from core.render import Scene
    from core.texturer import make_light

    views_per_step = views or preset.views
    flops = {spec.name: unet_flops_per_image(_clean_config(cfg), model.resolution)[0]
             for spec, cfg, model in zip(preset.stages, configs, models)}
    floor = preset_floor_flops(preset, flops, views_per_step)
    low_res = models[0].resolution
    text_dim = int(configs[0].get("encoder_hid_dim") or configs[0]["cross_attention_dim"])
    gen = torch.Generator().manual_seed(seed)
    embeds = PromptEmbeds(cond=torch.randn(1, PROMPT_TOKENS, text_dim, generator=gen),
                          uncond=torch.randn(1, PROMPT_TOKENS, text_dim, generator=gen)).to(device, unet_dtype)
    light = make_light(preset.environment, preset.env_resolution, preset.env_intensity, device)
    rasterizer = get_rasterizer("auto", device=device)
    mesh = example_mesh(mesh_name)
    scene = Scene(mesh=mesh.to(device), light=light, rasterizer=rasterizer, fg_lut=fg_lut().to(device))
    out(f"preset {preset.name}: {views_per_step} views ({2 * views_per_step} UNet images/step), render "
        f"{preset.render_size}^2, texture {preset.texture_size}^2, mesh {mesh_name} ({mesh.num_faces} faces), "
        f"rasterizer {rasterizer.name}, timed {steps} steps after {warmup} warm-up per stage")
    timings = []
    for spec, model in zip(preset.stages, models):
        model = dataclasses.replace(model, unet=TimedUNet(model.unet, clock))
        guidance = SDSGuidance(model, guidance_scale=spec.guidance_scale, t_min=spec.t_min, t_max=spec.t_max,
                               noise_level=spec.noise_level, cond_low_res=low_res)
        timing = time_stage(scene, spec, guidance, embeds, preset, views_per_step, steps, warmup, clock, device,
                            flops[spec.name], seed)
        timings.append(timing)
        _print_stage(timing, flops[spec.name], peak, out)
    return timings, floor, views_per_step


def run(mode: str, *, steps: int, warmup: int, views: int | None, mesh_name: str, matmul_n: int | None,
        matmul_iters: int | None, seed: int = 0, out: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark and print the report line by line; returns the same figures as a dict."""
    from core.presets import get_preset

    if mode == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--mode gpu needs CUDA; use --mode cpu on this machine")
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    unet_dtype = torch.bfloat16 if mode == "gpu" else torch.float32
    clock = Clock(device)
    report: dict[str, Any] = {"mode": mode, "device": _device_name(device), "torch": torch.__version__}

    out(f"== castex step benchmark: mode {mode} ==")
    out(f"device: {report['device']} | torch {torch.__version__} | threads {torch.get_num_threads()}")

    # 1. FLOPs of the real IF UNets (meta device) and the castex-xl-l floor.
    table = if_flop_table()
    report["if_flops"] = {r["name"]: r for r in table}
    out("IF UNet FLOPs per forward per image (meta device, architecture-identical configs):")
    for r in table:
        note = " (widths unconfirmed)" if r["name"] == "IF-I-M" else ""
        out(f"  {r['name']} @ {r['size']} px: {r['flops'] / 1e12:.3f} TFLOP, {r['params'] / 1e9:.3f} B params{note}")
    xl_l = get_preset("castex-xl-l")
    xl_l_views = views or xl_l.views
    xl_l_floor = preset_floor_flops(xl_l, {"stage_1": report["if_flops"]["IF-I-XL"]["flops"],
                                           "stage_2": report["if_flops"]["IF-II-L"]["flops"]}, xl_l_views)
    report["castex_xl_l_floor_pflop"] = xl_l_floor / 1e15
    out(f"castex-xl-l floor: {2 * xl_l_views} images/step x ({' + '.join(str(s.steps) for s in xl_l.stages)}) steps "
        f"= {xl_l_floor / 1e15:.2f} PFLOP")

    # 2. Matmul peak of this device.
    n = matmul_n or (8192 if mode == "gpu" else 1024)
    iters = matmul_iters or (50 if mode == "gpu" else 5)
    peak = matmul_peak(device, unet_dtype, n, iters)
    report["matmul_peak_tflops"] = peak / 1e12
    out(f"matmul peak ({str(unet_dtype).removeprefix('torch.')}, {n}^3 x {iters}, best of 3): {peak / 1e12:.3f} TFLOP/s")
    if mode == "gpu":
        out(f"castex-xl-l floor at matmul peak: {xl_l_floor / peak:.1f} s per asset")

    # 3. The preset's optimization step.
    with tempfile.TemporaryDirectory(prefix="castex-bench-") as tmp:
        if mode == "gpu":
            preset = xl_l
            models, configs = gpu_stage_models(device, unet_dtype)
        else:
            preset = get_preset("cpu-demo")
            models, configs = cpu_stage_models(Path(tmp) / "tiny-cascade")
        timings, floor, views_per_step = time_preset(preset, models, configs, device=device, clock=clock,
                                                     views=views, steps=steps, warmup=warmup, mesh_name=mesh_name,
                                                     seed=seed, peak=peak, unet_dtype=unet_dtype, out=out)
        del models

    projected = sum(t.seconds_per_step * t.preset_steps for t in timings)
    report.update(preset=preset.name, views=views_per_step, stages=[dataclasses.asdict(t) for t in timings],
                  projected_seconds_per_asset=projected, floor_pflop=floor / 1e15, floor_seconds=floor / peak,
                  floor_over_measured=(floor / peak) / projected if projected > 0 else 0.0)
    steps_text = " + ".join(str(t.preset_steps) for t in timings)
    out(f"projected seconds per asset ({preset.name}, {steps_text} steps): {projected:.1f} s")
    out(f"floor ({preset.name} UNet FLOPs / matmul peak): {floor / 1e15:.4g} PFLOP = {floor / peak:.1f} s; "
        f"floor/measured = {report['floor_over_measured']:.3f}")
    return report


def _print_stage(t: StageTiming, flops_per_image: float, peak: float, out: Callable[[str], None]) -> None:
    out(f"{t.name} [{t.model_id}] @ {t.resolution} px: {flops_per_image / 1e9:.3f} GFLOP/image, "
        f"{t.unet_flops_per_call / 1e12:.4f} TFLOP per UNet call")
    phases = " | ".join(f"{PHASE_LABELS[k]} {v:.1f}" for k, v in t.phase_ms.items())
    out(f"  per step (ms): {phases} | step {t.seconds_per_step * 1e3:.1f} (wall)")
    out(f"  UNet: {t.unet_tflops:.3f} TFLOP/s = {100 * t.unet_tflops * 1e12 / peak:.1f}% of matmul peak")
    memory = f"{t.peak_memory_bytes / 2**30:.2f} GiB" if t.peak_memory_bytes is not None else "n/a (CPU)"
    out(f"  peak memory (allocated, both UNets resident): {memory}")
    out(f"  {t.preset_steps} preset steps -> {t.seconds_per_step * t.preset_steps:.1f} s"
        + (f" ({t.extra['nan_steps']} timed steps had a NaN loss)" if t.extra.get("nan_steps") else ""))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("cpu", "gpu"), default="gpu" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per stage (gpu 10, cpu 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per stage first (gpu 3, cpu 1)")
    ap.add_argument("--k", type=int, default=None, help="views per step (default: the preset's)")
    ap.add_argument("--mesh", default="vase", help="example mesh (core.examples)")
    ap.add_argument("--matmul-size", type=int, default=None)
    ap.add_argument("--matmul-iters", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    gpu = args.mode == "gpu"
    steps = args.steps if args.steps is not None else (10 if gpu else 2)
    warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    if steps < 1 or warmup < 0 or (args.k is not None and args.k < 1):
        ap.error("--steps and --k must be >= 1, --warmup >= 0")
    report = run(args.mode, steps=steps, warmup=warmup, views=args.k, mesh_name=args.mesh,
                 matmul_n=args.matmul_size, matmul_iters=args.matmul_iters, seed=args.seed)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    sys.stdout.flush()
    return report


if __name__ == "__main__":
    main()
