"""The run report: one self-contained HTML page, `OUT/run=<id>/report.html`, next to summary.json.

Why one file with everything inlined: the nightly report is opened from an object-store
console or a mail attachment, where relative links into shards do not resolve. Thumbnails are
therefore small JPEG `data:` URIs (capped, so the page stays a few MB at most on catalogs of
any size), and the style sheet is inline.

Why escape everything: asset ids, prompts and error messages are user input (a prompt may well
contain `<script>`). Every value goes through `html.escape` on the way into the page, text and
attributes alike; messages are already redacted when they reach the index.

The page is built from the run's own index (`read_records`) and its `summary.json`; reading
previews is best effort: an unreadable shard costs its thumbnails and a warning, never the
report. `render_report` is pure (no storage), which is what the unit tests exercise.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
import statistics
import tarfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.index import read_records
from pipeline.layout import run_dir, summary_path
from pipeline.records import STATUS_FAILED, STATUS_OK, STATUS_SKIPPED, AssetRecord
from pipeline.storage import Storage

log = logging.getLogger("castex.report")

REPORT_NAME = "report.html"
MAX_THUMBNAILS = 64
THUMB_BOX = (256, 128)  # previews are grids of turntable views: wider than tall
MAX_FAILURE_ROWS = 500  # the index has them all; the page stays readable
PREVIEW_EXT = "preview.png"
_RUN_OF_SHARD = re.compile(r"run=(?P<run>[^/]+)/")
# What the page shows; skipping the rest (options, losses, model ids...) keeps big indexes cheap.
REPORT_COLUMNS = ("run_id", "row_index", "asset_id", "key", "status", "error_code", "error", "prompt", "shard",
                  "members", "timings", "gpu_seconds")


def report_path(run_id: str) -> str:
    """`run=<id>/report.html`, relative to the output root."""
    return f"{run_dir(run_id)}/{REPORT_NAME}"


# -- numbers -----------------------------------------------------------------------------------


def failure_rate(counts: Mapping[str, int]) -> float:
    """failed / (total - skipped): the share of rows this run actually worked on that failed.

    Skipped rows cost nothing and cannot fail, so they must not dilute the rate (a nightly that
    skips 99% of its catalog and fails every new row is broken, not at 1%). 0.0 when the run
    worked on nothing.
    """
    processed = int(counts.get("total", 0)) - int(counts.get(STATUS_SKIPPED, 0))
    return int(counts.get(STATUS_FAILED, 0)) / processed if processed > 0 else 0.0


def exceeds(counts: Mapping[str, int], threshold: float) -> bool:
    """True when the failure rate is strictly above `threshold` (a fraction in [0, 1])."""
    return failure_rate(counts) > threshold


def timing_stats(records: Iterable[AssetRecord]) -> list[tuple[str, float, float, float, int]]:
    """(phase, mean, median, max, n) of the per-asset timings of ok rows, phases in the order
    the actors report them (first appearance)."""
    values: dict[str, list[float]] = {}
    for r in records:
        if r.status != STATUS_OK:
            continue
        for name, v in (r.timings or {}).items():
            if v is not None:
                values.setdefault(name, []).append(float(v))
    return [(name, statistics.fmean(v), statistics.median(v), max(v), len(v)) for name, v in values.items()]


# -- thumbnails --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thumbnail:
    """A downscaled preview of one ok asset, ready to inline."""

    asset_id: str
    prompt: str
    jpeg: bytes

    def data_uri(self) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode("ascii")


def make_thumbnail(png: bytes, box: tuple[int, int] = THUMB_BOX, quality: int = 80) -> bytes:
    """JPEG of an image fitted into `box` (aspect kept). JPEG because previews are rendered
    photos on a plain background: a fraction of the PNG's size, and size is what a 64-image
    single-file page is limited by."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        img = img.convert("RGB")
        img.thumbnail(box)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def _preview_member(record: AssetRecord) -> str | None:
    name = f"{record.key}.{PREVIEW_EXT}"
    return name if record.shard and name in (record.members or []) else None


