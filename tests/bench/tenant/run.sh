#!/usr/bin/env bash
# What the tenant controls (issue #16) add to a request through vllm-wrapper: without vs with them, side by
# side in one run (about 4 minutes; bench.py --help for the knobs). Not part of tests/run.
#   flock /tmp/gpufleet-heavy.lock tests/bench/tenant/run.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
VENV=${GPUFLEET_CACHE:-/var/cache/gpufleet}/wrapper-venv
[[ -x $VENV/bin/python ]] || { echo "run wrapper/ci/test.sh once first (it creates $VENV)" >&2; exit 1; }
exec "$VENV/bin/python" "$ROOT/tests/bench/tenant/bench.py" "$@"
