"""`safe_key`: the storage key of an asset, derived deterministically from its `asset_id`.

The key names tar members (`<key>.albedo.png`), staging objects and index rows, so it must be
safe in every place it goes:

* WebDataset splits a member name at the *first* dot into sample key and extension, so a key
  must not contain `.`; and no `/` (a path), no `..`, no control or non-ASCII characters, and a
  bounded length (tar member names, S3 keys <= 1024 bytes, filesystem name limits).

Mapping (stable: it is part of the output format):

1. An id that is already safe is its own key: 1-100 characters from `[A-Za-z0-9_-]`, starting
   with a letter or digit, and *not containing `--`*. Most real ids (`chair_0001`, UUIDs) pass
   unchanged, so keys stay readable.
2. Any other id becomes `<slug>--<hash>`: `slug` is the id folded to ASCII, every run of
   other characters replaced by `_`, runs of `-` collapsed, trimmed, cut to 64 characters
   (`id` if nothing is left); `hash` is the first 24 hex digits (96 bits) of SHA-256 of the
   UTF-8 id.

Why two ids never collide: a kept id never contains `--` and a mapped key always does, so a kept
id cannot equal a mapped key; two kept ids are equal only if the ids are; two mapped keys are
equal only if 96-bit SHA-256 prefixes collide (about 1e-29 for a pair; `validate_rows` still
checks and fails a row loudly rather than overwrite another asset). Keys are case-sensitive,
like S3 and tar; case-insensitive local filesystems are not a supported output target.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_PLAIN_LEN = 100
SLUG_LEN = 64
HASH_HEX = 24
SEPARATOR = "--"

_PLAIN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_PLAIN_LEN - 1}}}")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_-]+")
_DASHES = re.compile(r"-{2,}")
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def is_plain_id(asset_id: str) -> bool:
    """True when `asset_id` is used unchanged as its key."""
    return bool(_PLAIN.fullmatch(asset_id)) and SEPARATOR not in asset_id


def safe_key(asset_id: str) -> str:
    """Deterministic, collision-free, storage-safe key for `asset_id` (see module doc)."""
    if not isinstance(asset_id, str):
        raise TypeError(f"asset_id must be a str, got {type(asset_id).__name__}")
    if is_plain_id(asset_id):
        return asset_id
    digest = hashlib.sha256(asset_id.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_HEX]
    folded = unicodedata.normalize("NFKD", asset_id).encode("ascii", "ignore").decode("ascii")
    slug = _DASHES.sub("-", _UNSAFE_RUN.sub("_", folded))
    slug = slug.strip("_-")[:SLUG_LEN].rstrip("_-") or "id"
    return f"{slug}{SEPARATOR}{digest}"


def is_safe_key(key: str) -> bool:
    """True for strings `safe_key` can return (used to check keys read back from storage)."""
    return bool(_KEY.fullmatch(key)) and len(key) <= max(MAX_PLAIN_LEN, SLUG_LEN + len(SEPARATOR) + HASH_HEX)
