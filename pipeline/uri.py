"""URI schemes the pipeline accepts, and small helpers to take URIs apart.

Manifests and outputs live on local disk or object storage (local path, `file://`, `s3://`,
`gs://`); meshes may also come from `http(s)://`. Everything else is rejected up front with a
clear reason rather than failing later inside a GPU actor.
"""

from __future__ import annotations

import re

LOCAL_SCHEMES = frozenset({"", "file"})
OBJECT_STORE_SCHEMES = frozenset({"s3", "gs"})
HTTP_SCHEMES = frozenset({"http", "https"})
# Where a mesh may come from.
MESH_SCHEMES = LOCAL_SCHEMES | OBJECT_STORE_SCHEMES | HTTP_SCHEMES
# Where manifests are read from and outputs written to. `memory` is fsspec's in-process
# filesystem, accepted for tests only.
STORAGE_SCHEMES = LOCAL_SCHEMES | OBJECT_STORE_SCHEMES | {"memory"}

# RFC 3986 scheme, at least 2 characters so a Windows drive letter ("C:\\x") is not a scheme.
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+)://")
_GLOB_CHARS = re.compile(r"[*?\[]")


def scheme_of(uri: str) -> str:
    """Lower-case scheme of `uri`, "" for a plain local path. `gcs://` is normalised to `gs`."""
    m = _SCHEME.match(uri)
    if not m:
        return ""
    scheme = m.group("scheme").lower()
    return "gs" if scheme == "gcs" else scheme


def is_local(uri: str) -> bool:
    """True for plain paths and `file://` URIs."""
    return scheme_of(uri) in LOCAL_SCHEMES


def has_glob(path: str) -> bool:
    """True when `path` holds glob characters (`*`, `?`, `[`)."""
    return bool(_GLOB_CHARS.search(path))


def extension_of(uri: str) -> str:
    """Lower-case file extension of the last path segment, query and fragment ignored
    (`https://h/x/chair.OBJ?sig=1` -> `.obj`); "" when there is none."""
    path = uri.split("://", 1)[-1].split("?", 1)[0].split("#", 1)[0]
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if "." not in name.strip("."):
        return ""
    return "." + name.rsplit(".", 1)[1].lower()


def join(base: str, *parts: str) -> str:
    """Join path segments with `/` (object-store style), without doubling separators."""
    out = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}" if out else part
    return out
