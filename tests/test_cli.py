"""The `castex` CLI: clear errors with exit code 2, and a full bundle from a tiny end-to-end run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trimesh
from gltf_validator import validate_gltf

from jobs.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_bad_mesh_exits_2_with_reason(tmp_path, capsys):
    bad = tmp_path / "points.ply"
    trimesh.PointCloud([[0, 0, 0], [1, 0, 0], [0, 1, 0]]).export(bad)
    code = main(["texture", str(bad), "a red vase", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error [mesh_no_faces]" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_mesh_and_empty_prompt_and_bad_override(tmp_path, capsys):
    assert main(["texture", str(tmp_path / "nope.obj"), "x", "--out", str(tmp_path / "o")]) == 2
    assert "error [mesh_unreadable]" in capsys.readouterr().err
    mesh = tmp_path / "box.obj"
    main(["example-mesh", "box", str(mesh)])
    assert main(["texture", str(mesh), "   ", "--out", str(tmp_path / "o")]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert main(["texture", str(mesh), "x", "--out", str(tmp_path / "o"), "--set", "nonsense=1"]) == 2
    assert "unknown override 'nonsense'" in capsys.readouterr().err


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for command in ("texture", "demo", "make-tiny-cascade", "example-mesh", "presets"):
        assert command in out.stdout


@pytest.mark.slow
def test_texture_command_writes_a_valid_bundle(tmp_path, capsys):
    mesh = tmp_path / "vase.obj"
    assert main(["example-mesh", "vase", str(mesh)]) == 0
    out = tmp_path / "bundle"
    code = main(["texture", str(mesh), "a blue ceramic vase", "--out", str(out), "--quiet", "--seed", "3",
                 "--models", str(tmp_path / "models"), "--cache-dir", str(tmp_path / "cache"),
                 "--set", "stage_1.steps=4", "--set", "stage_2.steps=2", "--set", "texture_size=64",
                 "--set", "render_size=64", "--set", "preview_size=64"])
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0, summary
    assert summary.startswith("ok: vase.obj") and "stage_1 loss" in summary
    for name in ("albedo.png", "orm.png", "normal.png", "model.glb", "model.obj", "model.mtl", "preview.png",
                 "metadata.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["prompt"] == "a blue ceramic vase" and meta["seed"] == 3 and meta["preset"] == "cpu-demo"
    assert meta["uv_source"] == "existing" and meta["texture_size"] == 64
    assert set(meta["stages"]) == {"stage_1", "stage_2"}
    assert all(s["final_loss"] is not None for s in meta["stages"].values())
    assert {"castex", "torch", "diffusers"} <= set(meta["versions"])
    report = validate_gltf(out / "model.glb")
    assert report["numErrors"] == 0, report
    scene = trimesh.load(out / "model.glb")
    loaded = next(iter(scene.geometry.values()))
    material = loaded.visual.material
    assert material.baseColorTexture is not None and material.metallicRoughnessTexture is not None
    assert material.normalTexture is not None
