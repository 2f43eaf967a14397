"""Prompt stage: encode every unique prompt of a run once, into a shared `EmbeddingCache`.

Why a separate stage: the text encoder (T5-XXL, 4.7B for IF) is the largest model of the
cascade and is needed for a few seconds per *unique prompt*, while the UNets are needed for
minutes per *asset*. Encoding up front lets the texture actors find every embedding in the cache
(`Texturer.encode_prompts` then never loads the encoder), so their GPU memory holds UNets only.

Rows are `{"encoder": <resolved text-encoder path or hub id>, "text": <prompt>}`; the cache key
is (encoder id, prompt hash) as defined by `core.guidance.EmbeddingCache`. The negative prompts
are ordinary texts here (the empty string is the unconditional embedding).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.guidance import EmbeddingCache, PromptEncoder, encoder_id_for
from core.texturer import resolve_device

log = logging.getLogger("castex.prompts")


class PromptActor:
    """Ray Data callable class: keeps each text encoder loaded across batches of one run."""

    def __init__(self, cache_dir: str, device: str = "auto") -> None:
        self.cache = EmbeddingCache(cache_dir)
        self.device = resolve_device(device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self._encoders: dict[str, PromptEncoder] = {}
        self._ids: dict[str, str] = {}

    def _encoder_id(self, encoder: str) -> str:
        if encoder not in self._ids:
            self._ids[encoder] = encoder_id_for(encoder)
        return self._ids[encoder]

    def _encoder(self, encoder: str) -> PromptEncoder:
        if encoder not in self._encoders:
            self._encoders[encoder] = PromptEncoder.from_pretrained(encoder, device=self.device, dtype=self.dtype)
        return self._encoders[encoder]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        """Encode the batch's texts that the cache lacks; one output row per input row.

        A failure (encoder cannot be loaded) is reported per row instead of raised: the texture
        stage then falls back to encoding itself and records the real error per asset.
        """
        encoders = [str(e) for e in batch["encoder"]]
        texts = [str(t) for t in batch["text"]]
        status: list[str] = ["cached"] * len(texts)
        errors: list[str | None] = [None] * len(texts)
        missing: dict[str, list[int]] = defaultdict(list)
        for i, (enc, text) in enumerate(zip(encoders, texts)):
            try:
                if self.cache.get(self._encoder_id(enc), text) is None:
                    missing[enc].append(i)
            except Exception as exc:  # noqa: BLE001 - per-row outcome, see docstring
                status[i], errors[i] = "failed", f"{type(exc).__name__}: {exc}"
        for enc, rows in missing.items():
            t0 = time.perf_counter()
            try:
                unique = list(dict.fromkeys(texts[i] for i in rows))
                embeddings = self._encoder(enc).encode(unique).float().cpu()
                enc_id = self._encoder_id(enc)
                for j, text in enumerate(unique):
                    self.cache.put(enc_id, text, embeddings[j:j + 1])
                for i in rows:
                    status[i] = "encoded"
                log.info("encoded %d prompt(s) with %s in %.1fs", len(unique), enc, time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001
                for i in rows:
                    status[i], errors[i] = "failed", f"{type(exc).__name__}: {exc}"
                log.warning("prompt encoding with %s failed: %s", enc, exc)
        return {"encoder": encoders, "text": texts, "status": status, "error": errors}


def cache_path_for(cache_dir: str | Path, encoder: str, text: str) -> Path:
    """Where the embedding of `text` under `encoder` lives (for diagnostics and tests)."""
    return EmbeddingCache(cache_dir).path(encoder_id_for(encoder), text)
