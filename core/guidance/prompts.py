"""Prompt embeddings: T5 encoding (IF style), an on-disk cache, and load-only-when-needed encoding.

The IF text encoder (T5-XXL, 4.7B parameters) is by far the largest model of the cascade but runs
once per prompt. `encode_prompts` therefore looks in the cache first, loads the encoder only for
prompts it has never seen, and frees it before returning, so texture optimization never holds it.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from core.guidance.cascade import available_variant, load_component, require_subfolders, resolve_source

log = logging.getLogger(__name__)

MAX_LENGTH = 77  # IF's prompt length in tokens
_FINGERPRINT_HEAD = 1 << 20  # bytes of each encoder file hashed into a local directory's identity
_ENCODE_CHUNK = 16  # prompts per encoder call: bounds activation memory for long prompt lists


@dataclass
class PromptEmbeds:
    """Text and unconditional (negative prompt) embeddings for one prompt, each [1 or B, L, D]."""

    cond: torch.Tensor
    uncond: torch.Tensor

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "PromptEmbeds":
        return PromptEmbeds(cond=self.cond.to(device=device, dtype=dtype),
                            uncond=self.uncond.to(device=device, dtype=dtype))


def _hash_file_head(h: "hashlib._Hash", path: Path) -> None:
    """Size plus the first MiB: tells weight files apart without reading gigabytes."""
    h.update(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_FINGERPRINT_HEAD))


def encoder_fingerprint(directory: str | Path) -> str:
    """Content hash of a local IF directory's text_encoder/ and tokenizer/ (paths, sizes, file heads)."""
    root = Path(directory)
    h = hashlib.sha256()
    for sub in ("text_encoder", "tokenizer"):
        for path in sorted(p for p in (root / sub).rglob("*") if p.is_file()):
            h.update(path.relative_to(root).as_posix().encode())
            _hash_file_head(h, path)
    return h.hexdigest()


def encoder_id_for(path_or_id: str | Path) -> str:
    """Stable identity of an encoder + tokenizer, computed without loading either (cache key).

    Hub ids are taken as they are; local directories are identified by content, so a rebuilt tiny
    cascade with another seed never reuses stale embeddings and moving a directory keeps its cache.
    """
    source, is_local = resolve_source(path_or_id)
    if is_local:
        require_subfolders(source, ("text_encoder", "tokenizer"), "text encoder")
        ident = f"local-sha256:{encoder_fingerprint(source)[:32]}"
    else:
        ident = f"hub:{source}"
    return f"{ident}|t5-encoder|max_length={MAX_LENGTH}"


def _dtype_kwarg() -> str:
    """transformers renamed `torch_dtype` to `dtype` in 4.56 (and warns about the old name in 5.x)."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class PromptEncoder:
    """IF-style T5 encoding: pad to 77 tokens, truncate, pass the attention mask to the encoder."""

    def __init__(self, tokenizer, text_encoder: torch.nn.Module, *, encoder_id: str) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.encoder_id = encoder_id

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, variant: str | None = None) -> "PromptEncoder":
        """Tokenizer from `tokenizer/` (T5 sentencepiece or fast word-level), T5 encoder from `text_encoder/`.

        Half precision only on accelerators (as the UNets); raises ModelLoadError on any failure.
        """
        from transformers import AutoTokenizer, T5EncoderModel

        device = torch.device(device)
        encoder_id = encoder_id_for(path_or_id)
        source, is_local = resolve_source(path_or_id)
        load_dtype = dtype if device.type != "cpu" else torch.float32
        tokenizer = load_component(lambda: AutoTokenizer.from_pretrained(source, subfolder="tokenizer"),
                                   what="the tokenizer (tokenizer/)", source=source, is_local=is_local)
        kwargs = {"subfolder": "text_encoder", _dtype_kwarg(): load_dtype}
        variant = available_variant(source, is_local, "text_encoder", variant)
        if variant is not None:
            kwargs["variant"] = variant
        encoder = load_component(lambda: T5EncoderModel.from_pretrained(source, **kwargs),
                                 what="the text encoder (text_encoder/)", source=source, is_local=is_local)
        encoder = encoder.to(device).eval().requires_grad_(False)
        return cls(tokenizer, encoder, encoder_id=encoder_id)

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """[N, 77, D] hidden states in the encoder's dtype, on its device."""
        chunks = [self._encode_chunk(prompts[i:i + _ENCODE_CHUNK]) for i in range(0, len(prompts), _ENCODE_CHUNK)]
        return torch.cat(chunks, dim=0)

    def _encode_chunk(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts), max_length=MAX_LENGTH, padding="max_length", truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        return self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state

    def free(self) -> None:
        """Drop the encoder weights (and the CUDA cache) so the optimizer runs without them."""
        device = self.device
        self.text_encoder = None
        self.tokenizer = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


