"""Shared pieces of the slow batch-run tests (S3 end to end, `ray job submit`).

Why a helper module: both tests build the same kind of mixed manifest (good meshes, a bad mesh,
an empty prompt, an unsafe asset id) with tiny per-row options, and both must judge a finished
run the same strict way: every manifest row in the index exactly once with the right status,
shards holding exactly the ok assets, `_SUCCESS` present. Reading goes through `Storage`, so
the same checks work on a local directory and on S3.
"""

from __future__ import annotations

import io
import json
import socket
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import trimesh

from core.examples import write_example_mesh
from pipeline.index import read_index
from pipeline.layout import shards_dir, success_path, summary_path
from pipeline.storage import Storage

# cpu-demo shrunk per row so one asset takes seconds on a shared 2-core machine.
FAST = json.dumps({"stage_1.steps": 2, "stage_2.steps": 1, "texture_size": 32, "render_size": 32,
                   "preview_size": 32, "views": 1, "preview_views": 1})
UNSAFE_ID = "../weird id/ü?*"
BUNDLE_MEMBERS = ("albedo.png", "orm.png", "normal.png", "glb", "preview.png", "json")


@dataclass(frozen=True)
class Row:
    """One manifest row and what the run must make of it: "ok" or the failed row's error code."""

    asset_id: str
    mesh_uri: str
    prompt: str
    expect: str
    options: str = FAST


def make_meshes(directory: Path) -> dict[str, Path]:
    """Example meshes in both formats the tests upload (OBJ with its MTL, GLB) plus a point
    cloud that loads but has no faces (the "bad mesh")."""
    directory.mkdir(parents=True, exist_ok=True)
    meshes = {
        "vase": write_example_mesh("vase", directory / "vase.obj"),
        "box": write_example_mesh("box", directory / "box.glb"),
        "torus": write_example_mesh("torus", directory / "torus.obj"),
        "sphere": write_example_mesh("sphere", directory / "sphere.glb", subdivisions=4),
    }
    bad = directory / "points.ply"
    trimesh.PointCloud([[0, 0, 0], [1, 0, 0], [0, 1, 0]]).export(bad)
    meshes["points"] = bad
    return meshes


def manifest_bytes(rows: Iterable[Row]) -> bytes:
    """The rows as one Parquet file (seed = row position, so every row is distinct)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(rows)
    table = pa.table({"asset_id": [r.asset_id for r in rows], "mesh_uri": [r.mesh_uri for r in rows],
                      "prompt": [r.prompt for r in rows],
                      "seed": pa.array(list(range(len(rows))), pa.int64()),
                      "options": [r.options for r in rows]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def shard_members(storage: Storage, run_id: str) -> dict[str, bytes]:
    """Every member of every shard of the run, by member name (names are unique across shards
    because each asset key is packed once)."""
    members: dict[str, bytes] = {}
    for info in storage.list(shards_dir(run_id), suffix=".tar"):
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(info.path)), mode="r:") as tar:
            for m in tar.getmembers():
                assert m.name not in members, f"{m.name} packed twice"
                members[m.name] = tar.extractfile(m).read()
    return members


def check_run(storage: Storage, run_id: str, rows: list[Row]) -> tuple[list[dict], dict[str, bytes]]:
    """Assert the finished run's index, shards and markers; returns (index rows, shard members).

    Index: one row per manifest row (by `row_index`), `ok` rows with shard and content key,
    failed rows with the expected code and a reason. Shards: exactly the ok keys, each with
    every bundle member. Summary counts agree and `_SUCCESS` exists.
    """
    index = read_index(storage, run_ids=[run_id]).to_pylist()
    assert sorted(r["row_index"] for r in index) == list(range(len(rows))), \
        [(r["row_index"], r["asset_id"], r["status"]) for r in index]
    for r in index:
        want = rows[r["row_index"]].expect
        assert r["asset_id"] == rows[r["row_index"]].asset_id, r
        if want == "ok":
            assert r["status"] == "ok" and r["shard"] and r["content_key"] and r["members"], r
        else:
            assert (r["status"], r["error_code"]) == ("failed", want), r
            assert r["error"], r
    members = shard_members(storage, run_id)
    ok_keys = {r["key"] for r in index if r["status"] == "ok"}
    assert {name.split(".", 1)[0] for name in members} == ok_keys
    for key in ok_keys:
        for ext in BUNDLE_MEMBERS:
            assert f"{key}.{ext}" in members, f"{key}.{ext} missing"
    assert storage.exists(success_path(run_id))
    summary = json.loads(storage.read_bytes(summary_path(run_id)))
    n_ok = sum(r.expect == "ok" for r in rows)
    assert summary["counts"] == {"total": len(rows), "ok": n_ok, "failed": len(rows) - n_ok, "skipped": 0}
    return index, members


def validate_glbs(members: dict[str, bytes], work_dir: Path) -> int:
    """Run the Khronos validator on every GLB in the shards; returns how many were checked."""
    from gltf_validator import format_messages, validate_gltf

    work_dir.mkdir(parents=True, exist_ok=True)
    checked = 0
    for name, data in sorted(members.items()):
        if not name.endswith(".glb"):
            continue
        path = work_dir / name
        path.write_bytes(data)
        report = validate_gltf(path)
        assert report["numErrors"] == 0, f"{name}:\n{format_messages(report)}"
        checked += 1
    return checked


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
