#!/usr/bin/env bash
# What one task costs the controller, per host: the floor under any no-change run of site.yml.
#
#   tests/bench/deploy/floor.sh          as root, from the repository root: N = 10 hosts
#   tests/bench/deploy/floor.sh 4        another host count (1 to 50)
#
# Starts N plain containers from gpufleet-base:bookworm (no systemd: nothing runs in them but the
# modules), then times four playbooks of 40 tasks each with the benchmark's settings (pipelining,
# community.docker.docker, forks from ansible.cfg): no task at all, `debug` (the controller only),
# a task skipped by `when`, and `ping` (one module run on the host, the cheapest there is). The
# controller CPU of each, minus the empty play's, divided by 40 x N, is what one task of that
# kind costs per host. Writes tests/bench/deploy/FLOOR.md; docs/deploy-speed.md reads it.
set -euo pipefail
{
# shellcheck source=tests/bench/deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$BENCH_ROOT"
cd "$ROOT"
WORK="$GPUFLEET_CACHE/bench-floor"
LABEL=gpufleet.bench=floor
N="${1:-10}"
TASKS=40
OUT="$ROOT/tests/bench/deploy/FLOOR.md"

die() { printf 'tests/bench/deploy/floor.sh: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (it starts Docker containers)"
[[ "$N" =~ ^[1-9][0-9]?$ ]] && [ "$N" -le 50 ] || die "the host count is a whole number from 1 to 50, not '$N'"
[ -x "$VENV/bin/ansible-playbook" ] || die "no $VENV: run tests/run setup first"
export PATH="$VENV/bin:$PATH" ANSIBLE_HOME="$GPUFLEET_CACHE/ansible-home"
export ANSIBLE_PIPELINING=True ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1

remove_hosts() { remove_labelled_hosts "$LABEL"; }
trap remove_hosts EXIT
take_heavy_lock

rm -rf "$WORK" && mkdir -p "$WORK"
remove_hosts
for i in $(seq -w 1 "$N"); do
  docker run -d --name "gpufleet-floor-$i" --label "$LABEL" --entrypoint sleep gpufleet-base:bookworm infinity >/dev/null
done
{
  echo "all:"
  echo "  vars: {ansible_connection: community.docker.docker, ansible_python_interpreter: /usr/bin/python3}"
  echo "  hosts:"
  for i in $(seq -w 1 "$N"); do echo "    gpufleet-floor-$i: {}"; done
} >"$WORK/hosts.yml"
playbook() { # name, task body (indented 6), optional when
  {
    echo "- name: $1"
    echo "  hosts: all"
    echo "  gather_facts: false"
    echo "  tasks:"
    if [ "$1" != empty ]; then
      for t in $(seq "$TASKS"); do
        printf '    - name: %s %d\n%s\n' "$1" "$t" "$2"
        [ -z "${3:-}" ] || printf '      when: %s\n' "$3"
      done
    fi
    [ "$1" != empty ] || echo "    []"
  } >"$WORK/$1.yml"
}
playbook empty ""
playbook controller '      ansible.builtin.debug:
        msg: x'
playbook skipped '      ansible.builtin.ping:' false
playbook module '      ansible.builtin.ping:'

# ansible-playbook in this Python process, which prints at exit its own CPU-seconds (the main
# process: the strategy that queues every task for every host and reads every result, one after
# the other) and its children's (the forks and their docker CLI calls).
RUSAGE='import atexit, resource, sys
def report():
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print("RUSAGE %.2f %.2f" % (own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime), file=sys.stderr)
atexit.register(report)
sys.argv[0] = "ansible-playbook"
from ansible.cli.playbook import main
main()'
declare -A CPU MAIN WALL
for p in empty controller skipped module; do
  t0="$(date +%s.%N)"
  "$VENV/bin/python" -c "$RUSAGE" -i "$WORK/hosts.yml" "$WORK/$p.yml" >"$WORK/$p.log" 2>&1 || { tail -20 "$WORK/$p.log"; die "$p failed"; }
  WALL[$p]="$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
  read -r MAIN[$p] kids < <(awk '/^RUSAGE / { print $2, $3 }' "$WORK/$p.log")
  CPU[$p]="$(awk -v a="${MAIN[$p]}" -v b="$kids" 'BEGIN { printf "%.2f", a + b }')"
  echo "$p: ${WALL[$p]} s, controller ${CPU[$p]} CPU-s (main process ${MAIN[$p]})"
done
per() { awk -v c="$2" -v e="$3" -v n="$N" -v t="$TASKS" 'BEGIN { printf "%.3f", (c - e) / (n * t) }'; }
row() { echo "| $2 | ${WALL[$1]} | ${CPU[$1]} | ${MAIN[$1]} | $(per "$1" "${CPU[$1]}" "${CPU[empty]}") | $(per "$1" "${MAIN[$1]}" "${MAIN[empty]}") |"; }
{
  echo "# What a task costs the controller, per host"
  echo
  echo "Written by \`tests/bench/deploy/floor.sh $N\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD);"
  echo "$(nproc) cores, load average at the end $(cut -d' ' -f1-3 /proc/loadavg), $(ansible --version | head -1 | tr -d '[]'),"
  echo "$N hosts, $TASKS tasks per playbook, pipelining on, connection community.docker.docker. docs/deploy-speed.md reads it."
  echo
  echo "| playbook | wall (s) | controller CPU-s | of it, main process | controller CPU-s per task and host | of it, main process |"
  echo "|---|---:|---:|---:|---:|---:|"
  echo "| no tasks (start-up, inventory, play) | ${WALL[empty]} | ${CPU[empty]} | ${MAIN[empty]} | | |"
  row controller '`debug` (controller only)'
  row skipped '`ping` skipped by `when`'
  row module '`ping` (one module run on the host)'
  echo
  echo "Per task and host: (CPU-s of the playbook - CPU-s of the empty one) / ($TASKS tasks x $N hosts)."
  echo "The main process is one Python process: its share cannot spread over more cores."
} >"$OUT"
cat "$OUT"
}
