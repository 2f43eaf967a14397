"""core.guidance: x0-form SDS maths, timestep annealing, the tiny offline IF cascade loaded through
the real loaders, SDSGuidance wiring (stage I and II inputs), the prompt cache and load errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import core.guidance.prompts as prompts_mod
from core.errors import ModelLoadError
from core.guidance import (EmbeddingCache, PromptEmbeds, PromptEncoder, SDSGuidance, StageModel, cfg,
                           encode_prompts, encoder_id_for, eps_form_grad, load_stage, predict_x0, sample_timesteps,
                           sds_weight, sds_x0_loss, timestep_range, write_tiny_cascade)
from core.guidance.sds import add_noise, epsilon_from_output


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def cascade(tmp_path_factory) -> Path:
    return write_tiny_cascade(tmp_path_factory.mktemp("tiny") / "cascade", seed=0)


@pytest.fixture(scope="module")
def stage1(cascade) -> StageModel:
    return load_stage(cascade / "stage_1", device="cpu", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def stage2(cascade) -> StageModel:
    return load_stage(cascade / "stage_2", device="cpu", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def embeds(cascade) -> PromptEmbeds:
    out = encode_prompts(["a red wooden chair"], "", encoder_path=cascade / "stage_1", cache=None)
    return out["a red wooden chair"]


class CapturingUNet:
    """Wraps a UNet's forward to record what SDSGuidance feeds it, then runs the real forward."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet
        self.calls: list[dict] = []
        self._forward = unet.forward

    def __enter__(self) -> "CapturingUNet":
        def spy(sample, timestep, encoder_hidden_states=None, **kwargs):
            self.calls.append({"sample": sample.clone(), "timestep": timestep.clone(),
                               "encoder_hidden_states": encoder_hidden_states.clone(),
                               "class_labels": kwargs.get("class_labels")})
            return self._forward(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)

        self.unet.forward = spy
        return self

    def __exit__(self, *exc) -> None:
        del self.unet.forward  # back to the class method


class ConstantUNet(torch.nn.Module):
    """Fake IF UNet: eps = `uncond` for the first half of the batch, `text` for the second;
    the variance channels hold a large value that must never reach eps_hat."""

    def __init__(self, uncond: float, text: float) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a dtype
        self.uncond, self.text = uncond, text

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=True, **kwargs):
        half = sample.shape[0] // 2
        out = torch.full((sample.shape[0], 6, *sample.shape[2:]), 1e3)
        out[:half, :3] = self.uncond
        out[half:, :3] = self.text
        return (out,)


def fake_stage(unet: torch.nn.Module, resolution: int = 16) -> StageModel:
    from core.guidance.tiny import build_scheduler

    scheduler = build_scheduler()
    return StageModel(unet=unet, scheduler=scheduler, alphas_cumprod=scheduler.alphas_cumprod.float(),
                      model_id="fake", resolution=resolution, in_channels=3)


# ---------------------------------------------------------------- SDS maths

def _x0_grad(x: torch.Tensor, eps: torch.Tensor, eps_hat: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    x_t = add_noise(x.detach(), eps, abar)
    x0_hat = predict_x0(x_t, eps_hat, abar)
    sds_x0_loss(x, x0_hat, sds_weight(abar)).backward()
    return x.grad


def test_x0_form_gradient_equals_eps_form_when_clamp_inactive():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 8, generator=g) - 0.5  # well inside [-1, 1]
    eps = torch.randn(x.shape, generator=g)
    eps_hat = eps + 0.05 * torch.randn(x.shape, generator=g)
    abar = torch.tensor([0.9])
    x0_unclamped = predict_x0(add_noise(x, eps, abar), eps_hat, abar, clamp=False)
    assert x0_unclamped.abs().max() < 1.0  # the premise: no clamping happens
    grad = _x0_grad(x, eps, eps_hat, abar)
    expected = eps_form_grad(eps_hat, eps, abar, sds_weight(abar))
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    # closed form of the eps-form weight: w sqrt(1-a)/sqrt(a) = 1 - a
    torch.testing.assert_close(expected, (1 - abar) * (eps_hat - eps) / x.shape[0])


