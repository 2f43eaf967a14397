"""tools/bench_pipeline.py runs end to end on 2 tiny assets and prints every figure it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--assets", "2", "--actors", "1,2", "--steps1", "2", "--steps2", "1", "--texture-size", "32",
        "--render-size", "32", "--views", "1", "--preview-size", "32", "--num-cpus", "2"]
NUMBER = r"(-?[0-9]+(?:\.[0-9]+)?|nan|inf)"


def test_bench_prints_parsable_figures(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tools.bench_pipeline", *TINY, "--workdir", str(tmp_path / "w"),
                           "--models", str(ROOT / "models")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    runs = {}
    for m in re.finditer(rf"^actors=(\d+) assets_ok=(\d+) wall_s={NUMBER} optimizer_sum_s={NUMBER} "
                         rf"overhead={NUMBER}$", proc.stdout, re.M):
        actors, ok, wall, optimizer, overhead = int(m[1]), int(m[2]), float(m[3]), float(m[4]), float(m[5])
        runs[actors] = (ok, wall, optimizer, overhead)
    assert set(runs) == {1, 2}, proc.stdout
    for actors, (ok, wall, optimizer, overhead) in runs.items():
        assert ok == 2 and wall > 0 and optimizer > 0
        assert overhead == pytest.approx(wall / (optimizer / actors) - 1, rel=2e-2, abs=2e-3)  # printed rounded
    ratio = re.search(rf"^throughput_ratio={NUMBER} \(actors 2 vs 1\)$", proc.stdout, re.M)
    assert ratio and float(ratio[1]) == pytest.approx(runs[1][1] / runs[2][1], rel=2e-2)
    assert re.search(r"^target throughput_ratio>=1\.7: (PASS|FAIL)$", proc.stdout, re.M)
    assert len(re.findall(r"^target overhead<=0\.10 actors=\d: (PASS|FAIL)", proc.stdout, re.M)) == 2
    assert re.search(r"driver phases s: .*content_keys", proc.stdout)
