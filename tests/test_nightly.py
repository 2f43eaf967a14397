"""`castex nightly`: the attempt policy, the HTML report, and (slow, local Ray) incremental nights.

The fast tests build runs by hand with `commit_asset` + `ShardPacker` + `write_summary`, so the
report builder and the attempt policy are checked without Ray. The slow ones share one Ray
instance and texture with cpu-demo shrunk by per-row options (seconds per asset), as
tests/test_pipeline_e2e.py does:
* fault (c): day 2's catalog adds 2 rows and changes 1 prompt -> exactly 3 rows textured, the
  rest skipped pointing at day 1's bundles, each row indexed once, reports with the counts;
* the failure threshold decides the exit code (3 above it, 0 within);
* a nightly that crashed before packing is resumed by the next invocation for the same date,
  without texturing anything twice.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import tarfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trimesh
from PIL import Image

from jobs import nightly
from pipeline.index import committed_content_keys, read_index, write_summary
from pipeline.keys import safe_key
from pipeline.layout import success_path
from pipeline.records import AssetRecord
from pipeline.report import (
    Thumbnail,
    collect_thumbnails,
    exceeds,
    failure_rate,
    make_thumbnail,
    render_report,
    report_path,
    write_report,
)
from pipeline.shards import ShardPacker, commit_asset
from pipeline.storage import Storage
from s3_server import SECRET_KEY, s3  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
FAST = json.dumps({"stage_1.steps": 2, "stage_2.steps": 1, "texture_size": 32, "render_size": 32,
                   "preview_size": 32, "views": 1, "preview_views": 1})
DAY1, DAY2 = dt.date(2026, 11, 24), dt.date(2026, 11, 25)


# ---------------------------------------------------------------------------------------------
# helpers


@dataclass
class ParsedPage:
    """What a strict-ish HTML walk found: nesting errors, images, table rows, text."""

    doctype: bool = False
    errors: list[str] = field(default_factory=list)
    images: list[dict[str, str]] = field(default_factory=list)
    tables: list[list[list[str]]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    text: str = ""


class _Walker(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = ParsedPage()
        self.stack: list[str] = []
        self._cell: list[str] | None = None
        self._text: list[str] = []

    def handle_decl(self, decl: str) -> None:
        self.page.doctype = self.page.doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag, attrs) -> None:
        self.page.tags.append(tag)
        if tag == "img":
            self.page.images.append({k: v or "" for k, v in attrs})
        if tag in self.VOID:
            return
        self.stack.append(tag)
        if tag == "table":
            self.page.tables.append([])
        elif tag == "tr" and self.page.tables:
            self.page.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag) -> None:
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.page.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None and self.page.tables and self.page.tables[-1]:
            self.page.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data) -> None:
        self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def close(self) -> ParsedPage:
        super().close()
        if self.stack:
            self.page.errors.append(f"unclosed {self.stack}")
        self.page.text = "".join(self._text)
        return self.page


def parse_page(page: str) -> ParsedPage:
    walker = _Walker()
    walker.feed(page)
    return walker.close()


def table_after(page: ParsedPage, header: list[str]) -> list[list[str]]:
    """Body rows of the first table whose header row is `header`."""
    for table in page.tables:
        if table and table[0] == header:
            return table[1:]
    raise AssertionError(f"no table with header {header}; tables: {[t[:1] for t in page.tables]}")


def counts_of(page: ParsedPage) -> dict[str, int]:
    (row,) = table_after(page, ["total", "ok", "failed", "skipped"])
    return dict(zip(["total", "ok", "failed", "skipped"], map(int, row), strict=True))


def png(color: tuple[int, int, int], size: tuple[int, int] = (96, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def ck_of(i: int) -> str:
    return f"{i:064x}"


def ok_record(run_id: str, asset_id: str, i: int, prompt: str = "a chair") -> AssetRecord:
    return AssetRecord(run_id=run_id, asset_id=asset_id, key=safe_key(asset_id), status="ok", row_index=i,
                       prompt=prompt, seed=1, preset="cpu-demo", content_key=ck_of(i),
                       timings={"fetch": 0.5, "stage_1": 10.0 + i}, gpu_seconds=20.0)


def files_for(color: tuple[int, int, int]) -> dict[str, bytes]:
    return {"albedo.png": b"a", "orm.png": b"o", "normal.png": b"n", "glb": b"g", "preview.png": png(color)}


def fake_run(storage: Storage, run_id: str, n_ok: int, failed: list[AssetRecord] = (), *,
             complete: bool = True) -> None:
    """A run as the driver leaves it: n_ok assets committed and packed, plus failed rows;
    `complete` writes summary.json + _SUCCESS."""
    for i in range(n_ok):
        commit_asset(storage, ok_record(run_id, f"asset-{i}", i), files_for((40 * i % 256, 100, 200)))
    for r in failed:
        commit_asset(storage, r.with_(run_id=run_id))
    ShardPacker(storage, run_id).pack(final=True)
    if complete:
        write_summary(storage, run_id, started_at=1_000.0, finished_at=1_100.0, expected_rows=n_ok + len(failed),
                      extra={"manifest": "s3://bucket/catalog/*.parquet", "preset": "cpu-demo"})


def failed_record(i: int, asset_id: str, code: str, error: str) -> AssetRecord:
    return AssetRecord(run_id="x", asset_id=asset_id, key=safe_key(asset_id), status="failed", row_index=i,
                       error_code=code, error=error, gpu_seconds=1.0)


# ---------------------------------------------------------------------------------------------
# report builder (no Ray)


def test_failure_rate_ignores_skipped_rows_and_threshold_is_strict() -> None:
    assert failure_rate({"total": 100, "ok": 1, "failed": 1, "skipped": 98}) == 0.5
    assert failure_rate({"total": 5, "ok": 0, "failed": 0, "skipped": 5}) == 0.0  # nothing processed
    assert failure_rate({"total": 20, "ok": 19, "failed": 1, "skipped": 0}) == 0.05
    assert not exceeds({"total": 20, "ok": 19, "failed": 1, "skipped": 0}, 0.05)  # equal is within
    assert exceeds({"total": 20, "ok": 18, "failed": 2, "skipped": 0}, 0.05)


def test_render_report_escapes_user_text_and_is_well_formed() -> None:
    evil = '<script>alert("x")</script>'
    records = [
        ok_record("r", "ok-1", 0, prompt=f"vase {evil}"),
        failed_record(1, f"id {evil}", "mesh_no_faces", f"bad mesh & {evil}"),
        failed_record(2, "plain", "empty_field", "empty field 'prompt'"),
        AssetRecord(run_id="r", asset_id="old", key="old", status="skipped", row_index=3,
                    error_code="already_committed", shard="run=nightly-2026-11-24/shards/shard-00000-abcdef01.tar"),
    ]
    summary = {"run_id": "nightly-2026-11-25", "counts": {"total": 4, "ok": 1, "failed": 2, "skipped": 1},
               "failures_by_reason": {"empty_field": 1, "mesh_no_faces": 1},
               "skipped_by_reason": {"already_committed": 1}, "gpu_hours": 0.5, "assets_per_hour": 12.0,
               "assets_per_gpu_hour": 2.0, "wall_seconds": 300.0, "started_at": 0.0, "finished_at": 300.0,
               "extra": {"manifest": f"/catalog/{evil}"}}
    thumbs = [Thumbnail(f"ok-1 {evil}", f"vase {evil}", make_thumbnail(png((255, 0, 0))))]
    page = render_report(summary, records, thumbs, threshold=0.05, title="castex nightly 2026-11-25")

    assert "<script" not in page.lower()  # every user string escaped, even in attributes
    parsed = parse_page(page)
    assert parsed.doctype and not parsed.errors, parsed.errors
    assert "script" not in parsed.tags
    assert evil in parsed.text  # shown, as text
    assert counts_of(parsed) == {"total": 4, "ok": 1, "failed": 2, "skipped": 1}
    failures = table_after(parsed, ["row", "asset_id", "error code", "message"])
    assert failures == [["1", f"id {evil}", "mesh_no_faces", f"bad mesh & {evil}"],
                        ["2", "plain", "empty_field", "empty field 'prompt'"]]
    assert table_after(parsed, ["error code", "rows"]) == [["empty_field", "1"], ["mesh_no_faces", "1"]]
    assert table_after(parsed, ["bundle already in run", "rows"]) == [["nightly-2026-11-24", "1"]]
    assert "FAILED: failure rate 66.7% (2 of 3 processed rows) exceeds the threshold 5.0%" in parsed.text
    phases = table_after(parsed, ["phase (ok assets, seconds)", "mean", "median", "max", "n"])
    assert [row[0] for row in phases] == ["fetch", "stage_1"]
    (img,) = parsed.images
    assert img["alt"] == f"ok-1 {evil}"
    assert img["src"].startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))) as im:
        assert im.format == "JPEG" and im.size == (96, 48)  # already inside the box: not enlarged

    passed = parse_page(render_report(summary, records, [], threshold=0.9))
    assert "passed: failure rate 66.7%" in passed.text and not passed.images


def test_failure_table_is_capped_but_counts_are_not() -> None:
    records = [failed_record(i, f"a{i}", "mesh_no_faces", "no faces") for i in range(30)]
    summary = {"run_id": "r", "counts": {"total": 30, "ok": 0, "failed": 30, "skipped": 0}}
    parsed = parse_page(render_report(summary, records, [], max_failure_rows=10))
    assert len(table_after(parsed, ["row", "asset_id", "error code", "message"])) == 10
    assert "20 more failed rows are in the run's index." in parsed.text
    assert table_after(parsed, ["error code", "rows"]) == [["mesh_no_faces", "30"]]
    assert "Failures (30)" in parsed.text


def test_thumbnails_come_from_the_shards_capped_in_manifest_order(tmp_path: Path, caplog) -> None:
    storage = Storage(str(tmp_path / "out"))
    fake_run(storage, "r1", 3)
    records = [AssetRecord.from_dict(r) for r in read_index(storage, run_ids=["r1"]).to_pylist()]
    thumbs = collect_thumbnails(storage, records, limit=2, box=(48, 48))
    assert [t.asset_id for t in thumbs] == ["asset-0", "asset-1"]
    for t, color in zip(thumbs, [(0, 100, 200), (40, 100, 200)], strict=True):
        with Image.open(io.BytesIO(t.jpeg)) as im:
            assert im.size == (48, 24)  # 96x48 fitted into 48x48, aspect kept
            r, g, b = im.getpixel((10, 10))
            assert abs(r - color[0]) < 8 and abs(g - color[1]) < 8 and abs(b - color[2]) < 8
    # A shard that vanished costs its thumbnails and a warning, not the report.
    broken = [r.with_(shard="run=r1/shards/missing.tar") if r.asset_id == "asset-0" else r for r in records]
    assert [t.asset_id for t in collect_thumbnails(storage, broken, limit=5)] == ["asset-1", "asset-2"]
    assert "no thumbnails from run=r1/shards/missing.tar" in caplog.text


def test_write_report_is_a_self_contained_page_next_to_the_summary(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "out"))
    fake_run(storage, "r1", 3, [failed_record(3, "bad<1>", "mesh_no_faces", "no faces")])
    rel = write_report(storage, "r1", threshold=0.05, info={"date": "2026-11-25"}, max_thumbnails=2)
    assert rel == "run=r1/report.html" == report_path("r1")
    page = (tmp_path / "out" / rel).read_text("utf-8")
    parsed = parse_page(page)
    assert not parsed.errors and counts_of(parsed) == {"total": 4, "ok": 3, "failed": 1, "skipped": 0}
    assert len(parsed.images) == 2 and all(i["src"].startswith("data:") for i in parsed.images)
    assert "src=\"run=" not in page and "href" not in page  # nothing to resolve outside the file
    assert "bad<1>" in parsed.text and "bad<1>" not in page
    assert "s3://bucket/catalog/*.parquet" in parsed.text
    assert not list((tmp_path / "out" / "run=r1").glob("*.tmp-*"))


# ---------------------------------------------------------------------------------------------
# attempt policy and arguments (no Ray)


def test_arguments_are_validated() -> None:
    parser = nightly.build_parser()
    args = parser.parse_args(["--catalog", "c", "--out", "o", "--date", "2026-02-28"])
    assert args.date == dt.date(2026, 2, 28) and args.fail_threshold == 0.05 and not args.rerun
    for bad in (["--date", "2026-2-28"], ["--date", "2026-02-30"], ["--fail-threshold", "1.5"],
                ["--fail-threshold", "lots"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["--catalog", "c", "--out", "o", *bad])
        assert exc.value.code == 2
    assert nightly.attempt_run_id(DAY1, 1) == "nightly-2026-11-24"
    assert nightly.attempt_run_id(DAY1, 3) == "nightly-2026-11-24.3"

    from jobs.cli import build_parser

    cli_args = build_parser().parse_args(["nightly", "--catalog", "c", "--out", "o", "--actors", "2"])
    assert cli_args.command == "nightly" and cli_args.actors == 2 and cli_args.date is None


def test_attempt_policy(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "out"))
    assert nightly.plan_nightly(storage, DAY2) == nightly.Plan("run", "nightly-2026-11-25")
    fake_run(storage, "nightly-2026-11-24", 1)  # another date does not count
    fake_run(storage, "20261125T010000Z-abcdef", 1)  # nor a `castex run`

    fake_run(storage, "nightly-2026-11-25", 1, complete=False)  # crashed
    assert nightly.plan_nightly(storage, DAY2) == nightly.Plan("run", "nightly-2026-11-25.2",
                                                               ("nightly-2026-11-25",))
    fake_run(storage, "nightly-2026-11-25.2", 1)  # the resume finished, but its report did not get written
    assert nightly.plan_nightly(storage, DAY2) == nightly.Plan("report", "nightly-2026-11-25.2")

    storage.write_atomic(report_path("nightly-2026-11-25.2"), b"<html></html>")
    with pytest.raises(nightly.AlreadyCompleteError) as exc:
        nightly.plan_nightly(storage, DAY2)
    assert "already completed as run 'nightly-2026-11-25.2'" in str(exc.value) and "--rerun" in str(exc.value)
    assert nightly.plan_nightly(storage, DAY2, rerun=True) == nightly.Plan("run", "nightly-2026-11-25.3",
                                                                           ("nightly-2026-11-25",))


def test_flush_packs_what_a_crashed_attempt_staged(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "out"))
    commit_asset(storage, ok_record("nightly-2026-11-25", "a", 0), files_for((1, 2, 3)))
    assert committed_content_keys(storage)[ck_of(0)].staged
    assert nightly.flush_crashed(storage, ("nightly-2026-11-25",)) == 1
    where = committed_content_keys(storage)[ck_of(0)]
    assert not where.staged and where.shard.startswith("run=nightly-2026-11-25/shards/")
    assert not storage.exists(success_path("nightly-2026-11-25"))  # a crashed attempt stays incomplete
    assert nightly.flush_crashed(storage, ("nightly-2026-11-25",)) == 0  # idempotent


def test_refused_rerun_exits_2_and_missing_report_is_written(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    storage = Storage(str(out))
    fake_run(storage, "nightly-2026-11-25", 2, [failed_record(2, "bad", "mesh_no_faces", "no faces")])
    argv = ["--catalog", str(tmp_path / "never-read"), "--out", str(out), "--date", "2026-11-25"]

    # Complete but no report: the report is written and judged, nothing runs (no Ray here).
    assert nightly.main([*argv, "--fail-threshold", "0.5"]) == 0
    assert (out / report_path("nightly-2026-11-25")).is_file()
    assert "report file://" in capsys.readouterr().out
    (out / report_path("nightly-2026-11-25")).unlink()
    assert nightly.main(argv) == 3  # 1 of 3 processed rows failed > 5%
    err = capsys.readouterr().err
    assert "nightly 2026-11-25 FAILED: failure rate 33.3% (1 of 3 processed rows) exceeds --fail-threshold 5.0%" in err

    assert nightly.main(argv) == 2  # complete with its report: refused
    err = capsys.readouterr().err
    assert err.startswith("error [nightly_complete]: the nightly of 2026-11-25 already completed") and "--rerun" in err
    assert len(err.strip().splitlines()) == 1


def test_unreadable_catalog_exits_2_before_any_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code = nightly.main(["--catalog", str(tmp_path / "no-catalog"), "--out", str(out), "--date", "2026-11-25",
                         "--models", str(ROOT / "models")])
    assert code == 2
    assert capsys.readouterr().err.startswith("error [manifest_invalid]: no Parquet files found")
    assert not (out / "run=nightly-2026-11-25").exists()


def test_on_s3_plan_flush_report_and_refusal(s3, capsys) -> None:  # noqa: F811
    out = s3.uri("textures")
    storage = Storage(out, s3.storage_options)
    commit_asset(storage, ok_record("nightly-2026-11-25", "staged", 7), files_for((9, 9, 9)))  # crashed attempt
    fake_run(storage, "nightly-2026-11-24", 2)
    plan = nightly.plan_nightly(storage, DAY2)
    assert plan == nightly.Plan("run", "nightly-2026-11-25.2", ("nightly-2026-11-25",))
    assert nightly.flush_crashed(storage, plan.crashed) == 1
    assert committed_content_keys(storage)[ck_of(7)].shard.startswith("run=nightly-2026-11-25/shards/")

    argv = ["--catalog", s3.uri("catalog"), "--out", out, "--date", "2026-11-24",
            "--storage-options", json.dumps(s3.storage_options)]
    assert nightly.main(argv) == 0  # complete without a report: only the report is written
    captured = capsys.readouterr()
    assert f"report {out}/run=nightly-2026-11-24/report.html" in captured.out
    parsed = parse_page(storage.read_bytes(report_path("nightly-2026-11-24")).decode("utf-8"))
    assert not parsed.errors and len(parsed.images) == 2
    assert nightly.main(argv) == 2
    captured = capsys.readouterr()
    assert "error [nightly_complete]" in captured.err
    assert SECRET_KEY not in captured.out + captured.err


# ---------------------------------------------------------------------------------------------
# incremental nights on local Ray (slow)


@pytest.fixture(scope="module")
def meshes(tmp_path_factory) -> dict[str, str]:
    from core.examples import write_example_mesh

    d = tmp_path_factory.mktemp("meshes")
    paths = {name: str(write_example_mesh(name, d / f"{name}.obj")) for name in ("vase", "box", "torus", "sphere")}
    bad = d / "points.ply"
    trimesh.PointCloud([[0, 0, 0], [1, 0, 0], [0, 1, 0]]).export(bad)
    paths["points"] = str(bad)
    return paths


def write_catalog(path: Path, rows: list[tuple[str, str, str]]) -> str:
    """(asset_id, mesh path, prompt) rows with the FAST options, as a one-file Parquet catalog."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"asset_id": [r[0] for r in rows], "mesh_uri": [r[1] for r in rows],
                             "prompt": [r[2] for r in rows], "options": [FAST] * len(rows)}), path)
    return str(path.parent)  # a catalog directory, as a nightly export would be


