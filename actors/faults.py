"""Test-only fault injection: let a texture actor's process die at a named point of an asset.

Why it exists: the fault-tolerance acceptance tests (tests/test_pipeline_faults.py) must kill an
actor process *inside* an asset, deterministically, to check that Ray restarts the actor, retries
the row a bounded number of times, and that the row still ends up in the index exactly once.
Killing a PID from outside races the asset's progress; a hook at a known point does not.

Off unless the environment variable `CASTEX_FAULTS` is set (a JSON object; the pipeline passes it
to Ray workers through `runtime_env`), so production pays one `os.environ` lookup per call::

    CASTEX_FAULTS='{"dir": "/tmp/markers", "faults": {"<asset_id>": {"point": "after_optimize", "times": 1}}}'

Each time a fault fires, a marker file `<dir>/<asset_id hash>.<point>.<n>` is written (and
fsynced) *before* the process kills itself with SIGKILL (as the kernel OOM killer would: no
cleanup, no Python exception), so a restarted actor sees how often it already died and fires at
most `times` times. The markers also let a test count the crashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from functools import lru_cache
from pathlib import Path
from typing import Any

ENV_VAR = "CASTEX_FAULTS"

# Points the texture actor calls `maybe_die` at (see actors/texture_actor.py).
AFTER_OPTIMIZE = "after_optimize"   # textures optimized, nothing exported or committed yet
AFTER_COMMIT = "after_commit"       # the asset is committed but its status row never returns
POINTS = (AFTER_OPTIMIZE, AFTER_COMMIT)


@lru_cache(maxsize=4)
def _parse(raw: str) -> dict[str, Any]:
    spec = json.loads(raw)
    if not isinstance(spec, dict) or "dir" not in spec or not isinstance(spec.get("faults"), dict):
        raise ValueError(f"{ENV_VAR} must be a JSON object with 'dir' and 'faults'")
    return spec


def marker_prefix(asset_id: str, point: str) -> str:
    """File-name prefix of the markers of one (asset, point): asset ids may hold any character."""
    return f"{hashlib.sha256(asset_id.encode()).hexdigest()[:16]}.{point}."


def crash_count(marker_dir: str | os.PathLike, asset_id: str, point: str) -> int:
    """How many times the fault for (asset, point) has fired so far."""
    prefix = marker_prefix(asset_id, point)
    root = Path(marker_dir)
    return sum(1 for p in root.iterdir() if p.name.startswith(prefix)) if root.is_dir() else 0


def maybe_die(point: str, asset_id: Any) -> None:
    """SIGKILL this process when `CASTEX_FAULTS` names (asset_id, point) and its budget is not spent."""
    raw = os.environ.get(ENV_VAR)
    if not raw:
        return
    spec = _parse(raw)
    fault = spec["faults"].get(str(asset_id))
    if not fault or fault.get("point") != point:
        return
    marker_dir = Path(spec["dir"])
    fired = crash_count(marker_dir, str(asset_id), point)
    if fired >= int(fault.get("times", 1)):
        return
    marker_dir.mkdir(parents=True, exist_ok=True)
    marker = marker_dir / f"{marker_prefix(str(asset_id), point)}{fired}"
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["AFTER_COMMIT", "AFTER_OPTIMIZE", "ENV_VAR", "POINTS", "crash_count", "marker_prefix", "maybe_die"]