class EmbeddingCache:
    """Prompt embeddings on disk: `root/<sha256(encoder id)[:16]>/<sha256(prompt)>.safetensors`.

    Files are written to a temporary name and renamed, so concurrent writers (several actors on a
    shared volume) and crashes never leave a half-written embedding behind.
    """

    def __init__(self, root_dir: str | Path) -> None:
        self.root = Path(root_dir)

    def path(self, encoder_id: str, prompt: str) -> Path:
        enc = hashlib.sha256(encoder_id.encode()).hexdigest()[:16]
        return self.root / enc / f"{hashlib.sha256(prompt.encode()).hexdigest()}.safetensors"

    def get(self, encoder_id: str, prompt: str) -> torch.Tensor | None:
        """[1, L, D] float32 on CPU, or None when absent or unreadable (then it is recomputed)."""
        from safetensors import safe_open

        path = self.path(encoder_id, prompt)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("encoder_id") != encoder_id or meta.get("prompt") != prompt:
                    return None
                return f.get_tensor("embedding")
        except Exception as exc:  # noqa: BLE001 - a corrupt cache entry is a miss, not a failure
            log.warning("ignoring unreadable embedding cache file %s: %s", path, exc)
            return None

    def put(self, encoder_id: str, prompt: str, embedding: torch.Tensor) -> Path:
        """Store one embedding ([L, D] or [1, L, D]) as float32; atomic via temp file + os.replace."""
        from safetensors.torch import save_file

        path = self.path(encoder_id, prompt)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensor = embedding.detach().to("cpu", torch.float32).reshape(1, *embedding.shape[-2:]).contiguous()
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
        os.close(fd)
        try:
            save_file({"embedding": tensor}, tmp, metadata={"encoder_id": encoder_id, "prompt": prompt})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _encode_missing(texts: list[str], encoder_path: str | Path, device: torch.device | str,
                    dtype: torch.dtype, variant: str | None) -> dict[str, torch.Tensor]:
    """Load the encoder, encode `texts`, free the encoder. Returns float32 CPU [1, L, D] per text."""
    encoder = PromptEncoder.from_pretrained(encoder_path, device=device, dtype=dtype, variant=variant)
    try:
        embeddings = encoder.encode(texts).float().cpu()
    finally:
        encoder.free()
        del encoder
    return {text: embeddings[i:i + 1].clone() for i, text in enumerate(texts)}


def encode_prompts(prompts: list[str], negative_prompt: str = "", *, encoder_path: str | Path,
                   cache: EmbeddingCache | None = None, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, variant: str | None = None) -> dict[str, PromptEmbeds]:
    """Embeddings per prompt (cond) with the negative prompt as uncond ("" = unconditional).

    The encoder is loaded only when some text is missing from the cache and freed before
    returning. Results are on `device` in `dtype`; `variant` (e.g. "fp16") picks encoder weight files.
    """
    texts = _unique(list(prompts) + [negative_prompt])
    found: dict[str, torch.Tensor] = {}
    encoder_id = encoder_id_for(encoder_path) if cache is not None else ""
    if cache is not None:
        for text in texts:
            hit = cache.get(encoder_id, text)
            if hit is not None:
                found[text] = hit
    missing = [t for t in texts if t not in found]
    if missing:
        log.info("encoding %d prompt(s) with %s", len(missing), encoder_path)
        fresh = _encode_missing(missing, encoder_path, device, dtype, variant)
        found.update(fresh)
        if cache is not None:
            for text, emb in fresh.items():
                cache.put(encoder_id, text, emb)
    uncond = found[negative_prompt]
    return {p: PromptEmbeds(cond=found[p], uncond=uncond).to(device, dtype) for p in _unique(list(prompts))}


__all__ = ["MAX_LENGTH", "EmbeddingCache", "PromptEmbeds", "PromptEncoder", "encode_prompts",
           "encoder_fingerprint", "encoder_id_for"]