def run_nightly(catalog: str, out: Path, date: dt.date, models_root: str, tmp: Path, *extra: str) -> int:
    return nightly.main(["--catalog", catalog, "--out", str(out), "--date", date.isoformat(), "--models", models_root,
                         "--device", "cpu", "--rasterizer", "torch", "--actors", "1",
                         "--cache-dir", str(tmp / "cache"), *extra])


def index_of(out: Path, run_id: str) -> list[dict]:
    return read_index(str(out), run_ids=[run_id]).to_pylist()


def report_of(out: Path, run_id: str) -> ParsedPage:
    parsed = parse_page((out / report_path(run_id)).read_text("utf-8"))
    assert parsed.doctype and not parsed.errors, parsed.errors
    return parsed


def shard_keys(out: Path, run_id: str) -> set[str]:
    keys: set[str] = set()
    for shard in (out / f"run={run_id}" / "shards").glob("*.tar"):
        with tarfile.open(shard) as tar:
            keys.update(name.split(".", 1)[0] for name in tar.getnames())
    return keys


@pytest.mark.slow
def test_fault_c_day_two_textures_only_new_and_changed_rows(ray_local, models_root, meshes, tmp_path, capsys):
    out = tmp_path / "out"
    day1_rows = [("vase-1", meshes["vase"], "a red vase"), ("box-1", meshes["box"], "a wooden crate"),
                 ("torus-1", meshes["torus"], "a golden ring")]
    assert run_nightly(write_catalog(tmp_path / "day1" / "part-0.parquet", day1_rows), out, DAY1, models_root,
                       tmp_path) == 0
    day1 = index_of(out, "nightly-2026-11-24")
    assert sorted(r["asset_id"] for r in day1) == ["box-1", "torus-1", "vase-1"]
    assert all(r["status"] == "ok" for r in day1)
    page1 = report_of(out, "nightly-2026-11-24")
    assert counts_of(page1) == {"total": 3, "ok": 3, "failed": 0, "skipped": 0}
    assert len(page1.images) == 3
    assert "nightly 2026-11-24 (run nightly-2026-11-24): 3 ok, 0 failed, 0 skipped of 3 rows" in capsys.readouterr().out

    # Day 2: box-1's prompt changed, two rows are new; the other two are unchanged.
    day2_rows = [day1_rows[0], ("box-1", meshes["box"], "a steel crate"), day1_rows[2],
                 ("vase-2", meshes["vase"], "a blue vase"), ("sphere-2", meshes["sphere"], "a marble ball")]
    assert run_nightly(write_catalog(tmp_path / "day2" / "part-0.parquet", day2_rows), out, DAY2, models_root,
                       tmp_path) == 0
    day2 = index_of(out, "nightly-2026-11-25")
    assert sorted(r["row_index"] for r in day2) == list(range(5))  # each row exactly once
    assert sorted(r["asset_id"] for r in day2) == sorted(r[0] for r in day2_rows)
    status = {r["asset_id"]: r for r in day2}
    assert {a for a, r in status.items() if r["status"] == "ok"} == {"box-1", "vase-2", "sphere-2"}
    day1_shards = {r["asset_id"]: r["shard"] for r in day1}
    for asset_id in ("vase-1", "torus-1"):
        r = status[asset_id]
        assert (r["status"], r["error_code"]) == ("skipped", "already_committed"), r
        assert r["shard"] == day1_shards[asset_id] and r["shard"].startswith("run=nightly-2026-11-24/shards/")
        assert r["content_key"] == next(d["content_key"] for d in day1 if d["asset_id"] == asset_id)
    assert status["box-1"]["prompt"] == "a steel crate"
    assert status["box-1"]["content_key"] != next(d["content_key"] for d in day1 if d["asset_id"] == "box-1")
    assert shard_keys(out, "nightly-2026-11-25") == {"box-1", "vase-2", "sphere-2"}  # nothing re-textured

    summary = json.loads((out / "run=nightly-2026-11-25" / "summary.json").read_text())
    assert summary["counts"] == {"total": 5, "ok": 3, "failed": 0, "skipped": 2}
    page2 = report_of(out, "nightly-2026-11-25")
    assert counts_of(page2) == summary["counts"]
    assert {i["alt"] for i in page2.images} == {"box-1", "vase-2", "sphere-2"}
    assert table_after(page2, ["bundle already in run", "rows"]) == [["nightly-2026-11-24", "2"]]
    assert "passed: failure rate 0.0%" in page2.text

    # The same night again is refused, without touching the run.
    before = sorted(p.name for p in (out / "run=nightly-2026-11-25").rglob("*"))
    assert run_nightly(write_catalog(tmp_path / "day2" / "part-0.parquet", day2_rows), out, DAY2, models_root,
                       tmp_path) == 2
    assert sorted(p.name for p in (out / "run=nightly-2026-11-25").rglob("*")) == before


