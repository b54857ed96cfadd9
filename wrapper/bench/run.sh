#!/usr/bin/env bash
# Gateway benchmark (not part of ci/test.sh): direct vs vllm-wrapper vs LiteLLM
# proxy against the local streaming simulator. Reuses ci/test.sh's venv for the
# wrapper/load generator and keeps LiteLLM in its own venv (its pins differ).
#   wrapper/bench/run.sh [run.py options]   e.g. --concurrency 1,32,256 --duration 10 --soak 600
set -euo pipefail
WRAPPER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${GPUFLEET_CACHE:-/var/cache/gpufleet}
VENV=$CACHE/wrapper-venv
LITELLM_VENV=$CACHE/litellm-venv
LITELLM_SPEC=${LITELLM_SPEC:-litellm[proxy]==1.108.7}
if [[ ! -x $VENV/bin/python ]]; then
  echo "run wrapper/ci/test.sh once first (it creates $VENV)" >&2
  exit 1
fi
if [[ ! -x $LITELLM_VENV/bin/litellm ]]; then
  python3 -m venv "$LITELLM_VENV"
  "$LITELLM_VENV/bin/pip" install -q "$LITELLM_SPEC"
fi
# LiteLLM must not fetch its model price map from the internet.
export LITELLM_LOCAL_MODEL_COST_MAP=True GPUFLEET_CACHE="$CACHE"
exec "$VENV/bin/python" "$WRAPPER_DIR/bench/run.py" "$@"
