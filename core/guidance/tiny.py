"""A tiny, randomly initialised IF-layout cascade built offline from configs (tests, CPU demo).

It has the real architecture families (IF-like `UNet2DConditionModel`s, DDPM cosine schedules,
a T5 encoder, a tokenizer loadable by `AutoTokenizer`) at toy width, written with `save_pretrained`
in exactly the DeepFloyd layout, so `load_stage` and `PromptEncoder.from_pretrained` load it
through the same code as the real models. Its guidance is noise, not knowledge: it proves the
plumbing, never quality. Everything is seeded, so the same seed gives the same tensors.

Resolution: attention at 64x64 tokens costs seconds per call on a CPU, so like IF-II (whose
high-resolution levels are plain ResNet blocks) each doubling of the sample size above 64 adds
one attention-free level in front; attention always runs at 32x32 or below.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import torch

TINY_TEXT_DIM = 32  # T5 d_model = UNet encoder_hid_dim
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # T5's ids: pad 0, eos 1, unk 2

_WORDS = """
a an the of and with in on at to for from by as or is are be its it this that made covered painted
very slightly old new worn weathered aged rusty dirty clean shiny glossy matte polished rough smooth soft
hard bright dark light pale deep vivid faded warm cool dull metallic cracked scratched chipped dusty mossy
vintage modern antique rustic ornate simple classic elegant cute realistic stylized cartoon detailed
handmade carved woven knitted printed embossed engraved hammered brushed stained lacquered enamel
red orange yellow green blue purple violet pink brown black white gray grey silver gold golden bronze
copper beige cream ivory tan teal turquoise cyan magenta maroon navy olive crimson scarlet amber emerald
sapphire ruby indigo lavender lime mint peach coral charcoal rainbow colorful colourful multicolored
wood wooden oak pine walnut mahogany bamboo metal steel iron brass aluminum chrome tin stone marble granite
concrete brick clay ceramic porcelain terracotta glass crystal plastic rubber leather fabric cloth cotton
wool silk velvet denim linen paper cardboard fur feather feathers scales bone ivory jade pearl sand mud
ice snow lava rock slate cobblestone tile tiles plaster wax candy chocolate gem gems jewel jewels
striped stripes checkered plaid polka dots dotted spotted floral flowers flower leaves leaf camouflage
zebra tiger leopard giraffe cow snake dragon pattern patterns geometric abstract swirl swirls waves wavy
hexagonal grid mosaic paisley tartan herringbone chevron marbled speckled gradient ornament ornaments
texture textured surface skin fur coat shell bark moss rust patina grain veins cracks scratches stains
chair table sofa couch bed lamp desk shelf cabinet drawer door window wall floor roof house building castle
tower bridge car truck bus train plane airplane boat ship bicycle motorcycle helmet shoe shoes boot boots
hat bag backpack cup mug bowl plate vase bottle jar pot teapot kettle spoon fork knife sword shield axe
hammer guitar piano drum violin clock watch phone camera computer keyboard television radio robot toy
teddy bear doll ball statue sculpture bust head skull face hand tree plant cactus mushroom apple banana
orange pumpkin fruit cake bread pizza burger dog cat horse bird fish rabbit fox wolf lion elephant
monkey duck owl turtle frog dinosaur whale shark octopus crab butterfly dragonfly bee knight soldier
warrior king queen princess wizard witch pirate astronaut alien monster zombie ghost angel demon
barrel crate box chest treasure lantern candle book books bookshelf bench stool throne armchair pillow
rug carpet basket bucket ladder fence gate pillar column arch fountain well mailbox
front side back top bottom view left right
"""

PUNCTUATION = (",", ".", "!", "?", "-", "'", ":", ";", "(", ")")


def word_vocabulary(words) -> dict[str, int]:
    """Special tokens first (T5 ids), then `words` and punctuation, in a fixed order."""
    return {w: i for i, w in enumerate(dict.fromkeys(SPECIAL_TOKENS + tuple(words) + PUNCTUATION))}


def tiny_vocabulary() -> dict[str, int]:
    return word_vocabulary(_WORDS.split())


def build_tokenizer(vocab: dict[str, int] | None = None):
    """Word-level fast tokenizer over `vocab` (default: the tiny cascade's): lowercase,
    whitespace/punctuation split, `</s>` appended like T5, unknown words -> <unk>."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = vocab if vocab is not None else tiny_vocabulary()
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=77)


