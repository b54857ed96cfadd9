# Shared by the benchmarks in this directory (sourced, not run): the repository root, the cache,
# the heavy-run lock and the removal of a benchmark's test hosts (Docker containers with a label).
BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
export GPUFLEET_CACHE="${GPUFLEET_CACHE:-/var/cache/gpufleet}"
VENV="$GPUFLEET_CACHE/venv"
LOCK="${GPUFLEET_HEAVY_LOCK-/tmp/gpufleet-heavy.lock}"

# Removes the containers labelled $1; with a second argument, names them first.
remove_labelled_hosts() {
  local ids
  ids="$(docker ps -aq --filter "label=$1" 2>/dev/null || true)"
  [ -z "$ids" ] && return 0
  # shellcheck disable=SC2086 # one id a word
  [ -z "${2:-}" ] || echo "removing test hosts: $(docker inspect -f '{{.Name}}' $ids | tr -d / | tr '\n' ' ')"
  # shellcheck disable=SC2086 # one id a word
  docker rm -f -v $ids >/dev/null
}

# Holds the shared lock for heavy runs on fd 9 until the script exits (LOCK empty: no lock).
take_heavy_lock() {
  [ -n "$LOCK" ] || return 0
  exec 9>>"$LOCK"
  if ! flock -n 9; then
    echo "waiting for $LOCK (another heavy run holds it)"
    flock 9
  fi
}
