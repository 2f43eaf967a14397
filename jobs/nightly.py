"""`castex nightly`: the scheduled incremental run over the catalog, with a report and a verdict.

    python -m jobs.nightly --catalog s3://bucket/catalog/*.parquet --out s3://bucket/textures \\
        [--date 2026-11-25] [--fail-threshold 0.05] [--rerun] [castex run options]

It is `castex run` with a dated run id and a judgement. Every catalog row whose content key
(mesh bytes, prompts, preset, seed, models, pipeline version) is already committed under OUT by
any earlier run is `skipped` and points at that run's bundle, so a night only textures new or
changed rows. Afterwards it writes `OUT/run=<id>/report.html` (see `pipeline.report`) next to
the run's summary.json and exits non-zero when too many of the rows it worked on failed.

Run ids and attempts (policy). A date's first attempt is `nightly-YYYY-MM-DD`; later attempts
are `nightly-YYYY-MM-DD.2`, `.3`, ... Starting a date:
* nothing for that date under OUT: attempt 1;
* only attempts without `_SUCCESS` (they crashed, or were killed): first their staged assets are
  packed into their own shards + index (the same `ShardPacker` pass a run ends with), then the
  next attempt starts and finds everything they finished already committed, so it *resumes*:
  nothing is textured twice, and the new attempt's index holds every catalog row exactly once
  (rows finished by the crashed attempt as `skipped` rows pointing at its shards). The run id is
  not reused because the driver writes a run's pre-GPU records once per attempt; reusing it would
  index those rows twice;
* an attempt with `_SUCCESS`: refused (exit 2, one line naming the run and its report), because
  a scheduler retrying a finished night should not start work nobody asked for. `--rerun`
  starts the next attempt on purpose (it re-tries the failed rows and skips the rest). If that
  attempt finished but its report is missing (crash between `_SUCCESS` and the report), the
  report is written and the verdict returned, without running anything.
One nightly per date at a time: two concurrent attempts of a date would both pack the same
crashed attempt (let the scheduler forbid overlap, e.g. a CronJob's `concurrencyPolicy: Forbid`).

Exit codes: 0 run complete and failure rate within the threshold; 3 failure rate above it
(failed / (total - skipped): skipped rows cost nothing and do not dilute it); 2 usage or
configuration errors and refused re-runs (as `castex run`); 1 bugs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.storage import Storage

log = logging.getLogger("castex.nightly")

NIGHTLY_PREFIX = "nightly-"
DEFAULT_FAIL_THRESHOLD = 0.05
EXIT_THRESHOLD = 3
_ATTEMPT = re.compile(r"nightly-(?P<date>\d{4}-\d{2}-\d{2})(?:\.(?P<n>[1-9]\d*))?")


class AlreadyCompleteError(ConfigError):
    """The date already has a complete nightly and `--rerun` was not given."""

    code = "nightly_complete"


# -- arguments ---------------------------------------------------------------------------------


def parse_date(text: str) -> dt.date:
    """`YYYY-MM-DD` exactly (argparse type): the run id embeds it, so no other spelling."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text or ""):
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}")
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid date {text!r}: {exc}") from None


def parse_fraction(text: str) -> float:
    """A failure-rate threshold in [0, 1] (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.05, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"the threshold is a fraction in [0, 1], got {value:g}")
    return value


def add_nightly_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `castex nightly`: the catalog, the date and the verdict, plus every
    `castex run` option except `--manifest` and `--run-id` (derived here)."""
    from jobs.run import add_execution_arguments
    from pipeline.report import MAX_THUMBNAILS

    p.add_argument("--catalog", required=True,
                   help="Parquet catalog: file, directory or glob (local, s3://, gs://)")
    add_execution_arguments(p)
    p.add_argument("--date", type=parse_date, default=None,
                   help="night to run, YYYY-MM-DD (default: today in UTC); run id nightly-<date>")
    p.add_argument("--fail-threshold", type=parse_fraction, default=DEFAULT_FAIL_THRESHOLD,
                   help=f"exit {EXIT_THRESHOLD} when failed / (total - skipped) exceeds this fraction "
                        f"(default {DEFAULT_FAIL_THRESHOLD})")
    p.add_argument("--rerun", action="store_true",
                   help="the date already has a complete nightly: start its next attempt anyway")
    p.add_argument("--max-thumbnails", type=int, default=MAX_THUMBNAILS,
                   help=f"preview thumbnails embedded in report.html (default {MAX_THUMBNAILS})")


# -- attempts ----------------------------------------------------------------------------------


def attempt_run_id(date: dt.date, number: int) -> str:
    """`nightly-<date>` for attempt 1, `nightly-<date>.<n>` after that."""
    base = f"{NIGHTLY_PREFIX}{date.isoformat()}"
    return base if number == 1 else f"{base}.{number}"


@dataclass(frozen=True)
class Attempt:
    run_id: str
    number: int
    complete: bool


