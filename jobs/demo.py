"""`castex demo` (what `make demo` runs): the batch job on an example manifest, all local, on CPU.

Writes procedural example meshes and a Parquet manifest under OUT/inputs/, runs the same pipeline
as `castex run` on a local Ray instance with the `cpu-demo` preset (the trained demo cascade that
ships in weights/, so nothing is downloaded), and copies each asset's preview and GLB out of the
shards into OUT/previews/ and OUT/assets/ so they can be opened directly. Running it again skips
every asset already committed (the pipeline's resume), so the second run takes seconds.
"""

from __future__ import annotations

import argparse
import logging
import tarfile
from pathlib import Path

log = logging.getLogger("castex.demo")

# (asset_id, example mesh, prompt): one row per example mesh.
DEMO_ROWS: tuple[tuple[str, str, str], ...] = (
    ("vase-red", "vase", "a red vase"),
    ("torus-blue-stripes", "torus", "blue and white stripes"),
    ("box-green-checker", "box", "a green and white checkerboard"),
    ("blob-yellow-dots", "blob", "yellow with purple polka dots"),
)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    from jobs.run import add_execution_arguments

    add_execution_arguments(p)
    p.set_defaults(out="demo_out")
    for action in p._actions:  # --out is optional here: the demo has a default output directory
        if action.dest == "out":
            action.required = False
            action.help = "output directory (default: demo_out)"


def write_demo_inputs(root: Path) -> Path:
    """Example meshes + manifest.parquet under `root`; returns the manifest path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.examples import write_example_mesh

    root.mkdir(parents=True, exist_ok=True)
    meshes = {name: write_example_mesh(name, root / f"{name}.obj") for _, name, _ in DEMO_ROWS}
    table = pa.table({"asset_id": [a for a, _, _ in DEMO_ROWS],
                      "mesh_uri": [str(Path(meshes[m]).resolve()) for _, m, _ in DEMO_ROWS],
                      "prompt": [p for _, _, p in DEMO_ROWS],
                      "seed": pa.array([0] * len(DEMO_ROWS), pa.int64())})
    path = root / "manifest.parquet"
    pq.write_table(table, path)
    return path


def export_assets(batch_out: Path, run_id: str, dest: Path) -> list[str]:
    """Copy `<key>.preview.png` and `<key>.glb` of every ok/skipped row out of its shard."""
    from pipeline.index import read_records

    written = []
    for record in read_records(str(batch_out), run_ids=[run_id]):
        if record.status not in ("ok", "skipped") or not record.shard:
            continue
        with tarfile.open(batch_out / record.shard, "r:") as tar:
            for ext, sub in (("preview.png", "previews"), ("glb", "assets")):
                member = tar.extractfile(f"{record.key}.{ext}")
                if member is None:
                    continue
                target = dest / sub / f"{record.asset_id}.{ext.split('.')[-1]}"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(member.read())
                written.append(str(target))
    return written


def run_demo(args: argparse.Namespace) -> int:
    from jobs.run import run_manifest

    out = Path(args.out).resolve()
    args.manifest = str(write_demo_inputs(out / "inputs"))
    args.out = str(out / "batch")
    args.run_id = None
    summary = run_manifest(args)
    files = export_assets(out / "batch", summary["run_id"], out)
    c = summary["counts"]
    print(f"demo run {summary['run_id']}: {c['ok']} ok, {c['skipped']} skipped (already done), {c['failed']} failed "
          f"of {c['total']}; wall {summary.get('wall_seconds') or 0.0:.0f}s")
    print(f"  shards + index: {out / 'batch'}")
    for path in sorted(files):
        print(f"  {path}")
    return 0 if c["failed"] == 0 else 1