@pytest.mark.slow
def test_failure_threshold_sets_the_exit_code(ray_local, models_root, meshes, tmp_path, capsys):
    out = tmp_path / "out"
    catalog = write_catalog(tmp_path / "cat" / "part-0.parquet", [
        ("good", meshes["sphere"], "a jade ball"),
        ("points-1", meshes["points"], "a broken thing"),
        ("points-2", meshes["points"], "another broken thing"),
        ("blank", meshes["box"], "   "),
    ])
    # 3 of 4 rows fail: within a 0.8 threshold...
    assert run_nightly(catalog, out, DAY1, models_root, tmp_path, "--fail-threshold", "0.8") == 0
    assert "FAILED" not in capsys.readouterr().err
    first = {r["asset_id"]: (r["status"], r["error_code"]) for r in index_of(out, "nightly-2026-11-24")}
    assert first == {"good": ("ok", None), "points-1": ("failed", "mesh_no_faces"),
                     "points-2": ("failed", "mesh_no_faces"), "blank": ("failed", "empty_field")}

    # ... and a deliberate re-run (attempt .2) retries the failures, skips `good`: 3 of 3 fail > 5%.
    assert run_nightly(catalog, out, DAY1, models_root, tmp_path, "--rerun") == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("nightly 2026-11-24 FAILED: failure rate 100.0% (3 of 3 processed rows) "
                              "exceeds --fail-threshold 5.0%; see file://")
    page = report_of(out, "nightly-2026-11-24.2")
    assert counts_of(page) == {"total": 4, "ok": 0, "failed": 3, "skipped": 1}
    assert sorted(row[1] for row in table_after(page, ["row", "asset_id", "error code", "message"])) == \
        ["blank", "points-1", "points-2"]
    assert not page.images


