"""`UNet2DConditionModel` configs architecture-identical to the released DeepFloyd IF UNets.

Why: the real weights are gated and multi-GB, but speed, FLOPs and memory depend only on the
architecture. A UNet built from these configs with random weights costs exactly what the real one
costs, so benchmarks (tools/bench_gpu.py) can run without the Hub.

How they were derived: diffusers' `scripts/convert_if.py` turns IF's original `config.yml` into
diffusers kwargs. Stage I (`create_unet_diffusers_config`): a level is `SimpleCrossAttn*` when its
resolution is in `attention_resolutions`, else `Resnet{Down,Up}sample*` (IF uses resblock_updown);
mid block `UNetMidBlock2DSimpleCrossAttn`; `addition_embed_type="text"`, gelu, scale-shift norm,
`encoder_hid_dim` = T5 width 4096. Super-resolution stages (`get_super_res_unet`) add the noise level
as a `"timestep"` class embedding, a time embedding of width `model_channels * channel_mult[-1]`
with gelu, `resnet_skip_time_act`, and residual scale factors 1/0.7071.

Known-uncertain detail: `only_cross_attention` for IF-II. The conversion script sets it from the
original `disable_self_attentions` (True when that key is absent). It changes FLOPs by a few
percent; `if_ii_l_config(only_cross_attention=...)` lets a benchmark compare both. The default
(False, self + cross attention through the added-KV processor) is the one whose FLOP count matches
the issue's ~3.09 TFLOP per 256 px image (see tests/test_bench_gpu.py).

IF-I-M is a best-effort reconstruction, NOT confirmed from its released config file: the XL layout at
model_channels 192 (0.37B parameters against the published ~400M). Use it for rough sizing only.
"""

from __future__ import annotations

from typing import Any

T5_XXL_WIDTH = 4096  # IF's text encoder output width: encoder_hid_dim of every stage
ATTENTION_HEAD_DIM = 64  # IF's num_head_channels

IF_I_XL = "DeepFloyd/IF-I-XL-v1.0"
IF_I_M = "DeepFloyd/IF-I-M-v1.0"
IF_II_L = "DeepFloyd/IF-II-L-v1.0"


def _stage_i_config(model_channels: int, channel_mult: tuple[int, ...], layers_per_block: int,
                    sample_size: int = 64) -> dict[str, Any]:
    """IF stage-I layout: attention at every level but the first (resolutions 32, 16, 8 at 64 px).

    Cross-attention width equals the time embedding width (4 x model_channels, diffusers' default),
    which is how IF-I projects T5 embeddings (encoder_hid_proj 4096 -> that width).
    """
    block_out = [model_channels * m for m in channel_mult]
    n = len(block_out)
    return {
        "sample_size": sample_size,
        "in_channels": 3,
        "out_channels": 6,  # eps + learned variance
        "down_block_types": ["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * (n - 1),
        "up_block_types": ["SimpleCrossAttnUpBlock2D"] * (n - 1) + ["ResnetUpsampleBlock2D"],
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        "block_out_channels": block_out,
        "layers_per_block": layers_per_block,
        "cross_attention_dim": 4 * model_channels,
        "encoder_hid_dim": T5_XXL_WIDTH,
        "attention_head_dim": ATTENTION_HEAD_DIM,
        "addition_embed_type": "text",
        "addition_embed_type_num_heads": 64,
        "act_fn": "gelu",
        "resnet_time_scale_shift": "scale_shift",
        "cross_attention_norm": "group_norm",
        "upcast_attention": False,
        "use_linear_projection": False,
        "class_embed_type": None,
    }


def if_i_xl_config() -> dict[str, Any]:
    """IF-I-XL (4.3B): model_channels 704, channel_mult (1, 2, 3, 4), 3 res blocks per level, 64 px."""
    return _stage_i_config(704, (1, 2, 3, 4), 3)


def if_i_m_config() -> dict[str, Any]:
    """IF-I-M (~400M): the XL layout at model_channels 192 (unconfirmed widths; see the module docstring)."""
    return _stage_i_config(192, (1, 2, 3, 4), 3)


def if_ii_l_config(*, sample_size: int = 256, only_cross_attention: bool = False) -> dict[str, Any]:
    """IF-II-L (1.2B) 64 -> 256 px super-resolution UNet.

    model_channels 160, channel_mult (1, 2, 4, 6, 8): levels at 256/128/64 px are plain ResNet levels
    (attention there would be quadratic in 64k tokens), attention at 32 and 16 px. Input has 6
    channels: the noisy 256 px image plus the noised, upsampled 64 px condition.
    """
    model_channels, channel_mult = 160, (1, 2, 4, 6, 8)
    block_out = [model_channels * m for m in channel_mult]
    return {
        "sample_size": sample_size,
        "in_channels": 6,
        "out_channels": 6,
        "down_block_types": ["ResnetDownsampleBlock2D"] * 3 + ["SimpleCrossAttnDownBlock2D"] * 2,
        "up_block_types": ["SimpleCrossAttnUpBlock2D"] * 2 + ["ResnetUpsampleBlock2D"] * 3,
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        "block_out_channels": block_out,
        "layers_per_block": [2, 2, 3, 5, 5],
        "cross_attention_dim": block_out[-1],  # 1280
        "encoder_hid_dim": T5_XXL_WIDTH,
        "attention_head_dim": ATTENTION_HEAD_DIM,
        "addition_embed_type": "text",
        "addition_embed_type_num_heads": 64,
        "class_embed_type": "timestep",  # the condition's noise level
        "time_embedding_dim": model_channels * channel_mult[-1],  # 1280, not the default 4 x 160
        "time_embedding_act_fn": "gelu",
        "act_fn": "gelu",
        "resnet_time_scale_shift": "scale_shift",
        "resnet_skip_time_act": True,
        "resnet_out_scale_factor": 1 / 0.7071,  # ~1.4142
        "mid_block_scale_factor": 1 / 0.7071,
        "cross_attention_norm": "group_norm",
        "only_cross_attention": only_cross_attention,
        "upcast_attention": False,
        "use_linear_projection": False,
    }


CONFIGS = {IF_I_XL: if_i_xl_config, IF_I_M: if_i_m_config, IF_II_L: if_ii_l_config}


def config_for(model_id: str) -> dict[str, Any]:
    """Config by Hub id (the ids presets use); KeyError names the known ids."""
    try:
        return CONFIGS[model_id]()
    except KeyError:
        raise KeyError(f"no architecture config for {model_id!r}; known: {', '.join(CONFIGS)}") from None