def collect_thumbnails(storage: Storage, records: Sequence[AssetRecord], *, limit: int = MAX_THUMBNAILS,
                       box: tuple[int, int] = THUMB_BOX) -> list[Thumbnail]:
    """Thumbnails of the first `limit` ok assets (manifest order) that have a preview member.

    Each shard is opened once and only the wanted members are read (on object stores, ranged
    reads of those members). Failures are logged and skipped: a missing picture must not cost
    the report.
    """
    wanted = [r for r in sorted(records, key=lambda r: (r.row_index is None, r.row_index or 0, r.key or ""))
              if r.status == STATUS_OK and _preview_member(r)][:max(limit, 0)]
    by_shard: dict[str, list[AssetRecord]] = {}
    for r in wanted:
        by_shard.setdefault(r.shard or "", []).append(r)
    found: dict[int, Thumbnail] = {}
    for shard, recs in by_shard.items():
        try:
            with storage.open_read(shard) as f, tarfile.open(fileobj=f, mode="r:") as tar:
                for r in recs:
                    member = tar.extractfile(_preview_member(r) or "")
                    if member is None:
                        continue
                    found[id(r)] = Thumbnail(r.asset_id or r.key or "?", r.prompt or "",
                                             make_thumbnail(member.read(), box))
        except Exception as exc:  # noqa: BLE001 - best effort, see module doc
            log.warning("report: no thumbnails from %s (%s: %s)", shard, type(exc).__name__, exc)
    return [found[id(r)] for r in wanted if id(r) in found]


