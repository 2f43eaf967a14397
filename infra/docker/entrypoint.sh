#!/usr/bin/env bash
# castex container entrypoint.
#
#   castex-entrypoint fetch-weights      make sure the DeepFloyd IF weights are on the models volume
#   castex-entrypoint CMD [ARGS...]      run CMD (after fetch-weights when CASTEX_FETCH_WEIGHTS=1)
#
# Why this exists: the IF weights are gated on the Hugging Face Hub and large (tens of GB), so they
# live on a volume (CASTEX_MODELS, default /models) as a Hub cache (HF_HOME=$CASTEX_MODELS/hf).
# The presets name Hub ids (DeepFloyd/IF-I-XL-v1.0, ...); with the cache filled and
# HF_HUB_OFFLINE=1 the Ray processes resolve those ids from the volume and never need a token.
# Only this step sees HF_TOKEN (on Kubernetes: an init container fed from a Secret), and it
# passes the token to `hf` through the environment, never on a command line.
#
# A repo counts as present when its marker file exists, or when its cached snapshot has the
# subfolders and safetensors the loaders need (a volume seeded by hand); otherwise it is
# downloaded when HF_TOKEN is set, and the step fails (exit 3) when it is not.
# KubeRay replaces the image entrypoint with its own `ray start` command, so Ray pods never run
# this script unless a manifest calls it explicitly.
set -euo pipefail

MODELS_ROOT="${CASTEX_MODELS:-/models}"
export HF_HOME="${HF_HOME:-$MODELS_ROOT/hf}"
HUB_CACHE="${HF_HUB_CACHE:-$HF_HOME/hub}"
MARKER_DIR="$MODELS_ROOT/.castex-weights"
HF_BIN="${CASTEX_HF_BIN:-hf}"

# Whitespace-separated lists; read into arrays without glob expansion.
read -r -a REPOS <<< "${CASTEX_HF_REPOS:-DeepFloyd/IF-I-XL-v1.0 DeepFloyd/IF-II-L-v1.0}"
read -r -a INCLUDES <<< "${CASTEX_HF_INCLUDE:-model_index.json scheduler/* unet/* text_encoder/* tokenizer/* image_noising_scheduler/*}"
# The loaders read the default (non-variant) safetensors: skip the .bin and fp16 duplicates.
read -r -a EXCLUDES <<< "${CASTEX_HF_EXCLUDE:-*.bin *.msgpack *.h5 *.onnx* *.ckpt *.fp16*}"

log() { printf 'castex-entrypoint: %s\n' "$*" >&2; }

marker_for() { printf '%s/%s.done' "$MARKER_DIR" "${1//\//--}"; }

# The snapshot directory the Hub cache holds for `main` of a repo ("" when there is none).
snapshot_dir() {
    local repo_dir="$HUB_CACHE/models--${1//\//--}"
    [[ -f "$repo_dir/refs/main" ]] || return 0
    local rev
    rev="$(<"$repo_dir/refs/main")"
    [[ -d "$repo_dir/snapshots/$rev" ]] && printf '%s' "$repo_dir/snapshots/$rev"
    return 0
}

# A snapshot is usable when it has a UNet (config + safetensors) and scheduler, and every
# text encoder it has comes with safetensors (stage II repos have none).
snapshot_ok() {
    local snap="$1"
    [[ -n "$snap" && -f "$snap/unet/config.json" && -d "$snap/scheduler" ]] || return 1
    compgen -G "$snap/unet/*.safetensors" > /dev/null || return 1
    if [[ -d "$snap/text_encoder" ]]; then
        compgen -G "$snap/text_encoder/*.safetensors" > /dev/null || return 1
        [[ -d "$snap/tokenizer" ]] || return 1
    fi
    return 0
}

download() {
    local repo="$1" pattern
    local args=(download "$repo")
    for pattern in "${INCLUDES[@]}"; do args+=(--include "$pattern"); done
    for pattern in "${EXCLUDES[@]}"; do args+=(--exclude "$pattern"); done
    log "downloading $repo into $HUB_CACHE"
    # HF_HUB_OFFLINE may be set for the Ray processes; this one step must reach the Hub.
    HF_HUB_OFFLINE=0 "$HF_BIN" "${args[@]}" > /dev/null
}

all_marked() {
    local repo
    for repo in "${REPOS[@]}"; do [[ -f "$(marker_for "$repo")" ]] || return 1; done
    return 0
}

fetch_weights() {
    if all_marked; then
        log "weights present: ${REPOS[*]}"
        return 0  # fast path that writes nothing: works on a read-only volume
    fi
    mkdir -p "$MARKER_DIR" "$HUB_CACHE"
    # Several pods share one volume: one downloads, the others wait and then find the markers.
    exec 9> "$MARKER_DIR/.lock"
    flock 9
    local repo missing=()
    for repo in "${REPOS[@]}"; do
        if [[ -f "$(marker_for "$repo")" ]]; then
            continue
        fi
        if ! snapshot_ok "$(snapshot_dir "$repo")"; then
            if [[ -z "${HF_TOKEN:-}" ]]; then
                missing+=("$repo")
                continue
            fi
            download "$repo"
            if ! snapshot_ok "$(snapshot_dir "$repo")"; then
                log "$repo: downloaded, but the snapshot lacks unet/scheduler/text-encoder safetensors"
                exit 4
            fi
        fi
        date -u +%Y-%m-%dT%H:%M:%SZ > "$(marker_for "$repo")"
        log "$repo: ready"
    done
    flock -u 9
    if (( ${#missing[@]} )); then
        log "missing weights for ${missing[*]} under $HUB_CACHE and no HF_TOKEN to download them" \
            "(accept the DeepFloyd licence on the Hub, then provide HF_TOKEN, or seed the volume)"
        exit 3
    fi
}

main() {
    if [[ "${1:-}" == "fetch-weights" ]]; then
        fetch_weights
        return 0
    fi
    if [[ "${CASTEX_FETCH_WEIGHTS:-0}" == "1" ]]; then
        fetch_weights
    fi
    if (( $# == 0 )); then
        set -- castex --help
    fi
    exec "$@"
}

main "$@"
