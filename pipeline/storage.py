"""`Storage`: one fsspec filesystem rooted at a URI, with writes readers never see half-done.

All output of a run goes through `Storage`, so the atomicity rule lives in one place:

* Local disk: data goes to `<path>.tmp-<uuid>` in the same directory, is fsynced, then renamed
  over the final name with `os.replace` (atomic on POSIX within one filesystem); the directory is
  fsynced so the rename survives a power cut. An exception removes the temp file; a hard kill
  may leave it behind, and `pipeline.gc` deletes such `*.tmp-*` debris later.
* Object stores (S3, GCS): we upload *directly to the final key*. An object becomes visible only
  when its single PUT completes, or, for large files, when `CompleteMultipartUpload` is called
  (the parts of an unfinished multipart upload are never listed or readable; s3fs aborts the
  upload on error). Readers therefore never see a partial object, and a temp-key + copy +
  delete scheme would only double the traffic (and a server-side copy over 5 GB needs a
  multipart copy), with a window in which the temp key is debris. An interrupted multipart
  upload can still bill for stored parts: configure the bucket's "abort incomplete multipart
  uploads" lifecycle rule.

Every reader in the pipeline selects files by their final suffix (`*.tar`, `*.parquet`), which
temp names never carry, so even local temp files are invisible to them.

Paths given to `Storage` methods are relative to its root URI and use `/`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from core.durable import fsync_dir
from pipeline.errors import StorageError
from pipeline.redact import redact, register_secrets
from pipeline.uri import STORAGE_SCHEMES, join, scheme_of

TMP_MARKER = ".tmp-"


@dataclass(frozen=True)
class FileInfo:
    """One file below a `Storage` root: `path` relative to the root, size in bytes, and
    modification time (unix seconds; None when the backend does not say)."""

    path: str
    size: int
    mtime: float | None


def _mtime(info: Mapping[str, Any]) -> float | None:
    """Normalise the backends' time fields (local `mtime`, s3fs `LastModified`, gcsfs `updated`)."""
    for name in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(name)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


