"""Test helper: run the Khronos glTF Validator (tools/gltf-validator, npm) on exported files.

Locally a missing `node_modules` skips the calling test with a hint (`make env` installs it);
under CI (env var `CI` set) it is a failure instead, so CI can never pass by silently not
validating.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR_DIR = ROOT / "tools" / "gltf-validator"
SCRIPT = VALIDATOR_DIR / "validate.mjs"
PACKAGE = VALIDATOR_DIR / "node_modules" / "gltf-validator" / "package.json"


def _unavailable(reason: str) -> None:
    """Skip locally, fail in CI (see module docstring)."""
    message = f"glTF validator unavailable: {reason} (run `make env`)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def validate_gltf(path: str | Path, timeout: float = 120.0) -> dict:
    """Validate one glTF/GLB file; returns its report summary from validate.mjs:
    {file, numErrors, numWarnings, numInfos, numHints, truncated, messages, info}.

    Does not assert on the result: callers decide how strict to be (e.g. 0 errors, 0 warnings).
    """
    node = shutil.which("node")
    if node is None:
        _unavailable("`node` is not on PATH")
    if not PACKAGE.is_file():
        _unavailable(f"{PACKAGE} is missing")
    proc = subprocess.run(
        [node, str(SCRIPT), str(path)],
        capture_output=True, text=True, timeout=timeout, cwd=VALIDATOR_DIR,
    )
    # Exit 1 just means "the file has errors"; the JSON on stdout says which.
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise RuntimeError(
            f"validate.mjs failed (exit {proc.returncode}):\n{proc.stderr}\n{proc.stdout}"
        )
    return json.loads(proc.stdout)["reports"][0]


def format_messages(report: dict) -> str:
    """One line per validator message, for assertion errors."""
    return "\n".join(
        f"[{m.get('severity')}] {m.get('code')}: {m.get('message')} ({m.get('pointer', '')})"
        for m in report.get("messages", [])
    )
