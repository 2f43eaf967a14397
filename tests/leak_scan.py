"""Find credential strings in everything a run leaves behind (test helper).

Why a scanner and not spot checks: a secret can surface far from where it entered (a botocore
message in a worker log, a URI in an index column, a repr inside a shard's metadata), so the
tests read *every* byte a run wrote: captured driver output, every file under the Ray session
directories, every object under the output prefix. Parquet is compressed, so its decoded rows
are searched as well as its raw bytes; tar shards are searched member by member.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import quote

from pipeline.storage import Storage


def _needles(secrets: Iterable[str]) -> dict[bytes, str]:
    """Each secret as bytes, raw and URL-encoded (a secret with `/` or `+` in a query string)."""
    out: dict[bytes, str] = {}
    for s in secrets:
        for form in {s, quote(s, safe="")}:
            out[form.encode()] = s
    return out


def find_secrets(blobs: Mapping[str, bytes], secrets: Iterable[str]) -> list[str]:
    """`"<where>: <secret>"` for every secret (or its URL-encoded form) found in a blob."""
    needles = _needles(secrets)
    return [f"{where}: {secret}" for where, data in blobs.items() for needle, secret in needles.items()
            if needle in data]


def files_under(root: str | os.PathLike) -> dict[str, bytes]:
    """Every regular file below `root` (sockets, fifos and symlinks skipped), by path."""
    blobs: dict[str, bytes] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            try:
                if not stat.S_ISREG(path.lstat().st_mode):
                    continue
                blobs[str(path)] = path.read_bytes()
            except OSError:
                continue  # a file Ray removed while we walked
    return blobs


def objects_under(storage: Storage) -> dict[str, bytes]:
    """Every object below a `Storage` root, plus decoded views: Parquet rows as JSON text and
    each tar member on its own (keys `<path>` / `<path>#rows` / `<path>#<member>`)."""
    import pyarrow.parquet as pq

    blobs: dict[str, bytes] = {}
    for info in storage.list():
        data = storage.read_bytes(info.path)
        blobs[info.path] = data
        if info.path.endswith(".parquet"):
            rows = pq.read_table(io.BytesIO(data)).to_pylist()
            blobs[f"{info.path}#rows"] = json.dumps(rows, default=str, ensure_ascii=False).encode()
        elif info.path.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                for m in tar.getmembers():
                    blobs[f"{info.path}#{m.name}"] = (m.name.encode() + b"\n" + tar.extractfile(m).read()
                                                      if m.isfile() else m.name.encode())
    return blobs
