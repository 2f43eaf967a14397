"""Loading one DeepFloyd-IF cascade stage (UNet + schedulers) from a Hub id or a local directory.

Both sources go through diffusers' `from_pretrained`, so the tiny offline cascade
(`core.guidance.tiny`) exercises exactly the code path the real models use. Layouts:

    stage I  (as DeepFloyd/IF-I-XL-v1.0): unet/ scheduler/ text_encoder/ tokenizer/
    stage II (as DeepFloyd/IF-II-L-v1.0): unet/ scheduler/ image_noising_scheduler/

The UNet is frozen (eval, no grad): SDS never differentiates through it.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import torch

from core.errors import ModelLoadError
from core.guidance.sds import PREDICTION_TYPES

log = logging.getLogger(__name__)

T = TypeVar("T")

STAGE_I_LAYOUT = ("unet", "scheduler", "text_encoder", "tokenizer")
STAGE_II_LAYOUT = ("unet", "scheduler", "image_noising_scheduler")

_HUB_HINT = ("A Hugging Face Hub id needs network access (and HF_TOKEN for the gated DeepFloyd models, after "
             "accepting their licence); offline, pass a local directory with the IF layout "
             "(stage I: unet/ scheduler/ text_encoder/ tokenizer/; stage II: unet/ scheduler/ "
             "image_noising_scheduler/), e.g. one written by `castex make-tiny-cascade`.")


@dataclass
class StageModel:
    """A frozen cascade stage ready for SDS: the UNet plus the noise schedule it was trained with."""

    unet: torch.nn.Module
    scheduler: object
    alphas_cumprod: torch.Tensor  # float32 [num_train_timesteps] on the UNet's device
    model_id: str
    resolution: int
    in_channels: int
    noising_scheduler: object | None = None  # stage II only: noises the low-res condition
    prediction_type: str = "epsilon"  # what the UNet's first 3 channels are (IF: epsilon), from the scheduler

    @property
    def needs_condition(self) -> bool:
        """Super-resolution stages take the noised low-res image as 3 extra input channels."""
        return self.in_channels == 6

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype


def looks_like_local_path(path_or_id: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else (or anything that exists) is a directory."""
    s = str(path_or_id)
    if Path(s).expanduser().exists():
        return True
    return s.startswith((".", "/", "~")) or "\\" in s or s.count("/") > 1


def resolve_source(path_or_id: str | Path) -> tuple[str, bool]:
    """(what to pass to from_pretrained, is_local). A missing local directory fails here, fast."""
    s = str(path_or_id)
    if not looks_like_local_path(s):
        return s, False
    path = Path(s).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"model directory {s!r} does not exist (tried it as a local directory). {_HUB_HINT}")
    return str(path), True


def require_subfolders(path: str, names: tuple[str, ...], what: str) -> None:
    """Name the missing parts of a local IF-layout directory instead of a deep diffusers error."""
    missing = [n for n in names if not (Path(path) / n).is_dir()]
    if missing:
        raise ModelLoadError(f"{what} directory {path!r} lacks {', '.join(m + '/' for m in missing)} "
                             f"(expected the IF layout: {' '.join(n + '/' for n in names)}). {_HUB_HINT}")