def test_x0_form_gradient_differs_when_clamp_active():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(x.shape, generator=g)
    eps_hat = eps + 3.0 * torch.randn(x.shape, generator=g)
    abar = torch.tensor([0.3])
    x0_unclamped = predict_x0(add_noise(x, eps, abar), eps_hat, abar, clamp=False)
    clamped = x0_unclamped.abs() > 1
    assert clamped.float().mean() > 0.2
    grad = _x0_grad(x, eps, eps_hat, abar)
    reference = eps_form_grad(eps_hat, eps, abar, sds_weight(abar))
    assert not torch.allclose(grad[clamped], reference[clamped], atol=1e-4)
    torch.testing.assert_close(grad[~clamped], reference[~clamped], rtol=1e-4, atol=1e-6)
    # what it is instead: w (x - clamp(x0)) / B
    torch.testing.assert_close(grad, sds_weight(abar) * (x - x0_unclamped.clamp(-1, 1)) / x.shape[0])


def test_sds_loss_value_weight_and_detached_target():
    x = torch.full((2, 3, 4, 4), 0.5, requires_grad=True)
    target = torch.zeros(2, 3, 4, 4, requires_grad=True)
    loss = sds_x0_loss(x, target, torch.tensor([0.4]))
    assert loss.shape == ()
    assert math.isclose(float(loss.detach()), 0.5 * 0.4 * (0.25 * 96) / 2, rel_tol=1e-6)
    loss.backward()
    assert target.grad is None
    assert math.isclose(float(sds_weight(torch.tensor(0.5))), 0.5, rel_tol=1e-6)


def test_cfg_formula():
    u, t = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    torch.testing.assert_close(cfg(u, t, 1.0), t)
    torch.testing.assert_close(cfg(u, t, 0.0), u)
    torch.testing.assert_close(cfg(u, t, 7.5), torch.tensor([1.0 + 7.5 * 2.0, -2.0 + 7.5 * 2.0]))


