"""The offline demo cascade (issue 4): the procedural data, the judges, and the trained weights we ship.

Checks the procedural data (families, colours, captions, held-out pairs, seeding), that the
caption semantics the colour judge relies on hold for every colour/pattern pair, that the judges
are right on known inputs, and that the tokenizer maps words outside the vocabulary to <unk>.
Then the shipped cascade: IF layout loaded by the production loaders, size and format, samples
that follow held-out colour words, and (slow) SDS with the `cpu-demo` preset on two meshes whose
albedo takes the hue the prompt names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tools.demo_cascade import materials as M
from tools.demo_cascade.architecture import build_tokenizer
from tools.demo_cascade.classifiers import dominant_colour
from tools.demo_cascade.hue import dominant_hue

ROOT = Path(__file__).resolve().parents[1]
CASCADE = ROOT / "weights" / "demo-cascade"


def test_generator_covers_families_colours_and_captions():
    assert len(M.PATTERNS) >= 8 and len(M.COLOURS) >= 10
    rng = np.random.default_rng(0)
    seen_patterns, seen_colours, two_colour, bare = set(), set(), 0, 0
    for _ in range(600):
        image, caption, material = M.sample(rng)
        assert image.shape == (64, 64, 3) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        if not set(caption.split()) & set(M.COLOURS):  # a bare caption: the pattern alone
            assert material.second is None and material.on_object is None
            assert set(caption.split()) & set(" ".join(M.PATTERNS + ("striped", "brick", "dot", "plain")).split())
            bare += 1
        else:
            assert material.colour in caption.split()  # else the main colour is always named
        assert all(w in M.vocabulary_words() for w in caption.split())
        assert (material.colour, material.pattern) not in M.HELD_OUT
        seen_patterns.add(material.pattern)
        seen_colours.add(material.colour)
        two_colour += material.second is not None and material.second in caption.split()
    assert seen_patterns == set(M.PATTERNS) and seen_colours == set(M.COLOURS)
    assert two_colour > 30
    assert 30 < bare < 120  # about 15 % of the single-colour swatches off objects


def test_generator_is_seeded():
    a = M.sample(np.random.default_rng(7))
    b = M.sample(np.random.default_rng(7))
    assert a[1] == b[1] and np.array_equal(a[0], b[0])


def test_held_out_pairs_are_unseen_but_their_parts_are_seen():
    assert len(M.HELD_OUT) == len(set(M.HELD_OUT)) == len(M.held_out_captions()) == 20
    for colour, pattern in M.HELD_OUT:
        assert sum(M.allowed(colour, p) for p in M.PATTERNS) >= 5
        assert sum(M.allowed(c, pattern) for c in M.COLOURS) >= 8


def test_seen_control_pairs_are_drawn_in_training_and_cover_every_family():
    captions = M.seen_captions()
    assert len({c for c, _ in captions}) == 20
    assert all(M.allowed(m.colour, m.pattern) for _, m in captions)
    assert {m.pattern for _, m in captions} == set(M.PATTERNS)


def test_main_colour_dominates_single_colour_swatches():
    """The caption semantics the colour judge relies on: the named colour wins the pixel vote."""
    rng = np.random.default_rng(1)
    for colour in M.COLOURS:
        for pattern in M.PATTERNS:
            image = M.render_material(M.Material(pattern, colour), rng)
            assert dominant_colour(image) == colour, (colour, pattern)


def test_pattern_loss_ignores_the_mean_colour_and_sees_the_pattern():
    from tools.demo_cascade.train import pattern_loss

    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    shifted = x0 + torch.tensor([0.3, -0.2, 0.5]).view(1, 3, 1, 1)  # same pattern, other colour
    assert pattern_loss(shifted, x0).item() < 1e-10
    flat = x0.mean(dim=(2, 3), keepdim=True).expand_as(x0)  # right colour, no pattern
    assert pattern_loss(flat, x0).item() == pytest.approx(x0.var(dim=(2, 3), unbiased=False).mean().item(), rel=1e-5)


def test_pattern_judge_training_warp_bends_but_keeps_the_image():
    from tools.demo_cascade.classifiers import _warp

    x = torch.from_numpy(M.render_material(M.Material("checkerboard", "red"), np.random.default_rng(0)))
    x = x.permute(2, 0, 1).unsqueeze(0)
    bent = _warp(x, torch.Generator().manual_seed(0))
    again = _warp(x, torch.Generator().manual_seed(0))
    assert bent.shape == x.shape and torch.equal(bent, again)
    assert 0.0 <= bent.min() and bent.max() <= 1.0
    moved = (bent - x).abs().mean().item()
    assert 0.02 < moved < 0.3  # visibly bent (edges move), not scrambled
    assert (bent.mean() - x.mean()).abs() < 0.03  # same colours


def test_hue_judge():
    red = np.zeros((8, 8, 3), np.float32) + np.array([0.8, 0.1, 0.1], np.float32)
    red[:2] = 0.5  # grey texels (the initial albedo) do not vote
    assert dominant_hue(red) == "red"
    assert dominant_hue(np.full((4, 4, 3), 0.5, np.float32)) is None
    assert dominant_hue(M.render_material(M.Material("stripes", "blue"), np.random.default_rng(0))) == "blue"


def test_tokenizer_maps_unknown_words_to_unk():
    tok = build_tokenizer()
    ids = tok(["a red vase", "zebra ceramic"])["input_ids"]
    assert tok.unk_token_id not in ids[0] and ids[0][-1] == tok.eos_token_id
    assert set(ids[1][:-1]) == {tok.unk_token_id}


# ---------------------------------------------------------------- the shipped weights

def test_shipped_cascade_is_small_safetensors_in_the_if_layout():
    from core.guidance import PromptEncoder, load_stage
    from core.presets import get_preset

    files = [p for p in CASCADE.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30 * 2 ** 20
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert len(weights) == 3 and all(p.suffix == ".safetensors" for p in weights)
    assert (CASCADE / "MODEL_CARD.md").is_file() and (CASCADE / "training.json").is_file()
    stage1, stage2 = load_stage(CASCADE / "stage_1"), load_stage(CASCADE / "stage_2")
    assert (stage1.resolution, stage1.in_channels, stage2.resolution, stage2.in_channels) == (32, 3, 64, 6)
    assert stage1.prediction_type == stage2.prediction_type == "v_prediction"
    assert stage2.noising_scheduler is not None and stage2.unet.config.class_embed_type == "timestep"
    encoder = PromptEncoder.from_pretrained(CASCADE / "stage_1")
    assert encoder.encode(["a red vase"]).shape == (1, 77, stage1.unet.config.encoder_hid_dim)
    preset = get_preset("cpu-demo").resolved()
    assert Path(preset.stages[0].model) == CASCADE / "stage_1" and Path(preset.text_encoder) == CASCADE / "stage_1"


def test_samples_of_held_out_captions_have_the_named_colour():
    """A quick version of `python -m tools.demo_cascade.evaluate`: one sample per held-out caption."""
    from tools.demo_cascade.sample import CascadeSampler

    torch.manual_seed(0)
    captions = M.held_out_captions()
    images = CascadeSampler.load(CASCADE).sample([c for c, _ in captions], seed=0, steps1=25, steps2=10)
    assert images.shape == (20, 3, 64, 64)
    got = [dominant_colour(img) for img in images.permute(0, 2, 3, 1).numpy()]
    hits = sum(g == m.colour for g, (_, m) in zip(got, captions))
    assert hits >= 16, list(zip([c for c, _ in captions], got))


@pytest.fixture(scope="module")
def demo_texturer():
    from core.presets import get_preset
    from core.texturer import Texturer

    return Texturer(get_preset("cpu-demo").resolved(), device="cpu", rasterizer="torch")


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name, prompt, colour", [("vase", "a red vase", "red"),
                                                       ("torus", "blue stripes", "blue")])
def test_sds_with_the_demo_cascade_follows_the_colour_word(demo_texturer, tmp_path, mesh_name, prompt, colour):
    """Two of the ten prompts of `python -m tools.demo_cascade.hue`, the full cpu-demo preset."""
    from core.examples import write_example_mesh
    from core.mesh import load_mesh
    from tools.demo_cascade.hue import texture_once

    mesh = load_mesh(write_example_mesh(mesh_name, tmp_path / f"{mesh_name}.obj"))
    albedo, _ = texture_once(demo_texturer, mesh, prompt, seed=0, cache_dir=str(tmp_path))
    assert dominant_hue(albedo) == colour


def test_ancestral_sampling_is_seeded_and_differs_from_ddim():
    """`evaluate --eta` injects noise drawn from the seeded generator: reproducible, and not DDIM's path."""
    from tools.demo_cascade.sample import CascadeSampler

    sampler = CascadeSampler.load(CASCADE)
    prompts = ["a red checkerboard", "blue stripes"]
    run = lambda eta: sampler.sample(prompts, seed=3, steps1=6, steps2=3, eta1=eta)  # noqa: E731
    ddim, ancestral = run(0.0), run(1.0)
    assert torch.equal(ancestral, run(1.0))
    assert (ancestral - ddim).abs().mean() > 1e-3