@dataclass(frozen=True)
class Plan:
    """What to do for a date: `run` attempt `run_id` after flushing `crashed` attempts, or only
    write the missing `report` of the complete attempt `run_id`."""

    action: str
    run_id: str
    crashed: tuple[str, ...] = ()


def find_attempts(storage: Storage, date: dt.date) -> list[Attempt]:
    """The date's attempts under OUT, by number."""
    from pipeline.index import is_complete, list_runs

    found = []
    for run_id in list_runs(storage):
        m = _ATTEMPT.fullmatch(run_id)
        if m and m.group("date") == date.isoformat():
            found.append(Attempt(run_id, int(m.group("n") or 1), is_complete(storage, run_id)))
    return sorted(found, key=lambda a: a.number)


def plan_nightly(storage: Storage, date: dt.date, *, rerun: bool = False) -> Plan:
    """Apply the attempt policy of the module doc; raises `AlreadyCompleteError` to refuse."""
    from pipeline.report import report_path

    attempts = find_attempts(storage, date)
    done = [a for a in attempts if a.complete]
    next_id = attempt_run_id(date, max((a.number for a in attempts), default=0) + 1)
    if done and not rerun:
        last = done[-1].run_id
        if not storage.exists(report_path(last)):
            return Plan("report", last)
        raise AlreadyCompleteError(
            f"the nightly of {date.isoformat()} already completed as run {last!r} (report: "
            f"{storage.url(report_path(last))}); pass --rerun to start {next_id!r}, which re-tries "
            f"its failed rows and skips everything already committed")
    return Plan("run", next_id, tuple(a.run_id for a in attempts if not a.complete))


def flush_crashed(storage: Storage, run_ids: tuple[str, ...]) -> int:
    """Pack what crashed attempts committed but never packed into their own shards + index, so
    the next attempt skips it and its `skipped` rows point at shards, not at staging debris.
    Returns how many assets were packed."""
    from pipeline.shards import ShardPacker

    packed = 0
    for run_id in run_ids:
        report = ShardPacker(storage, run_id).pack(final=True)
        packed += report.packed
        log.info("nightly: crashed attempt %s: packed %d staged asset(s), %d failed record(s)", run_id,
                 report.packed, report.failed)
    return packed


# -- the run -----------------------------------------------------------------------------------


def verdict(date: dt.date, summary: dict, threshold: float, report_url: str) -> int:
    """Exit code from the failure rate; prints one line to stderr when the night failed."""
    from pipeline.report import exceeds, failure_rate

    counts = summary["counts"]
    if not exceeds(counts, threshold):
        return 0
    processed = counts["total"] - counts["skipped"]
    print(f"nightly {date.isoformat()} FAILED: failure rate {failure_rate(counts):.1%} "
          f"({counts['failed']} of {processed} processed rows) exceeds --fail-threshold {threshold:.1%}; "
          f"see {report_url}", file=sys.stderr)
    return EXIT_THRESHOLD


def nightly_from_args(args: argparse.Namespace) -> int:
    """Plan the date's attempt, run it (or only its missing report), write the report, judge.
    Raises CastexError on user errors."""
    from jobs.run import parse_storage_options, run_manifest
    from pipeline.layout import summary_path
    from pipeline.report import write_report
    from pipeline.storage import Storage

    date = args.date or dt.datetime.now(dt.timezone.utc).date()
    storage = Storage(args.out, parse_storage_options(args.storage_options))
    plan = plan_nightly(storage, date, rerun=args.rerun)
    info = {"date": date.isoformat(), "attempt": plan.run_id}
    if plan.action == "report":
        log.info("nightly %s: run %s is complete but has no report; writing it", date, plan.run_id)
        summary = json.loads(storage.read_bytes(summary_path(plan.run_id)))
    else:
        if plan.crashed:
            flush_crashed(storage, plan.crashed)
            info["resumes crashed attempt(s)"] = ", ".join(plan.crashed)
        log.info("nightly %s: run %s", date, plan.run_id)
        run_args = argparse.Namespace(**vars(args))
        run_args.manifest, run_args.run_id = args.catalog, plan.run_id
        summary = run_manifest(run_args)
    info["fail threshold"] = f"{args.fail_threshold:.1%}"
    rel = write_report(storage, plan.run_id, threshold=args.fail_threshold, info=info,
                       title=f"castex nightly {date.isoformat()}", max_thumbnails=args.max_thumbnails)
    url = storage.url(rel)
    c = summary["counts"]
    print(f"nightly {date.isoformat()} (run {plan.run_id}): {c['ok']} ok, {c['failed']} failed, "
          f"{c['skipped']} skipped of {c['total']} rows; report {url}")
    return verdict(date, summary, args.fail_threshold, url)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="castex nightly",
                                     description="Incremental nightly run over a catalog, with a report.")
    add_nightly_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from jobs.run import exit_code

    return exit_code(nightly_from_args, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