def test_epsilon_from_every_prediction_type():
    """v and x0 ("sample") predictions of the true x0/eps give back the true eps exactly."""
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1, torch.randn(2, 3, 4, 4, generator=g)
    abar = torch.tensor([0.9, 0.01])
    x_t = add_noise(x0, eps, abar)
    a = abar.view(-1, 1, 1, 1)
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(epsilon_from_output(eps, x_t, abar, "epsilon"), eps)
    torch.testing.assert_close(epsilon_from_output(v, x_t, abar, "v_prediction"), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(epsilon_from_output(x0, x_t, abar, "sample"), eps, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unsupported prediction_type"):
        epsilon_from_output(v, x_t, abar, "flow")


def test_v_prediction_stage_guides_like_the_equivalent_eps_stage():
    """SDSGuidance converts a v-predicting UNet's output to eps before CFG: a UNet that outputs the v
    of a constant eps gives the same guided eps as one that outputs that eps."""
    t = torch.tensor([700])
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    embeds = PromptEmbeds(cond=torch.zeros(1, 77, 4), uncond=torch.zeros(1, 77, 4))
    eps_stage = fake_stage(ConstantUNet(uncond=0.2, text=0.6))
    a = eps_stage.alphas_cumprod[t]

    class VUNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a dtype

        def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=False, **kwargs):
            eps = torch.cat([torch.full_like(sample[:2], 0.2), torch.full_like(sample[2:], 0.6)])
            x0 = (sample - (1 - a).sqrt() * eps) / a.sqrt()
            v = a.sqrt() * eps - (1 - a).sqrt() * x0
            return (torch.cat([v, torch.zeros_like(v)], dim=1),)

    v_stage = fake_stage(VUNet())
    v_stage.prediction_type = "v_prediction"
    expected = SDSGuidance(eps_stage, guidance_scale=5.0).predict_noise(x_t, t, embeds)
    got = SDSGuidance(v_stage, guidance_scale=5.0).predict_noise(x_t, t, embeds)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- timesteps

def test_timestep_annealing_bounds():
    assert timestep_range(0.0) == (300, 980)
    assert timestep_range(0.25) == (250, 740)  # sqrt(0.25) = 0.5: halfway
    assert timestep_range(1.0) == (200, 500)
    assert timestep_range(0.25, t_min=(100, 20), t_max=(900, 100)) == (60, 500)


def test_sampled_timesteps_in_range_and_reproducible():
    for progress in (0.0, 0.25, 0.6, 1.0):
        lo, hi = timestep_range(progress)
        g = torch.Generator().manual_seed(3)
        ts = torch.cat([sample_timesteps(progress, g) for _ in range(300)])
        assert ts.dtype == torch.long and ts.shape == (300,)
        assert int(ts.min()) >= lo and int(ts.max()) < hi
        assert int(ts.max()) - int(ts.min()) > (hi - lo) // 2  # actually spread over the range
    a = sample_timesteps(0.5, torch.Generator().manual_seed(9), n=4)
    b = sample_timesteps(0.5, torch.Generator().manual_seed(9), n=4)
    assert torch.equal(a, b)


# ---------------------------------------------------------------- tiny cascade + loaders

def test_tiny_cascade_layout_and_round_trip(cascade, stage1, stage2):
    for sub in ("unet", "scheduler", "text_encoder", "tokenizer"):
        assert (cascade / "stage_1" / sub).is_dir()
    for sub in ("unet", "scheduler", "image_noising_scheduler"):
        assert (cascade / "stage_2" / sub).is_dir()
    assert (cascade / "stage_1" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (stage1.resolution, stage1.in_channels, stage1.noising_scheduler) == (64, 3, None)
    assert (stage2.resolution, stage2.in_channels) == (128, 6)
    assert stage2.noising_scheduler is not None and stage2.needs_condition
    # CPU always float32 even when bf16 is requested; frozen; SDPA attention processors
    assert stage1.dtype == torch.float32 and not stage1.unet.training
    assert not any(p.requires_grad for p in stage1.unet.parameters())
    assert all(type(p).__name__.endswith("2_0") for p in stage2.unet.attn_processors.values())
    assert stage1.alphas_cumprod.shape == (1000,) and stage1.alphas_cumprod.dtype == torch.float32
    assert stage1.scheduler.config.variance_type == "learned_range"


def test_use_sdpa_restores_sdpa_processors(stage1):
    from diffusers.models.attention_processor import AttnAddedKVProcessor

    from core.guidance.cascade import use_sdpa

    stage1.unet.set_attn_processor(AttnAddedKVProcessor())
    use_sdpa(stage1.unet)
    assert {type(p).__name__ for p in stage1.unet.attn_processors.values()} == {"AttnAddedKVProcessor2_0"}


def test_prompt_encoder_round_trip(cascade):
    enc = PromptEncoder.from_pretrained(cascade / "stage_1", device="cpu", dtype=torch.bfloat16)
    out = enc.encode(["a red wooden chair", "", "A RED wooden chair"])
    assert out.shape == (3, 77, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], out[2])  # lowercase normalizer
    assert not torch.allclose(out[0], out[1])
    tokens = enc.tokenizer(["a zebra striped vase"], max_length=77, padding="max_length", truncation=True)
    assert len(tokens["input_ids"][0]) == 77 and enc.tokenizer.unk_token_id not in tokens["input_ids"][0]
    assert enc.encoder_id == encoder_id_for(cascade / "stage_1")
    enc.free()
    assert enc.text_encoder is None


def test_tiny_cascade_is_deterministic(cascade, tmp_path):
    again = write_tiny_cascade(tmp_path / "again", seed=0)
    files = sorted(p.relative_to(cascade) for p in cascade.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:  # same bytes, weights and configs alike
        assert (cascade / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert encoder_id_for(again / "stage_1") == encoder_id_for(cascade / "stage_1")  # content-addressed
    # another seed gives other weights (and thus another encoder identity)
    unet_file = "stage_1/unet/diffusion_pytorch_model.safetensors"
    other = load_file(write_tiny_cascade(tmp_path / "other", seed=1) / unet_file)
    ref = load_file(cascade / unet_file)
    assert any(not torch.equal(ref[k], other[k]) for k in ref)
    assert encoder_id_for(tmp_path / "other" / "stage_1") != encoder_id_for(cascade / "stage_1")


def test_missing_directory_raises_model_load_error(tmp_path):
    missing = tmp_path / "nope" / "stage_1"
    with pytest.raises(ModelLoadError) as err:
        load_stage(missing)
    msg = str(err.value)
    assert str(missing) in msg and "local directory" in msg and "HF_TOKEN" in msg and "network" in msg
    assert err.value.code == "model_load"
    with pytest.raises(ModelLoadError, match="HF_TOKEN"):
        PromptEncoder.from_pretrained(missing)
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match="scheduler/"):
        load_stage(tmp_path / "half")


def test_broken_unet_files_raise_model_load_error(tmp_path):
    for sub in ("unet", "scheduler"):
        (tmp_path / "broken" / sub).mkdir(parents=True)
    with pytest.raises(ModelLoadError, match="could not load the UNet"):
        load_stage(tmp_path / "broken")


# ---------------------------------------------------------------- prompt cache

def test_embedding_cache_hit_avoids_loading_encoder(cascade, tmp_path, monkeypatch):
    loads = []
    real = PromptEncoder.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(prompts_mod.PromptEncoder, "from_pretrained", classmethod(counting))
    cache = EmbeddingCache(tmp_path / "cache")
    kwargs = dict(encoder_path=cascade / "stage_1", cache=cache, device="cpu", dtype=torch.float32)
    first = encode_prompts(["a blue vase", "an old wooden chair"], "", **kwargs)
    assert len(loads) == 1
    second = encode_prompts(["an old wooden chair", "a blue vase"], "", **kwargs)
    assert len(loads) == 1  # every text came from the cache
    for p in first:
        torch.testing.assert_close(first[p].cond, second[p].cond)
        torch.testing.assert_close(first[p].uncond, second[p].uncond)
        assert first[p].cond.shape == (1, 77, 32)
    assert not torch.allclose(first["a blue vase"].cond, first["an old wooden chair"].cond)
    encode_prompts(["a blue vase", "a green lamp"], "", **kwargs)
    assert len(loads) == 2  # only the new prompt needed the encoder
    files = list((tmp_path / "cache").rglob("*"))
    assert sum(f.suffix == ".safetensors" for f in files) == 4
    assert not any(f.name.startswith(".tmp-") for f in files)  # atomic writes leave nothing behind


def test_embedding_cache_keys_and_corruption(tmp_path):
    cache = EmbeddingCache(tmp_path)
    emb = torch.randn(77, 8)
    assert cache.get("enc-a", "p") is None
    path = cache.put("enc-a", "p", emb)
    torch.testing.assert_close(cache.get("enc-a", "p"), emb[None])
    assert cache.get("enc-b", "p") is None and cache.get("enc-a", "q") is None
    path.write_bytes(b"not a safetensors file")
    assert cache.get("enc-a", "p") is None  # a corrupt entry is a miss


def test_prompt_embeds_to():
    e = PromptEmbeds(cond=torch.zeros(1, 77, 4), uncond=torch.ones(1, 77, 4)).to("cpu", torch.bfloat16)
    assert e.cond.dtype == e.uncond.dtype == torch.bfloat16


# ---------------------------------------------------------------- SDSGuidance

def test_stage1_guidance_shapes_batch_and_gradients(stage1, embeds):
    guidance = SDSGuidance(stage1, guidance_scale=15.0)
    images = torch.rand(2, 3, 96, 96, requires_grad=True)
    with CapturingUNet(stage1.unet) as spy:
        loss, info = guidance.loss(images, embeds=embeds, progress=0.25, generator=torch.Generator().manual_seed(0))
    assert len(spy.calls) == 1  # one batched call for uncond + text
    call = spy.calls[0]
    assert call["sample"].shape == (4, 3, 64, 64)
    assert call["encoder_hidden_states"].shape == (4, 77, 32)
    torch.testing.assert_close(call["encoder_hidden_states"][:2], embeds.uncond.expand(2, -1, -1))
    torch.testing.assert_close(call["encoder_hidden_states"][2:], embeds.cond.expand(2, -1, -1))
    assert torch.equal(call["sample"][:2], call["sample"][2:])
    assert call["class_labels"] is None
    t = call["timestep"]
    assert t.shape == (4,) and bool((t == t[0]).all()) and 250 <= int(t[0]) < 740
    assert loss.shape == () and torch.isfinite(loss)
    assert torch.equal(info["t"], t[:1]) and info["x0_hat"].shape == (2, 3, 64, 64)
    loss.backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_stage2_input_holds_noised_nearest_condition(stage2, embeds):
    guidance = SDSGuidance(stage2, guidance_scale=10.0, noise_level=250)
    images = torch.rand(2, 3, 128, 128, requires_grad=True)
    cond_images = torch.rand(2, 3, 128, 128)
    with pytest.raises(ValueError, match="cond_images"):
        guidance.loss(images, embeds=embeds, progress=0.0, generator=torch.Generator())
    with CapturingUNet(stage2.unet) as spy:
        loss, info = guidance.loss(images, embeds=embeds, progress=0.5, generator=torch.Generator().manual_seed(5),
                                   cond_images=cond_images)
    sample = spy.calls[0]["sample"]
    assert sample.shape == (4, 6, 128, 128)
    assert torch.equal(spy.calls[0]["class_labels"], torch.full((4,), 250))
    # replay the generator: t, then the image noise, then the condition noise
    g = torch.Generator().manual_seed(5)
    lo, hi = timestep_range(0.5)
    t = torch.randint(lo, hi, (1,), generator=g)
    noise = torch.randn(2, 3, 128, 128, generator=g)
    cond_noise = torch.randn(2, 3, 128, 128, generator=g)
    abar = stage2.alphas_cumprod[t]
    x = images.detach() * 2 - 1
    torch.testing.assert_close(sample[:2, :3], abar.sqrt() * x + (1 - abar).sqrt() * noise)
    low = cond_images[:, :, ::2, ::2]  # nearest 128 -> 64 keeps every other pixel
    up = low.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) * 2 - 1
    nbar = stage2.noising_scheduler.alphas_cumprod[250]
    expected = nbar.sqrt() * up + (1 - nbar).sqrt() * cond_noise
    torch.testing.assert_close(sample[:2, 3:], expected)
    torch.testing.assert_close(sample[2:, 3:], expected)
    assert torch.isfinite(loss)
    loss.backward()
    assert images.grad.abs().sum() > 0


def test_guidance_scale_changes_eps_hat_as_cfg():
    stage = fake_stage(ConstantUNet(uncond=1.0, text=3.0))
    embeds = PromptEmbeds(cond=torch.zeros(1, 77, 4), uncond=torch.zeros(1, 77, 4))
    x_t = torch.zeros(2, 3, 16, 16)
    t = torch.tensor([400])
    eps_1 = SDSGuidance(stage, guidance_scale=1.0).predict_noise(x_t, t, embeds)
    eps_7 = SDSGuidance(stage, guidance_scale=7.0).predict_noise(x_t, t, embeds)
    assert eps_1.shape == (2, 3, 16, 16)  # variance channels dropped
    assert torch.all(eps_1 == 3.0)  # scale 1: the text prediction itself
    assert torch.all(eps_7 == 1.0 + 7.0 * 2.0)
    # and the target follows: a larger predicted noise pulls x0_hat further down (same t and noise)
    images = torch.full((1, 3, 16, 16), 0.5, requires_grad=True)
    runs = [SDSGuidance(stage, s).loss(images, embeds=embeds, progress=0.0, generator=torch.Generator().manual_seed(0))
            for s in (1.0, 7.0)]
    (l1, info1), (l7, info7) = runs
    assert torch.equal(info1["t"], info7["t"])
    assert bool((info7["x0_hat"] <= info1["x0_hat"]).all())
    assert float(info7["x0_hat"].mean()) < float(info1["x0_hat"].mean())
    assert float(l7.detach()) > float(l1.detach()) > 0