# -- HTML --------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{padding:.6em 1em;font-weight:bold}
.pass{background:#e3f5e1}.fail{background:#fbe0e0}
.thumbs{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:260px}figcaption{font-size:.8em;overflow-wrap:anywhere}
"""


def _e(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, fmt: str = "{:.3g}") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return fmt.format(value)
    return str(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _skip_sources(records: Iterable[AssetRecord]) -> Counter[str]:
    """How many skipped rows point at each earlier run (from their `shard` path)."""
    sources: Counter[str] = Counter()
    for r in records:
        if r.status == STATUS_SKIPPED:
            m = _RUN_OF_SHARD.match(r.shard or "")
            sources[m.group("run") if m else "?"] += 1
    return sources


def render_report(summary: Mapping[str, Any], records: Sequence[AssetRecord], thumbnails: Sequence[Thumbnail], *,
                  threshold: float | None = None, title: str | None = None,
                  info: Mapping[str, Any] | None = None, max_failure_rows: int = MAX_FAILURE_ROWS) -> str:
    """The report page as a string (pure: no I/O).

    `summary` is the run's summary.json, `records` its index rows, `info` extra key/value lines
    (date, catalog...). With `threshold`, the page opens with the pass/fail verdict the nightly
    exit code is based on.
    """
    run_id = summary.get("run_id", "?")
    counts = dict(summary.get("counts") or {})
    title = title or f"castex run {run_id}"
    parts = [f"<h1>{_e(title)}</h1>"]

    if threshold is not None:
        rate = failure_rate(counts)
        processed = counts.get("total", 0) - counts.get(STATUS_SKIPPED, 0)
        bad = exceeds(counts, threshold)
        word = "FAILED" if bad else "passed"
        parts.append(f'<p class="verdict {"fail" if bad else "pass"}">{_e(word)}: failure rate {rate:.1%} '
                     f'({_e(counts.get(STATUS_FAILED, 0))} of {_e(processed)} processed rows) '
                     f'{"exceeds" if bad else "is within"} the threshold {threshold:.1%}</p>')

    lines = {"run id": run_id, **(dict(info or {}))}
    extra = summary.get("extra") or {}
    for name in ("manifest", "preset", "pipeline_version"):
        if name in extra and name not in lines:
            lines[name] = extra[name]
    for name in ("started_at", "finished_at"):
        if summary.get(name):
            lines[name.replace("_", " ")] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(summary[name]))
    parts.append(_table(["", ""], lines.items()))

    parts.append("<h2>Counts</h2>")
    parts.append(_table(["total", "ok", "failed", "skipped"],
                        [[counts.get("total", 0), counts.get(STATUS_OK, 0), counts.get(STATUS_FAILED, 0),
                          counts.get(STATUS_SKIPPED, 0)]], numeric=range(4)))

    parts.append("<h2>Timings</h2>")
    parts.append(_table(["measure", "value"], [
        ["wall seconds", _num(summary.get("wall_seconds"), "{:.1f}")],
        ["GPU-hours (actor-hours on CPU runs)", _num(summary.get("gpu_hours"), "{:.4f}")],
        ["ok assets per wall-clock hour", _num(summary.get("assets_per_hour"), "{:.1f}")],
        ["ok assets per GPU-hour", _num(summary.get("assets_per_gpu_hour"), "{:.1f}")],
    ], numeric=[1]))
    stats = timing_stats(records)
    if stats:
        parts.append(_table(["phase (ok assets, seconds)", "mean", "median", "max", "n"],
                            [[n, f"{a:.2f}", f"{m:.2f}", f"{x:.2f}", c] for n, a, m, x, c in stats],
                            numeric=[1, 2, 3, 4]))

    failed = sorted((r for r in records if r.status == STATUS_FAILED),
                    key=lambda r: (r.row_index is None, r.row_index or 0))
    parts.append(f"<h2>Failures ({len(failed)})</h2>")
    by_reason = summary.get("failures_by_reason") or Counter(r.error_code or "unknown" for r in failed)
    if by_reason:
        parts.append(_table(["error code", "rows"], sorted(dict(by_reason).items()), numeric=[1]))
        parts.append(_table(["row", "asset_id", "error code", "message"],
                            [[r.row_index, r.asset_id, r.error_code, r.error] for r in failed[:max_failure_rows]],
                            numeric=[0]))
        if len(failed) > max_failure_rows:
            parts.append(f"<p>{len(failed) - max_failure_rows} more failed rows are in the run's index.</p>")

    skips = summary.get("skipped_by_reason") or {}
    if skips:
        parts.append(f"<h2>Skipped ({counts.get(STATUS_SKIPPED, 0)})</h2>")
        parts.append(_table(["reason", "rows"], sorted(skips.items()), numeric=[1]))
        parts.append(_table(["bundle already in run", "rows"], sorted(_skip_sources(records).items()), numeric=[1]))

    ok_total = counts.get(STATUS_OK, 0)
    parts.append(f"<h2>Previews ({len(thumbnails)} of {ok_total} ok assets)</h2>")
    figures = [f'<figure><img src="{t.data_uri()}" alt="{_e(t.asset_id)}">'
               f"<figcaption><b>{_e(t.asset_id)}</b><br>{_e(t.prompt)}</figcaption></figure>" for t in thumbnails]
    parts.append(f'<div class="thumbs">{"".join(figures)}</div>')

    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title><style>{_CSS}</style></head>'
            f"<body>{''.join(parts)}</body></html>\n")


def write_report(storage: Storage, run_id: str, *, threshold: float | None = None,
                 info: Mapping[str, Any] | None = None, title: str | None = None,
                 max_thumbnails: int = MAX_THUMBNAILS) -> str:
    """Build the report of a finished run from its summary.json and index, and write it
    atomically to `run=<id>/report.html`; returns that relative path."""
    summary = json.loads(storage.read_bytes(summary_path(run_id)))
    records = read_records(storage, run_ids=[run_id], columns=REPORT_COLUMNS)
    thumbs = collect_thumbnails(storage, records, limit=max_thumbnails)
    page = render_report(summary, records, thumbs, threshold=threshold, info=info, title=title)
    rel = report_path(run_id)
    storage.write_atomic(rel, page.encode("utf-8"))
    return rel


__all__ = ["MAX_THUMBNAILS", "REPORT_NAME", "Thumbnail", "collect_thumbnails", "exceeds", "failure_rate",
           "make_thumbnail", "render_report", "report_path", "timing_stats", "write_report"]
