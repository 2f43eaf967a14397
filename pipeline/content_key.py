"""`content_key`: the identity of a texturing job's *result*, used to resume and deduplicate.

Two rows with the same content key produce the same bundle (same mesh bytes, prompt, negative
prompt, effective preset, seed, models and pipeline code), so a result committed by any earlier
run can stand in for a new one. The key is the SHA-256 of a canonical JSON document:
sorted keys, no whitespace, UTF-8, no NaN/inf, tuples as lists, plus a schema version `v` that
changes if the recipe itself ever changes. `asset_id` is deliberately *not* part of it: renaming
an asset does not make its texture different.

What callers must pass so equal keys really mean equal results:
* `preset` is the effective preset *after* overrides (e.g. `get_preset(name, overrides).to_dict()`),
  not its name: an override changes the result.
* `model_ids` should be references that do not depend on where a worker keeps its models (Hub
  ids, or `{models}`-templated paths before `Preset.resolved`), optionally with revisions.
* `pipeline_version` must change whenever the optimisation or export code changes its output.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

CONTENT_KEY_VERSION = 1
CONTENT_KEY_HEX = 64


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (meshes can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _canonical(value: Any, where: str) -> Any:
    """JSON-ready copy with a single spelling for each value; refuses what JSON cannot say."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"content key input {where} is not finite: {value!r}")
        return value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "item"):  # numpy scalar
        return _canonical(value.item(), where)
    raise TypeError(f"content key input {where} has non-JSON type {type(value).__name__}")


def canonical_json(document: Mapping[str, Any]) -> str:
    """The exact text that is hashed (exposed so tests and debugging can inspect it)."""
    return json.dumps(_canonical(document, "$"), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def content_key(mesh_sha256: str, prompt: str, negative_prompt: str | None,
                preset: Mapping[str, Any], seed: int, model_ids: Mapping[str, str],
                pipeline_version: str) -> str:
    """64-hex SHA-256 identifying the result of texturing these inputs (see module doc).

    `negative_prompt` None and "" are the same input (both mean an empty unconditional prompt).
    """
    if not (isinstance(mesh_sha256, str) and len(mesh_sha256) == 64
            and all(c in "0123456789abcdef" for c in mesh_sha256.lower())):
        raise ValueError("mesh_sha256 must be a 64-digit hex SHA-256 of the mesh bytes")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    document = {
        "v": CONTENT_KEY_VERSION,
        "mesh_sha256": mesh_sha256.lower(),
        "prompt": prompt,
        "negative_prompt": negative_prompt or "",
        "preset": preset,
        "seed": seed,
        "model_ids": model_ids,
        "pipeline_version": pipeline_version,
    }
    return hashlib.sha256(canonical_json(document).encode("utf-8")).hexdigest()


def is_content_key(value: str) -> bool:
    """True for strings shaped like a content key (64 lower-case hex digits)."""
    return len(value) == CONTENT_KEY_HEX and all(c in "0123456789abcdef" for c in value)
