"""Configs of the demo cascade: the IF layout at a size a 2-core CPU trains in well under an hour.

Stage I: 32 px text-to-image UNet (3 -> 6 channels: noise + variance, as IF-I). Stage II: 64 px
super-resolution UNet (6 -> 6: the noisy image plus the noised 32 px condition; the noise level of
the condition enters as `class_labels`, as IF-II). A 2-layer T5 encoder over a word-level
vocabulary conditions both. Everything is a stock diffusers/transformers class built from a
config, saved with `save_pretrained`, so `core.guidance.cascade.load_stage` loads it unchanged.

The schedulers keep IF's cosine 1000-step schedule but the UNets predict v, not eps (the scheduler
config says `prediction_type: v_prediction`; SDS and the samplers read it). Why: trained as eps
predictors from scratch on this simple data, the UNets ignored the caption completely (text and
unconditional predictions identical to 2 decimals after 900 steps, also with eps losses
re-weighted towards high noise or an SNR-shifted schedule): the mean colour of a 32 px swatch shows
through the noise up to t ~ 970, and above that an x0 error costs only abar times as much in eps.
As v-predictors the same models follow colour words after 200 steps. The variance channels are
trained towards 0 (the middle of IF's learned range) rather than with the variational bound, so
the saved scheduler uses `fixed_small` variance, which samplers read from the config.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.guidance.tiny import build_scheduler as if_scheduler
from core.guidance.tiny import build_tokenizer as word_level_tokenizer
from core.guidance.tiny import word_vocabulary
from tools.demo_cascade.materials import vocabulary_words


@dataclass(frozen=True)
class CascadeSpec:
    """Sizes of the demo cascade (defaults are what we ship)."""

    stage1_size: int = 32
    stage2_size: int = 64
    text_dim: int = 64
    text_layers: int = 2
    stage1_channels: tuple[int, ...] = (32, 64, 64)
    stage2_channels: tuple[int, ...] = (32, 64)
    attention_head_dim: int = 32


def vocabulary() -> dict[str, int]:
    """Special tokens, the caption words, punctuation. Any other word maps to <unk>."""
    return word_vocabulary(vocabulary_words())


def build_tokenizer():
    """Word-level fast tokenizer over the caption vocabulary (the tiny cascade's tokenizer recipe)."""
    return word_level_tokenizer(vocabulary())


def build_text_encoder(spec: CascadeSpec, vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, d_model=spec.text_dim, d_kv=spec.text_dim // 4, d_ff=spec.text_dim * 2,
                      num_layers=spec.text_layers, num_heads=4, relative_attention_num_buckets=16,
                      dropout_rate=0.0, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    return T5EncoderModel(config)


def unet_config(spec: CascadeSpec, *, super_resolution: bool) -> dict:
    """IF-like UNet2DConditionModel kwargs: plain ResNet levels first, cross-attention at the coarse levels."""
    channels = list(spec.stage2_channels if super_resolution else spec.stage1_channels)
    n_plain = 1 if not super_resolution else len(channels) - 1
    n_attn = len(channels) - n_plain
    config = dict(
        sample_size=spec.stage2_size if super_resolution else spec.stage1_size,
        in_channels=6 if super_resolution else 3,
        out_channels=6,
        layers_per_block=1,
        block_out_channels=channels,
        down_block_types=["ResnetDownsampleBlock2D"] * n_plain + ["SimpleCrossAttnDownBlock2D"] * n_attn,
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=["SimpleCrossAttnUpBlock2D"] * n_attn + ["ResnetUpsampleBlock2D"] * n_plain,
        cross_attention_dim=channels[-1],
        encoder_hid_dim=spec.text_dim,
        attention_head_dim=spec.attention_head_dim,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
    )
    if super_resolution:
        config.update(class_embed_type="timestep", mid_block_scale_factor=1.414, resnet_out_scale_factor=1.414,
                      resnet_skip_time_act=True)
    return config


def build_unet(spec: CascadeSpec, *, super_resolution: bool):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(spec, super_resolution=super_resolution))


def build_scheduler():
    """IF's cosine 1000-step DDPM schedule, v-prediction, fixed variance (see the module docstring)."""
    return if_scheduler(prediction_type="v_prediction", variance_type="fixed_small")
