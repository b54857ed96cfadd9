#!/usr/bin/env bash
# Time to put a model on 1, 3 and 5 hosts: each from the (fixture) hub, against the model store fetching it once
# and the hosts copying it from there (issue #17); side by side in one run. bench.py --help for the knobs.
# Needs Docker and the base image of tests/run setup. Not part of tests/run.
#   flock /tmp/gpufleet-heavy.lock tests/bench/models/run.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
exec python3 "$ROOT/tests/bench/models/bench.py" "$@"