def build_text_encoder(vocab_size: int):
    """T5 encoder at toy width (d_model 32, 2 layers, 2 heads); random weights from the current RNG."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, d_model=TINY_TEXT_DIM, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                      relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def _levels(sample_size: int) -> int:
    """Attention-free levels in front of the cross-attention level so attention runs at <= 32x32."""
    if sample_size < 32 or sample_size & (sample_size - 1):
        raise ValueError(f"tiny UNet sample size must be a power of two >= 32, got {sample_size}")
    return max(1, int(math.log2(sample_size // 32)))


def tiny_unet_config(sample_size: int, *, super_resolution: bool) -> dict:
    """IF-like UNet2DConditionModel kwargs at the size diffusers' own IF tests use."""
    n_plain = _levels(sample_size)
    config = dict(
        sample_size=sample_size,
        in_channels=6 if super_resolution else 3,
        out_channels=6,  # eps + learned variance, as IF
        layers_per_block=1,
        block_out_channels=[32] * n_plain + [64],
        down_block_types=["ResnetDownsampleBlock2D"] * n_plain + ["SimpleCrossAttnDownBlock2D"],
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=["SimpleCrossAttnUpBlock2D"] + ["ResnetUpsampleBlock2D"] * n_plain,
        cross_attention_dim=32,
        encoder_hid_dim=TINY_TEXT_DIM,
        attention_head_dim=8,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
    )
    if super_resolution:  # IF-II: noise level as class embedding, scaled residuals
        config.update(class_embed_type="timestep", mid_block_scale_factor=1.414, resnet_out_scale_factor=1.414,
                      resnet_skip_time_act=True)
    return config


def build_unet(sample_size: int, *, super_resolution: bool):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**tiny_unet_config(sample_size, super_resolution=super_resolution)).eval()


def build_scheduler(*, prediction_type: str = "epsilon", variance_type: str = "learned_range"):
    """IF's training schedule: 1000 DDPM steps, cosine betas, learned-range variance, eps
    prediction (the demo cascade keeps the schedule but predicts v with fixed variance)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type=variance_type,
                         prediction_type=prediction_type, thresholding=True, dynamic_thresholding_ratio=0.95,
                         sample_max_value=1.5, clip_sample=True)


def build_noising_scheduler():
    """IF-II's image-noising scheduler (noises the low-res condition): DDPM, cosine, 1000 steps."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


def save_tokenizer(tokenizer, dest: Path) -> None:
    """Save, naming the generic fast class so transformers 4.x and 5.x both load it via AutoTokenizer."""
    tokenizer.save_pretrained(dest)
    config_path = dest / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_stage_1(dest: Path, seed: int, size: int) -> None:
    tokenizer = build_tokenizer()
    save_tokenizer(tokenizer, dest / "tokenizer")
    torch.manual_seed(seed)
    build_text_encoder(len(tokenizer)).save_pretrained(dest / "text_encoder", safe_serialization=True)
    torch.manual_seed(seed + 1)
    build_unet(size, super_resolution=False).save_pretrained(dest / "unet", safe_serialization=True)
    build_scheduler().save_pretrained(dest / "scheduler")


def _write_stage_2(dest: Path, seed: int, size: int) -> None:
    torch.manual_seed(seed + 2)
    build_unet(size, super_resolution=True).save_pretrained(dest / "unet", safe_serialization=True)
    build_scheduler().save_pretrained(dest / "scheduler")
    build_noising_scheduler().save_pretrained(dest / "image_noising_scheduler")


def write_tiny_cascade(out_dir: str | Path, seed: int = 0, *, stage1_size: int = 64, stage2_size: int = 128) -> Path:
    """Write `out_dir/stage_1/{unet,scheduler,text_encoder,tokenizer}` and
    `out_dir/stage_2/{unet,scheduler,image_noising_scheduler}`; returns `out_dir`.

    Built in a temporary directory and moved into place per stage, so a reader never sees a
    half-written stage. The global torch RNG is left as it was.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory(prefix=".tiny-", dir=out) as tmp:
        _write_stage_1(Path(tmp) / "stage_1", seed, stage1_size)
        _write_stage_2(Path(tmp) / "stage_2", seed, stage2_size)
        for stage in ("stage_1", "stage_2"):
            if (out / stage).exists():
                shutil.rmtree(out / stage)
            (Path(tmp) / stage).replace(out / stage)
    info = {"seed": seed, "stage1_size": stage1_size, "stage2_size": stage2_size,
            "note": "random weights built offline by castex (core.guidance.tiny); plumbing only, no quality"}
    (out / "tiny_cascade.json").write_text(json.dumps(info, indent=2) + "\n")
    return out
