#!/usr/bin/env bash
# Edge benchmark (issue #15, not part of tests/run): nginx least_conn vs nginx -> vllm-router
# (--enable-igw, each policy of --policies), side by side in one run.
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
"$ROOT/tests/engine.sh" >/dev/null
docker image inspect "$IMAGE" >/dev/null 2>&1 || "$ROOT/tests/fixtures/build_images.sh"
command -v nginx >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
}
if [ ! -x "$VENV/bin/vllm-router" ] || ! "$VENV/bin/python" -c 'import jinja2' 2>/dev/null; then
  rm -rf "$VENV" && python3 -m venv "$VENV"
  # jinja2 renders the loadbalancer role's router-session.conf.j2 for the router edges' nginx
  "$VENV/bin/pip" install -q vllm-router==0.1.17 aiohttp orjson uvloop jinja2
fi
export PATH="$VENV/bin:$PATH"
exec "$VENV/bin/python" "$HERE/bench.py" --command "tests/bench/edge/run.sh${*:+ $*}" "$@"
