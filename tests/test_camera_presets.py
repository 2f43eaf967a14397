"""Cameras follow the CasTex view distribution; presets and overrides validate."""

import math
from pathlib import Path

import pytest
import torch

from core.camera import ViewDistribution, make_views, preview_views, sample_views
from core.errors import ConfigError
from core.material import TextureSet
from core.presets import PRESETS, get_preset

ROOT = Path(__file__).resolve().parents[1]


def _project(views, points):
    clip = torch.einsum("vj,bij->bvi", torch.nn.functional.pad(points, (0, 1), value=1.0), views.mvp)
    return clip[..., :3] / clip[..., 3:]


def test_origin_projects_to_image_centre_and_axes_orient():
    v = make_views(torch.tensor([0.0]), torch.tensor([0.0]), 4.4)
    ndc = _project(v, torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]))[0]
    assert torch.allclose(ndc[0, :2], torch.zeros(2), atol=1e-6)
    assert ndc[1, 0] > 0 and abs(ndc[1, 1]) < 1e-6  # +X is right from the front (+Z) view
    assert ndc[2, 1] > 0 and abs(ndc[2, 0]) < 1e-6  # +Y is up
    # fov 30 deg: a point at height d*tan(15deg) on the focal plane lands on the top edge.
    top = torch.tensor([[0.0, 4.4 * math.tan(math.radians(15)), 0.0]])
    assert _project(v, top)[0, 0, 1] == pytest.approx(1.0, abs=1e-5)


def test_sampled_views_follow_distribution_and_are_seeded():
    dist = ViewDistribution()
    a = sample_views(512, torch.Generator().manual_seed(3), dist)
    b = sample_views(512, torch.Generator().manual_seed(3), dist)
    assert torch.equal(a.mvp, b.mvp) and torch.equal(a.background, b.background)
    assert a.elevation_deg.min() >= -60 and a.elevation_deg.max() <= 60
    assert a.azimuth_deg.min() >= 0 and a.azimuth_deg.max() < 360
    radius = a.campos.norm(dim=-1)
    assert torch.allclose(radius, radius[0].expand_as(radius))  # one distance scale per batch
    assert 4.4 * 0.5 <= float(radius[0]) <= 4.4 * 1.5
    # Elevation is uniform in angle: roughly a quarter of the samples above 30 degrees.
    assert 0.15 < float((a.elevation_deg > 30).float().mean()) < 0.35
    assert torch.allclose(a.mesh_rotation @ a.mesh_rotation.T, torch.eye(3), atol=1e-6)
    assert a.background.min() >= 0 and a.background.max() <= 1


def test_preview_views_turntable():
    v = preview_views(4)
    assert v.batch_size == 4
    assert torch.allclose(v.azimuth_deg, torch.tensor([0.0, 90.0, 180.0, 270.0]))


def test_texture_projection_matches_castex_rules():
    t = TextureSet.constant(4)
    assert torch.all(t.albedo == 0.5) and torch.all(t.normal[..., 2] == 1)
    t.albedo.fill_(2.0)
    t.roughness.fill_(-1.0)
    t.normal.copy_(torch.tensor([3.0, 0.0, 0.1]).expand(4, 4, 3))
    t.project_()
    assert torch.all(t.albedo == 1.0) and torch.all(t.roughness == 0.0)
    assert torch.allclose(t.normal[0, 0], torch.tensor([0.5, 0.0, 0.5]))


def test_paper_preset_matches_the_notes():
    p = get_preset("castex-xl-l")
    assert [s.model for s in p.stages] == ["DeepFloyd/IF-I-XL-v1.0", "DeepFloyd/IF-II-L-v1.0"]
    assert [s.steps for s in p.stages] == [500, 1000]
    assert [s.guidance_scale for s in p.stages] == [15.0, 10.0]
    assert (p.views, p.render_size, p.texture_size, p.fov_deg, p.env_intensity) == (8, 512, 1024, 30.0, 2.0)
    assert all((s.lr, s.lr_step, s.lr_gamma) == (0.01, 100, 0.9) for s in p.stages)
    assert set(PRESETS) >= {"castex-xl-l", "castex-xl", "castex-m", "cpu-demo"}


def test_overrides_validate():
    p = get_preset("cpu-demo", {"texture_size": 128, "stage_2.steps": 3}).resolved("/models")
    assert p.texture_size == 128 and p.stages[1].steps == 3
    assert p.stages[0].model == str(ROOT / "weights" / "demo-cascade" / "stage_1")  # {weights}: shipped
    tiny = get_preset("cpu-demo", {"stage_1.model": "{models}/tiny-cascade/stage_1"}).resolved("/models")
    assert tiny.stages[0].model == "/models/tiny-cascade/stage_1"
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="unknown override 'bogus'"):
        get_preset("cpu-demo", {"bogus": 1})
    with pytest.raises(ConfigError, match="unknown override 'stage_3.steps'"):
        get_preset("cpu-demo", {"stage_3.steps": 1})
    with pytest.raises(ConfigError, match="must be a int"):
        get_preset("cpu-demo", {"texture_size": "big"})
    with pytest.raises(ConfigError, match="texture_size must be"):
        get_preset("cpu-demo", {"texture_size": 4})
