#!/usr/bin/env bash
# Edge benchmark (issue #15, not part of tests/run): nginx least_conn vs nginx -> vllm-router
# (--enable-igw --policy cache_aware), side by side in one run.
#   1. cache locality: three vLLM-on-CPU containers (tests/fixtures/vllm-cpu) with prefix caching
#   2. overhead: three wrapper/bench/simulator.py upstreams, 32 concurrent clients
# Run it under the heavy lock: flock /tmp/gpufleet-heavy.lock tests/bench/edge/run.sh [bench.py options]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
CACHE=${GPUFLEET_CACHE:-/var/cache/gpufleet}
VENV=$CACHE/edge-bench-venv
IMAGE=gpufleet-test/vllm-cpu:0.32.0

[ "$(id -u)" = 0 ] || { echo "run as root (Docker)" >&2; exit 1; }
docker image inspect "$IMAGE" >/dev/null 2>&1 || "$ROOT/tests/fixtures/build_images.sh"
command -v nginx >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
}
if [ ! -x "$VENV/bin/vllm-router" ]; then
  rm -rf "$VENV" && python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q vllm-router==0.1.17 aiohttp orjson uvloop
fi
export PATH="$VENV/bin:$PATH"
exec "$VENV/bin/python" "$HERE/bench.py" --command "tests/bench/edge/run.sh${*:+ $*}" "$@"