class Storage:
    """An fsspec filesystem plus a root path, built from a URI and storage options.

    `storage_options` go to `fsspec.core.url_to_fs` (for s3fs e.g. `key`, `secret`,
    `client_kwargs={"endpoint_url": ...}`); their secret values are registered with
    `pipeline.redact` so they never reach logs, and `repr(storage)` shows no credentials.
    """

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
        scheme = scheme_of(uri)
        if scheme not in STORAGE_SCHEMES:
            raise StorageError(f"unsupported storage scheme {scheme!r} in {redact(uri)!r}; "
                               f"use a local path, file://, s3:// or gs://")
        options = dict(storage_options or {})
        register_secrets(options)
        try:
            fs, root = fsspec.core.url_to_fs(uri, **options)
        except ImportError as exc:  # e.g. gs:// without gcsfs installed
            raise StorageError(f"no filesystem driver for {redact(uri)!r}: {redact(str(exc))}") from None
        self.uri = uri
        self.storage_options = options
        self.fs: fsspec.AbstractFileSystem = fs
        self.root: str = root.rstrip("/") if root not in ("/", "") else root
        self.is_local = isinstance(fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Storage({redact(self.uri)!r})"

    # -- paths ---------------------------------------------------------------------------------

    def path(self, rel: str = "") -> str:
        """Backend path (no protocol) of `rel`."""
        return join(self.root, rel) if rel else self.root

    def url(self, rel: str = "") -> str:
        """Full URI of `rel` (with protocol), e.g. to hand to a reader outside this process."""
        return self.fs.unstrip_protocol(self.path(rel))

    def relative(self, path: str) -> str:
        """Inverse of `path`: strip the root (and protocol) from a backend path."""
        path = self.fs._strip_protocol(path)
        root = self.root.rstrip("/")
        if path == root:
            return ""
        if root and path.startswith(root + "/"):
            return path[len(root) + 1:]
        if root in ("", "/"):
            return path.lstrip("/")
        raise ValueError(f"{path!r} is not below {root!r}")

    def child(self, rel: str) -> Storage:
        """A `Storage` rooted at `rel` below this one, sharing the filesystem."""
        sub = object.__new__(Storage)
        sub.uri = join(self.uri, rel)
        sub.storage_options = self.storage_options
        sub.fs = self.fs
        sub.root = self.path(rel)
        sub.is_local = self.is_local
        return sub

    # -- reading -------------------------------------------------------------------------------

    def open_read(self, rel: str) -> IO[bytes]:
        """Binary file object for reading (seekable; object stores read by ranges)."""
        return self.fs.open(self.path(rel), "rb")

    def read_bytes(self, rel: str) -> bytes:
        """Whole content of `rel`."""
        return self.fs.cat_file(self.path(rel))

    def exists(self, rel: str = "") -> bool:
        """True when `rel` exists; a fresh check, not a cached listing."""
        self.fs.invalidate_cache(self.path(rel))
        return self.fs.exists(self.path(rel))

    def list(self, prefix: str = "", *, suffix: str | None = None) -> list[FileInfo]:
        """All files below `prefix`, recursively, sorted by path; `suffix` filters names.

        Listings are never served from fsspec's cache: another worker may have written since.
        """
        base = self.path(prefix)
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, withdirs=False, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for path, info in found.items():
            if info.get("type", "file") != "file":
                continue
            rel = self.relative(path)
            if suffix and not rel.endswith(suffix):
                continue
            out.append(FileInfo(rel, int(info.get("size") or 0), _mtime(info)))
        return sorted(out, key=lambda f: f.path)

    def list_dirs(self, prefix: str = "") -> list[str]:
        """Names (not paths) of the immediate sub-directories / common prefixes of `prefix`."""
        base = self.path(prefix)
        self.fs.invalidate_cache(base)
        try:
            entries = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            return []
        names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"]
        return sorted(set(names))

    def glob(self, pattern: str) -> list[str]:
        """Relative paths of files matching a glob below the root, sorted."""
        self.fs.invalidate_cache(self.root)
        return sorted(self.relative(p) for p in self.fs.glob(self.path(pattern)) if self.fs.isfile(p))

    # -- writing -------------------------------------------------------------------------------

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write `data` to `rel` so readers see either nothing (or the old content) or all of it."""
        if self.is_local:
            with self.atomic_writer(rel) as f:
                f.write(data)
        else:
            self.fs.pipe_file(self.path(rel), bytes(data))

    def put_atomic(self, rel: str, local_path: str | os.PathLike) -> None:
        """Upload a local file to `rel` atomically (large shards: streamed, multipart on S3)."""
        if self.is_local:
            with open(local_path, "rb") as src, self.atomic_writer(rel) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        else:
            self.fs.put_file(os.fspath(local_path), self.path(rel))

    @contextlib.contextmanager
    def atomic_writer(self, rel: str) -> Iterator[IO[bytes]]:
        """Context manager yielding a binary file; `rel` appears only if the block succeeds.

        Local: the file is `<rel>.tmp-<uuid>` renamed on success. Object stores: a local spool
        file uploaded with `put_atomic` on success. On an exception nothing is published and the
        temp file is removed.
        """
        if self.is_local:
            final = self.path(rel)
            parent = os.path.dirname(final)
            os.makedirs(parent, exist_ok=True)
            tmp = f"{final}{TMP_MARKER}{uuid.uuid4().hex}"
            try:
                with open(tmp, "wb") as f:
                    yield f
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
                raise
            fsync_dir(parent)
        else:
            with tempfile.TemporaryDirectory(prefix="castex-upload-") as tmpdir:
                local = os.path.join(tmpdir, "data")
                with open(local, "wb") as f:
                    yield f
                self.put_atomic(rel, local)

    def delete(self, rel: str, *, missing_ok: bool = True) -> None:
        """Remove one file."""
        try:
            self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            if not missing_ok:
                raise

    def delete_many(self, rels: list[str]) -> None:
        """Remove several files (one batched request on object stores); missing ones are fine."""
        if not rels:
            return
        if self.is_local:
            for rel in rels:
                self.delete(rel)
            return
        paths = [self.path(r) for r in rels]
        try:
            self.fs.rm(paths)
        except FileNotFoundError:
            for rel in rels:
                self.delete(rel)

    def remove_empty_dirs(self, rel: str) -> bool:
        """Local only: remove `rel` and its sub-directories if they hold no file. Object stores
        have no directories, so there it is a no-op. Returns True when `rel` no longer exists."""
        if not self.is_local:
            return not self.list(rel)
        top = self.path(rel)
        if not os.path.isdir(top):
            return True
        for dirpath, _dirnames, filenames in os.walk(top, topdown=False):
            if filenames:
                continue
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
        return not os.path.exists(top)
