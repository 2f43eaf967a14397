"""Bring a mesh from wherever the manifest says to a local file the mesh loader can open.

`core.mesh.load_mesh` needs a local path with the right extension (it picks the format by it),
so remote objects are downloaded to `dest_dir/<unique>/<name>` keeping the file name. Local
paths and `file://` URIs are not copied: the loader reads them in place.

For OBJ files, the `mtllib` files and the textures they reference are fetched next to the OBJ
when they exist (best effort, never a failure: CasTex replaces the material anyway, but loaders
warn without them). Only names that stay inside the OBJ's directory are followed.

Every failure becomes a `FetchError` (code `unreachable`) whose message names the redacted URI
and the cause, so it can go straight into the index.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fsspec

from pipeline.errors import FetchError, UnsupportedSchemeError
from pipeline.redact import redact, register_secrets
from pipeline.uri import HTTP_SCHEMES, MESH_SCHEMES, extension_of, is_local, scheme_of

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_MTLLIB = re.compile(rb"^\s*mtllib\s+(.+?)\s*$", re.MULTILINE)
_MAP_LINE = re.compile(rb"^\s*(?:map_\w+|bump|disp|decal|refl|norm)\s+(.+?)\s*$", re.MULTILINE | re.IGNORECASE)


def _local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.lower().startswith("file://") else uri)


def _check_scheme(uri: str) -> str:
    scheme = scheme_of(uri)
    if scheme not in MESH_SCHEMES:
        raise UnsupportedSchemeError(f"unsupported scheme {scheme!r} in mesh_uri {redact(uri)!r}; "
                                     f"use a local path, file://, s3://, gs://, http:// or https://")
    return scheme


def _unreachable(uri: str, exc: BaseException) -> FetchError:
    return FetchError(f"unreachable object {redact(uri)!r}: {redact(exc)}")


def _url_to_fs(uri: str, storage_options: Mapping[str, Any] | None) -> tuple[fsspec.AbstractFileSystem, str]:
    options = {} if scheme_of(uri) in HTTP_SCHEMES else dict(storage_options or {})
    register_secrets(options)
    return fsspec.core.url_to_fs(uri, **options)


def make_exists_checker(storage_options: Mapping[str, Any] | None = None) -> Callable[[str], bool]:
    """`check_exists` callback for `validate_rows`: True when the mesh object exists.

    Storage options apply to object stores only (never sent to arbitrary HTTP hosts). Errors
    other than "not found" (forbidden, DNS, missing driver) propagate, and `validate_rows`
    records them as `unreachable` with their message.
    """

    def check(uri: str) -> bool:
        _check_scheme(uri)
        if is_local(uri):
            return _local_path(uri).is_file()
        fs, path = _url_to_fs(uri, storage_options)
        return bool(fs.exists(path))

    return check


def _safe_name(uri: str) -> str:
    name = uri.split("://", 1)[-1].split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    name = _SAFE_NAME.sub("_", name).lstrip(".") or "mesh"
    ext = extension_of(uri)
    if ext and not name.lower().endswith(ext):
        name += ext
    return name[-120:]


def _relative_refs(data: bytes, pattern: re.Pattern[bytes]) -> list[str]:
    """Referenced file names that stay inside the referencing file's directory."""
    out = []
    for match in pattern.finditer(data):
        # Texture lines may carry options before the name (`map_Kd -s 1 1 1 tex.png`); the
        # file name is the last token.
        token = match.group(1).split()[-1].decode("utf-8", "replace").replace("\\", "/")
        parts = token.split("/")
        if token.startswith("/") or ".." in parts or "://" in token or not token:
            continue
        out.append(token)
    return out


def _fetch_obj_siblings(fs: fsspec.AbstractFileSystem, remote_obj: str, local_obj: Path) -> None:
    """Best effort: download the OBJ's material libraries and their textures."""
    remote_dir = remote_obj.rsplit("/", 1)[0]
    try:
        mtls = _relative_refs(local_obj.read_bytes(), _MTLLIB)
    except OSError:
        return
    for mtl in mtls:
        local_mtl = local_obj.parent / mtl
        try:
            local_mtl.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{remote_dir}/{mtl}", str(local_mtl))
            textures = _relative_refs(local_mtl.read_bytes(), _MAP_LINE)
        except Exception:  # noqa: BLE001 - optional side files: missing ones are fine
            continue
        mtl_dir = mtl.rsplit("/", 1)[0] if "/" in mtl else ""
        for tex in textures:
            rel = f"{mtl_dir}/{tex}" if mtl_dir else tex
            try:
                (local_obj.parent / rel).parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(f"{remote_dir}/{rel}", str(local_obj.parent / rel))
            except Exception:  # noqa: BLE001
                continue


def fetch_mesh(uri: str, dest_dir: str | os.PathLike, storage_options: Mapping[str, Any] | None = None,
               *, with_obj_siblings: bool = True) -> Path:
    """Local path of the mesh at `uri`, downloading it under `dest_dir` when remote.

    The caller owns `dest_dir` and deletes it when the asset is done; local inputs are returned
    as they are and never copied there. Raises `UnsupportedSchemeError` or `FetchError`.
    """
    scheme = _check_scheme(uri)
    if scheme in ("", "file"):
        path = _local_path(uri)
        if not path.is_file():
            raise FetchError(f"unreachable object {redact(uri)!r}: no such file")
        return path
    target_dir = Path(dest_dir) / uuid.uuid4().hex[:12]
    target = target_dir / _safe_name(uri)
    try:
        fs, remote = _url_to_fs(uri, storage_options)
        target_dir.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(target))
    except (UnsupportedSchemeError, FetchError):
        raise
    except Exception as exc:  # noqa: BLE001 - every backend has its own error types
        raise _unreachable(uri, exc) from None
    if not target.is_file():
        raise FetchError(f"unreachable object {redact(uri)!r}: download produced no file")
    if with_obj_siblings and target.suffix.lower() == ".obj":
        _fetch_obj_siblings(fs, remote, target)
    return target