def load_component(fn: Callable[[], T], *, what: str, source: str, is_local: bool) -> T:
    """Run one from_pretrained call; turn every load failure into a ModelLoadError that says what was tried."""
    try:
        return fn()
    except (MemoryError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - network, missing files, bad configs: all are load failures
        kind = "local directory" if is_local else "Hugging Face Hub id"
        reason = f"{type(exc).__name__}: {str(exc).rstrip('. ')}"
        raise ModelLoadError(f"could not load {what} from {source!r} ({kind}): {reason}. {_HUB_HINT}") from exc


def use_sdpa(unet: torch.nn.Module) -> None:
    """Make sure every attention layer uses torch's scaled_dot_product_attention processors.

    diffusers already picks them by default with torch 2; a checkpoint or an earlier call may have
    set the plain (materialized attention matrix) ones, which cost far more memory at 256 px.
    """
    from diffusers.models.attention_processor import (AttnAddedKVProcessor, AttnAddedKVProcessor2_0,
                                                      AttnProcessor, AttnProcessor2_0)

    swap = {AttnAddedKVProcessor: AttnAddedKVProcessor2_0, AttnProcessor: AttnProcessor2_0}
    processors = unet.attn_processors
    if not any(type(p) in swap for p in processors.values()):
        return
    unet.set_attn_processor({name: swap[type(p)]() if type(p) in swap else p for name, p in processors.items()})


def unet_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """Half precision only on accelerators: CPU kernels for fp16/bf16 are slow or missing."""
    return dtype if device.type != "cpu" else torch.float32


def available_variant(source: str, is_local: bool, subfolder: str, variant: str | None) -> str | None:
    """The weight variant (e.g. `fp16`) to ask for: local directories are checked for its files, so a
    directory without them loads its default weights; the Hub is trusted (IF repos ship fp16)."""
    if variant is None or not is_local or any((Path(source) / subfolder).glob(f"*.{variant}.*")):
        return variant
    log.info("no %s weights in %s/%s; loading the default weights", variant, source, subfolder)
    return None


def unet_load_kwargs(source: str, is_local: bool, dtype: torch.dtype, variant: str | None) -> dict:
    """from_pretrained kwargs; no low_cpu_mem_usage without `accelerate` (diffusers would warn and drop it)."""
    kwargs: dict = {"torch_dtype": dtype}
    variant = available_variant(source, is_local, "unet", variant)
    if variant is not None:
        kwargs["variant"] = variant
    if importlib.util.find_spec("accelerate") is None:
        kwargs["low_cpu_mem_usage"] = False
    return kwargs


def load_stage(path_or_id: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               variant: str | None = None) -> StageModel:
    """Load a frozen IF stage (UNet, scheduler, and for stage II the image-noising scheduler).

    `dtype` applies on GPU (fp16/bf16); CPU always runs float32. `variant` selects weight files
    such as `fp16` (IF repos ship them); a local directory without them loads its default weights.
    Raises ModelLoadError with what was tried and how to fix it.
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel

    device = torch.device(device)
    source, is_local = resolve_source(path_or_id)
    if is_local:
        require_subfolders(source, ("unet", "scheduler"), "cascade stage")
    load_dtype = unet_dtype(device, dtype)

    unet_kwargs = unet_load_kwargs(source, is_local, load_dtype, variant)
    unet = load_component(lambda: UNet2DConditionModel.from_pretrained(source, subfolder="unet", **unet_kwargs),
                          what="the UNet (unet/)", source=source, is_local=is_local)
    scheduler = load_component(lambda: DDPMScheduler.from_pretrained(source, subfolder="scheduler"),
                               what="the scheduler (scheduler/)", source=source, is_local=is_local)
    in_channels = int(unet.config.in_channels)
    prediction_type = str(scheduler.config.get("prediction_type", "epsilon"))
    if prediction_type not in PREDICTION_TYPES:
        raise ModelLoadError(f"the scheduler of {source!r} has prediction_type {prediction_type!r}; SDS supports "
                             f"{', '.join(PREDICTION_TYPES)}")
    noising = None
    if in_channels == 6:
        noising = load_component(lambda: DDPMScheduler.from_pretrained(source, subfolder="image_noising_scheduler"),
                                 what="the image noising scheduler (image_noising_scheduler/)", source=source,
                                 is_local=is_local)
    unet = unet.to(device).eval().requires_grad_(False)
    use_sdpa(unet)
    alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    return StageModel(unet=unet, scheduler=scheduler, alphas_cumprod=alphas_cumprod, model_id=str(path_or_id),
                      resolution=int(unet.config.sample_size), in_channels=in_channels, noising_scheduler=noising,
                      prediction_type=prediction_type)
