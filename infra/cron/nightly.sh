#!/usr/bin/env bash
# Submit tonight's castex run to a standing Ray cluster and wait for it (cron wrapper).
#
# Why a wrapper instead of a bare `ray job submit` in the crontab: it gives the Ray job a
# per-day submission id, so a second start on the same day (cron retry, a manual run while the
# night's job is still going) attaches to that job's log instead of submitting a duplicate; it
# holds a lock so overlapping starts on this host wait; and it keeps credentials out of the
# crontab (the Ray token is read from a file, not passed on a command line).
#
# Settings come from the environment, optionally from CASTEX_NIGHTLY_ENV (default
# /etc/castex/nightly.env, shell `KEY=value` lines):
#   RAY_ADDRESS            job API of the head, e.g. http://castex-head-svc:8265 (required)
#   CASTEX_CATALOG         catalog glob, e.g. s3://castex-data/catalog/*.parquet (required)
#   CASTEX_OUT             output root, e.g. s3://castex-data/nightly (required)
#   CASTEX_PRESET          default preset of rows that name none (default castex-xl-l)
#   CASTEX_FAIL_THRESHOLD  failed-row fraction that fails the night (optional)
#   CASTEX_ACTORS          texture actors (optional; default one per GPU)
#   CASTEX_CACHE_DIR       prompt-embedding cache on storage every node mounts (optional)
#   CASTEX_STORAGE_OPTIONS fsspec options as JSON (optional; never logged)
#   CASTEX_WORKING_DIR     code uploaded with the job (default: the checkout holding this script)
#   RAY_AUTH_TOKEN_PATH    file with the cluster's Ray token (token auth; Ray reads it itself)
#   CASTEX_NIGHTLY_DATE    day the submission id is derived from (default: today, UTC)
# Exit status: that of the Ray job (0 ok), 2 for a configuration error.
set -euo pipefail

ENV_FILE="${CASTEX_NIGHTLY_ENV:-/etc/castex/nightly.env}"
if [[ -r "$ENV_FILE" ]]; then
    set -a
    # shellcheck source=/dev/null
    . "$ENV_FILE"
    set +a
fi

die() { printf 'nightly.sh: %s\n' "$*" >&2; exit 2; }

[[ -n "${RAY_ADDRESS:-}" ]] || die "RAY_ADDRESS is not set (job API of the head, e.g. http://castex-head-svc:8265)"
[[ -n "${CASTEX_CATALOG:-}" ]] || die "CASTEX_CATALOG is not set (catalog glob)"
[[ -n "${CASTEX_OUT:-}" ]] || die "CASTEX_OUT is not set (output root)"
if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    [[ -r "$RAY_AUTH_TOKEN_PATH" ]] || die "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is not readable"
    export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
working_dir="${CASTEX_WORKING_DIR:-$(cd "$here/../.." && pwd)}"
day="${CASTEX_NIGHTLY_DATE:-$(date -u +%Y-%m-%d)}"
submission_id="castex-nightly-$day"

entrypoint=(python -m jobs.nightly --catalog "$CASTEX_CATALOG" --out "$CASTEX_OUT"
            --preset "${CASTEX_PRESET:-castex-xl-l}")
[[ -n "${CASTEX_FAIL_THRESHOLD:-}" ]] && entrypoint+=(--fail-threshold "$CASTEX_FAIL_THRESHOLD")
[[ -n "${CASTEX_ACTORS:-}" ]] && entrypoint+=(--actors "$CASTEX_ACTORS")
[[ -n "${CASTEX_CACHE_DIR:-}" ]] && entrypoint+=(--cache-dir "$CASTEX_CACHE_DIR")
[[ -n "${CASTEX_STORAGE_OPTIONS:-}" ]] && entrypoint+=(--storage-options "$CASTEX_STORAGE_OPTIONS")

lock_dir="${XDG_RUNTIME_DIR:-/tmp}"
exec 9> "$lock_dir/castex-nightly.lock"
flock 9

if ray job status --address "$RAY_ADDRESS" "$submission_id" > /dev/null 2>&1; then
    echo "nightly.sh: $submission_id already submitted; following its log"
    ray job logs --address "$RAY_ADDRESS" --follow "$submission_id"
    # `logs --follow` ends when the job does; report the job's own outcome.
    status="$(ray job status --address "$RAY_ADDRESS" "$submission_id" 2>&1 || true)"
    [[ "${status,,}" == *succeeded* ]] && exit 0
    echo "nightly.sh: $submission_id did not succeed: $status" >&2
    exit 1
fi

echo "nightly.sh: submitting $submission_id to $RAY_ADDRESS (working dir $working_dir)"
exec ray job submit --address "$RAY_ADDRESS" --submission-id "$submission_id" \
    --working-dir "$working_dir" -- "${entrypoint[@]}"