@pytest.mark.slow
def test_crashed_nightly_is_resumed_not_duplicated(ray_local, models_root, meshes, tmp_path, monkeypatch):
    out = tmp_path / "out"
    catalog = write_catalog(tmp_path / "cat" / "part-0.parquet", [
        ("torus-9", meshes["torus"], "a copper ring"), ("vase-9", meshes["vase"], "a glass vase")])

    real_pack = ShardPacker.pack

    def crash_on_final_pack(self, final=False):
        if final:
            raise RuntimeError("driver killed before the final pack")
        return real_pack(self, final)

    monkeypatch.setattr(ShardPacker, "pack", crash_on_final_pack)
    with pytest.raises(RuntimeError, match="driver killed"):
        run_nightly(catalog, out, DAY2, models_root, tmp_path)
    monkeypatch.setattr(ShardPacker, "pack", real_pack)
    staged = sorted(p.name for p in (out / "run=nightly-2026-11-25" / "staging").glob("*.tar"))
    assert len(staged) == 2 and not (out / success_path("nightly-2026-11-25")).exists()

    assert run_nightly(catalog, out, DAY2, models_root, tmp_path) == 0
    resumed = index_of(out, "nightly-2026-11-25.2")
    assert sorted(r["asset_id"] for r in resumed) == ["torus-9", "vase-9"]
    for r in resumed:
        assert (r["status"], r["error_code"]) == ("skipped", "already_committed"), r
        assert r["shard"].startswith("run=nightly-2026-11-25/shards/")  # the crashed attempt's, now packed
    assert not shard_keys(out, "nightly-2026-11-25.2")  # nothing textured twice
    assert shard_keys(out, "nightly-2026-11-25") == {"torus-9", "vase-9"}
    assert not list((out / "run=nightly-2026-11-25" / "staging").glob("*.tar"))
    page = report_of(out, "nightly-2026-11-25.2")
    assert counts_of(page) == {"total": 2, "ok": 0, "failed": 0, "skipped": 2}
    assert ["resumes crashed attempt(s)", "nightly-2026-11-25"] in table_after(page, ["", ""])
    assert table_after(page, ["bundle already in run", "rows"]) == [["nightly-2026-11-25", "2"]]

