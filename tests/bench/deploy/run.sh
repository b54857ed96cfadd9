#!/usr/bin/env bash
# Deploy speed benchmark (issue #6): how long site.yml takes on 1, 5 and 10 test hosts, for the
# first converge and for a no-change re-run, with pipelining and fact caching on.
#
#   tests/bench/deploy/run.sh            as root, from the repository root: N = 1 5 10
#   tests/bench/deploy/run.sh 1 3        other host counts (1 to 99)
#
# For each N: start N systemd test hosts (Docker containers gpufleet-bench-NN from
# gpufleet-base:bookworm, with the fullstack Molecule scenario's container settings), write an
# inventory (group gpu_servers, community.docker.docker connection, the local demo host's settings
# from inventories/local/group_vars/gpu_servers.yml with the vLLM image swapped for the benchmark
# fixture tests/fixtures/vllm-sim), time `ansible-playbook site.yml` twice, require changed=0 on
# every host in the second run, remove the hosts. Prints a markdown table and writes it, with notes
# on the machine and the run, to tests/bench/deploy/RESULTS.md. docs/deploy-speed.md explains it.
#
# It takes the shared lock for heavy runs itself (do not wrap it in flock: that would wait for
# itself). Environment: GPUFLEET_CACHE (default /var/cache/gpufleet: the test venv that tests/run
# sets up, image archives, and this benchmark's work directory bench-deploy/ with the inventory,
# fact cache and the log of every ansible-playbook run); GPUFLEET_HEAVY_LOCK (default
# /tmp/gpufleet-heavy.lock; empty: no lock); BENCH_KEEP_HOSTS=1 keeps the hosts of the last N
# running afterwards, with the inventory, to look into a run (remove them with
# `docker rm -f -v $(docker ps -aq --filter label=gpufleet.bench=deploy)`).
set -euo pipefail
# Braces: bash reads the whole script before it runs any of it (safe to edit during a run).
{
# shellcheck source=tests/bench/deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$BENCH_ROOT"
cd "$ROOT"
WORK="$GPUFLEET_CACHE/bench-deploy"
INVENTORY="$WORK/inventory"
LABEL=gpufleet.bench=deploy
RESULTS="$ROOT/tests/bench/deploy/RESULTS.md"
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1 5 10)
COMMAND="tests/bench/deploy/run.sh ${COUNTS[*]}"

die() { printf 'tests/bench/deploy/run.sh: %s\n' "$*" >&2; exit 1; }
log() { printf '\n=== %s ===\n' "$*"; }
now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
host() { printf 'gpufleet-bench-%02d' "$1"; }
free_gb() { df -BG --output=avail /var/lib/docker | tail -1 | tr -dc 0-9; }

[ "$(id -u)" = 0 ] || die "run as root (it starts Docker containers)"
for n in "${COUNTS[@]}"; do
  [[ "$n" =~ ^[1-9][0-9]?$ ]] || die "host counts are whole numbers from 1 to 99, not '$n'"
done

# The test hosts carry the label; they go on any exit, including an error or Ctrl-C.
remove_hosts() { remove_labelled_hosts "$LABEL" say; }
keep_or_remove_hosts() { [ "${BENCH_KEEP_HOSTS:-}" = 1 ] && [ "${DONE:-}" = 1 ] || remove_hosts; }
trap keep_or_remove_hosts EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

take_heavy_lock

# --- setup: what tests/run sets up (Docker engine, base images, test venv, collection link) ---
log setup
mkdir -p "$WORK"
setup_done() {
  [ -x "$VENV/bin/ansible-playbook" ] &&
    [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" = "$(sha256sum tests/requirements.txt | cut -d' ' -f1)" ] &&
    [ -f .cache/collections/ansible_collections/gpufleet/vllm/galaxy.yml ]
}
if ! setup_done; then
  # tests/run has no setup-only stage: its setup runs before any stage, yamllint is the cheapest.
  echo "setting up with tests/run (setup, then its yamllint stage; log: $WORK/setup.log)"
  tests/run yamllint >"$WORK/setup.log" 2>&1 || true
  setup_done || { tail -30 "$WORK/setup.log"; die "tests/run did not set up $VENV"; }
fi
tests/engine.sh
tests/images.sh
tests/fixtures/vllm-sim/build.sh
export PATH="$VENV/bin:$PATH"
remove_hosts

# Pipelining: ansible.cfg sets it under [ssh_connection], which only the ssh connection reads;
# community.docker.docker supports pipelining but takes the global setting ([defaults] or
# [connection] pipelining, or ANSIBLE_PIPELINING). Fact caching: ansible.cfg's jsonfile cache with
# gathering=smart, in a directory of this benchmark's own (emptied before each first converge).
export ANSIBLE_PIPELINING=True
export ANSIBLE_CACHE_PLUGIN_CONNECTION="$WORK/facts"
export ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1 PY_COLORS=0
PLAYBOOK="ansible-playbook site.yml -i $INVENTORY"
CONFIG="$(ansible-config dump --only-changed 2>/dev/null | grep -E '^(ANSIBLE_PIPELINING|CACHE_PLUGIN|CACHE_PLUGIN_CONNECTION|CACHE_PLUGIN_TIMEOUT|DEFAULT_GATHERING|DEFAULT_FORKS)\(' || true)"
echo "$CONFIG"
grep -q '^ANSIBLE_PIPELINING(env: ANSIBLE_PIPELINING) = True' <<<"$CONFIG" || die "pipelining is not on"
grep -q '^CACHE_PLUGIN(.*) = jsonfile' <<<"$CONFIG" || die "fact caching (jsonfile) is not on: is ansible.cfg read?"

write_inventory() {
  local n="$1" i
  rm -rf "$INVENTORY"
  mkdir -p "$INVENTORY/group_vars/gpu_servers"
  # Files of a group_vars directory load in name order: the local demo host's settings, then the
  # benchmark's image swap.
  ln -s "$ROOT/inventories/local/group_vars/gpu_servers.yml" "$INVENTORY/group_vars/gpu_servers/00-local.yml"
  ln -s "$ROOT/tests/bench/deploy/group_vars.yml" "$INVENTORY/group_vars/gpu_servers/10-bench.yml"
  {
    echo "# Written by tests/bench/deploy/run.sh for $n test host(s)."
    echo "all:"
    echo "  children:"
    echo "    gpu_servers:"
    echo "      vars:"
    echo "        ansible_connection: community.docker.docker"
    echo "        ansible_python_interpreter: /usr/bin/python3"
    echo "        nvidia_driver_enabled: false"
    echo "        nvidia_container_toolkit_enabled: false"
    echo "      hosts:"
    for i in $(seq "$n"); do echo "        $(host "$i"): {}"; done
  } >"$INVENTORY/hosts.yml"
}

start_hosts() {
  local n="$1" i state
  for i in $(seq "$n"); do
    # The fullstack Molecule scenario's platform settings (as ./deploy's demo host uses them).
    docker run -d --name "$(host "$i")" --hostname "$(host "$i")" --label "$LABEL" \
      --cap-add SYS_ADMIN --cap-add NET_ADMIN \
      --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
      --cgroupns host -v /sys/fs/cgroup:/sys/fs/cgroup:rw -v /var/lib/docker \
      --tmpfs /run --tmpfs /run/lock -e container=docker --stop-signal SIGRTMIN+3 \
      gpufleet-base:bookworm /lib/systemd/systemd >/dev/null
  done
  # systemd answers once its bus is up (a second or two), then waits for the boot to finish.
  for i in $(seq "$n"); do
    for _ in $(seq 120); do
      state="$(timeout 120 docker exec "$(host "$i")" systemctl is-system-running --wait 2>/dev/null || true)"
      [[ "$state" == running || "$state" == degraded ]] && break
      sleep 1
    done
    [[ "$state" == running || "$state" == degraded ]] || die "$(host "$i") did not boot (systemd: '${state:-no answer}')"
  done
  echo "$n test host(s) up: $(host 1)..$(host "$n")"
}

# CPU accounting of a run, in CPU-seconds: the machine's busy time (/proc/stat: all but idle and
# iowait), the test hosts' share (every process in them, their nested containers included: the
# cgroup v1 cpuacct tree of Docker's containers; "n/a" without it) and the controller's
# (ansible-playbook with its forks and the docker CLI calls of the connection: this shell's children).
CPUACCT=/sys/fs/cgroup/cpuacct/docker/cpuacct.usage
busy_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
hosts_ns() { if [ -r "$CPUACCT" ]; then cat "$CPUACCT"; else echo -1; fi; }
# Sets CHILDREN_CPU. `times` runs in this shell, not in a $(...) subshell: a subshell reports its
# own children only.
children_cpu() {
  times >"$WORK/times"
  CHILDREN_CPU="$(awk 'END { for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } printf "%.2f", t }' "$WORK/times")"
}

# Runs site.yml, logs to $1, sets ELAPSED and CPU_BUSY, CPU_HOSTS, CPU_CONTROLLER; fails loudly unless every one of $2 hosts is ok
# (and, with $3 = rerun, reports changed=0).
run_site() {
  local logfile="$1" n="$2" kind="$3" start rc bad busy0 hosts0 ctl0
  busy0="$(busy_jiffies)" hosts0="$(hosts_ns)"
  children_cpu
  ctl0="$CHILDREN_CPU"
  start="$(now)"
  set +e
  ${PIPELINING_OFF:+env ANSIBLE_PIPELINING=False} $PLAYBOOK >"$logfile" 2>&1
  rc=$?
  set -e
  ELAPSED="$(seconds "$start" "$(now)")"
  children_cpu
  CPU_BUSY="$(awk -v a="$busy0" -v b="$(busy_jiffies)" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (b - a) / hz }')"
  CPU_HOSTS="$(awk -v a="$hosts0" -v b="$(hosts_ns)" 'BEGIN { if (a < 0) print "n/a"; else printf "%.1f", (b - a) / 1e9 }')"
  CPU_CONTROLLER="$(awk -v a="$ctl0" -v b="$CHILDREN_CPU" 'BEGIN { printf "%.1f", b - a }')"
  bad="$(awk -v n="$n" -v kind="$kind" '
    /^PLAY RECAP/ { recap = 1; next }
    recap && /^gpufleet-bench-[0-9]+ +:/ {
      hosts++
      for (f = 3; f <= NF; f++) { split($f, kv, "="); v[kv[1]] = kv[2] }
      if (v["failed"] + 0 || v["unreachable"] + 0 || (kind == "rerun" && v["changed"] + 0))
        print $1 ": changed=" v["changed"] " unreachable=" v["unreachable"] " failed=" v["failed"]
    }
    END { if (hosts != n) print "the recap lists " hosts + 0 " of " n " hosts" }' "$logfile")"
  if [ "$rc" -ne 0 ] || [ -n "$bad" ]; then
    echo "FAILED: $kind on $n host(s) after ${ELAPSED}s (exit $rc); log: $logfile" >&2
    [ -n "$bad" ] && printf '  %s\n' "$bad" >&2
    if [ "$kind" = rerun ]; then
      echo "tasks that reported a change in the re-run:" >&2
      awk '/^TASK \[/ { task = $0 } /^changed: / { print "  " task " -> " $0 }' "$logfile" >&2
    fi
    grep -E '^(fatal|failed):|^ERROR' "$logfile" | head -20 >&2 || true
    exit 1
  fi
}

# The slowest tasks from the profile_tasks summary at the end of a log.
slowest() { awk '/^=====+/ { on = 1; next } on && / -+ [0-9.]+s$/' "$1" | head -"$2"; }

declare -A FIRST RERUN RERUN_NOPIPE DISK RERUN_GATHERED BUSY HOSTS_CPU CONTROLLER_CPU
MACHINE_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
FREE_BEFORE="$(free_gb)"
for n in "${COUNTS[@]}"; do
  log "$n test host(s)"
  [ "$(free_gb)" -ge $((n * 2 + 5)) ] || die "/var/lib/docker has $(free_gb) GB free; $n hosts need about $((n * 2 + 5)) GB"
  remove_hosts
  write_inventory "$n"
  start_hosts "$n"
  rm -rf "$WORK/facts"
  # Pipelining really applies to this connection: a module runs without a file transfer (PUT).
  ansible "$(host 1)" -i "$INVENTORY" -m ansible.builtin.ping -vvv >"$WORK/pipelining-check.log" 2>&1 ||
    { tail -20 "$WORK/pipelining-check.log"; die "ping of $(host 1) failed"; }
  if grep -q '^PUT ' "$WORK/pipelining-check.log"; then
    die "the module was copied to $(host 1) (no pipelining); see $WORK/pipelining-check.log"
  fi
  disk_before="$(free_gb)"

  echo "first converge: $PLAYBOOK"
  run_site "$WORK/first-$n.log" "$n" first
  FIRST[$n]="$ELAPSED"
  echo "first converge: ${ELAPSED}s"
  for i in $(seq "$n"); do
    # ansible-core 2.19 names the files s1_HOST (a format prefix); older releases HOST.
    compgen -G "$WORK/facts/*$(host "$i")" >/dev/null || die "no cached facts for $(host "$i") in $WORK/facts"
  done

  echo "no-change re-run: $PLAYBOOK"
  run_site "$WORK/rerun-$n.log" "$n" rerun
  RERUN[$n]="$ELAPSED" BUSY[$n]="$CPU_BUSY" HOSTS_CPU[$n]="$CPU_HOSTS" CONTROLLER_CPU[$n]="$CPU_CONTROLLER"
  grep -q '^TASK \[Gathering Facts\]' "$WORK/rerun-$n.log" && RERUN_GATHERED[$n]=yes || RERUN_GATHERED[$n]=no
  echo "no-change re-run: ${ELAPSED}s, changed=0 on all $n host(s); facts gathered again: ${RERUN_GATHERED[$n]}"
  echo "  CPU-seconds: machine $CPU_BUSY (test hosts $CPU_HOSTS, controller $CPU_CONTROLLER)"

  # For comparison: the same re-run without pipelining, which is what ansible.cfg alone gives
  # this connection (its pipelining setting is in [ssh_connection]).
  echo "no-change re-run, pipelining off: ANSIBLE_PIPELINING=False $PLAYBOOK"
  PIPELINING_OFF=1 run_site "$WORK/rerun-nopipelining-$n.log" "$n" rerun
  RERUN_NOPIPE[$n]="$ELAPSED"
  echo "no-change re-run, pipelining off: ${ELAPSED}s"
  DISK[$n]=$((disk_before - $(free_gb)))
  [ "${BENCH_KEEP_HOSTS:-}" = 1 ] && [ "$n" = "${COUNTS[-1]}" ] || remove_hosts
done
DONE=1

# --- the table ---
base="${COUNTS[0]}"
for n in "${COUNTS[@]}"; do [ "$n" = 1 ] && base=1; done
table() {
  printf '| test hosts | first converge (s) | no-change re-run (s) | re-run vs %s host(s) | for comparison: re-run, pipelining off (s) |\n' "$base"
  printf '|---:|---:|---:|---:|---:|\n'
  for n in "${COUNTS[@]}"; do
    printf '| %s | %s | %s | %s | %s |\n' "$n" "${FIRST[$n]}" "${RERUN[$n]}" \
      "$(awk -v a="${RERUN[$n]}" -v b="${RERUN[$base]}" 'BEGIN { printf "%.2fx", a / b }')" "${RERUN_NOPIPE[$n]}"
  done
}
# Where the CPU of each no-change re-run went. Both cores busy for the whole run means the run
# cannot be faster on this machine: its floor is the CPU work divided by the cores.
CORES="$(nproc)"
cpu_table() {
  printf '| test hosts | no-change re-run (s) | machine CPU-s | test hosts CPU-s | controller CPU-s | floor: machine CPU-s / %s cores (s) | re-run / floor | test hosts CPU-s per host |\n' "$CORES"
  printf '|---:|---:|---:|---:|---:|---:|---:|---:|\n'
  for n in "${COUNTS[@]}"; do
    awk -v n="$n" -v w="${RERUN[$n]}" -v b="${BUSY[$n]}" -v h="${HOSTS_CPU[$n]}" -v c="${CONTROLLER_CPU[$n]}" -v k="$CORES" 'BEGIN {
      printf "| %s | %s | %s | %s | %s | %.1f | %.2f | %s |\n", n, w, b, h, c, b / k, w / (b / k), (h == "n/a" ? "n/a" : sprintf("%.1f", h / n)) }'
  done
}
FLOOR=""
if [ -n "${RERUN[1]:-}" ] && [ -n "${RERUN[10]:-}" ]; then
  ratio="$(awk -v a="${RERUN[10]}" -v b="${RERUN[1]}" 'BEGIN { printf "%.2f", a / b }')"
  verdict="$(awk -v r="$ratio" 'BEGIN { print (r <= 1.5 ? "met" : "NOT met") }')"
  TARGET="Target (issue #6), no-change re-run on 10 hosts within 1.5x the re-run on 1 host: **$verdict** (${ratio}x)."
  if [ "${HOSTS_CPU[10]}" != n/a ]; then
    FLOOR="$(awk -v h="${HOSTS_CPU[10]}" -v k="$CORES" -v r1="${RERUN[1]}" 'BEGIN {
      printf "On this machine the 10-host re-run cannot take less than %.1f s: the CPU work inside the ten test hosts alone (%s CPU-s) divided by %d cores, with a controller that would cost nothing. The target, 1.5 x %s s, is %.1f s.", h / k, h, k, r1, 1.5 * r1 }')"
  fi
else
  TARGET="Target (issue #6), no-change re-run on 10 hosts within 1.5x the re-run on 1 host: not measured (needs N=1 and N=10)."
fi

log results
table
echo
cpu_table
echo
echo "$TARGET"
[ -n "$FLOOR" ] && echo "$FLOOR"
echo "command: $COMMAND   (each run: ANSIBLE_PIPELINING=True ANSIBLE_CACHE_PLUGIN_CONNECTION=$WORK/facts $PLAYBOOK)"

changed_tree="$(git status --short -- . ':!tests/bench/deploy' ':!tests/fixtures/vllm-sim' ':!docs/deploy-speed.md' ':!changelogs' 2>/dev/null || true)"
{
  echo "# Deploy speed benchmark: results"
  echo
  echo "Written by \`$COMMAND\` (as root, from the repository root) on $(date -u '+%Y-%m-%d %H:%M UTC'),"
  echo "commit $(git rev-parse --short HEAD)$([ -n "$changed_tree" ] && echo ' with uncommitted changes (listed below)')."
  echo "Run it again to replace this file; docs/deploy-speed.md says what is measured and how to read it."
  echo
  table
  echo
  echo "$TARGET"
  [ -n "$FLOOR" ] && echo "$FLOOR"
  echo
  echo "## Where the CPU of the no-change re-runs went"
  echo
  cpu_table
  echo
  echo "CPU-seconds during each run: the machine's busy time from \`/proc/stat\` (everything but idle and"
  echo "iowait), the test hosts' from the cgroup v1 \`cpuacct\` tree of Docker's containers (every process in"
  echo "them, nested containers included), the controller's as the benchmark shell's child CPU time"
  echo "(\`ansible-playbook\`, its forks and the \`docker exec\` client calls of the connection). The rest of"
  echo "the machine's time is mostly the Docker engine serving those \`docker exec\` calls. A run whose"
  echo "re-run / floor is near 1 kept both cores busy from start to end: no host waited on another."
  echo
  echo "## How it ran"
  echo
  echo "- For each N: N fresh systemd test hosts \`gpufleet-bench-01..NN\` (Docker containers from"
  echo "  \`gpufleet-base:bookworm\` with the fullstack Molecule scenario's settings), then"
  echo "  \`ANSIBLE_PIPELINING=True ANSIBLE_CACHE_PLUGIN_CONNECTION=<work>/facts ansible-playbook site.yml -i <inventory>\`"
  echo "  twice; the second run reported changed=0 on every host. The hosts were removed after each N."
  echo "- Inventory: group \`gpu_servers\`, connection \`community.docker.docker\`, the settings of"
  echo "  \`inventories/local/group_vars/gpu_servers.yml\` with \`tests/bench/deploy/group_vars.yml\` over them"
  echo "  (vLLM image: the benchmark fixture \`gpufleet-test/vllm-sim:0.32.0\`, loaded from an archive like the"
  echo "  local inventory's images; the wrapper image built on every host from \`wrapper/\`, pip from PyPI)."
  echo "- Settings in force (\`ansible-config dump --only-changed\`):"
  sed 's/^/  - `/; s/$/`/' <<<"$CONFIG"
  echo "- Pipelining: checked before each N with \`ansible -m ping -vvv\` on the first host: the module ran"
  echo "  without a file transfer. Fact caching: the re-run gathered facts again (cache not used):"
  echo "  $(for n in "${COUNTS[@]}"; do printf 'N=%s %s, ' "$n" "${RERUN_GATHERED[$n]}"; done | sed 's/, $//')."
  echo "- Disk the hosts took after both runs, GB: $(for n in "${COUNTS[@]}"; do printf 'N=%s %s, ' "$n" "${DISK[$n]}"; done | sed 's/, $//')."
  echo
  echo "## Machine"
  echo
  echo "- $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/^Mem:/ { print $2 }') GiB memory, $FREE_BEFORE GB free for Docker at the start"
  echo "- load average at the start: $MACHINE_LOAD (the machine is shared; other runs wait for the same lock)"
  echo "- $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r), Docker $(docker version -f '{{.Server.Version}}'), $(ansible --version | head -1 | tr -d '[]'), $(python3 --version)"
  if [ -n "$changed_tree" ]; then
    echo "- uncommitted changes in the tree that was deployed (other work in progress at the time):"
    sed 's/^/  - `/; s/$/`/' <<<"$changed_tree"
  fi
  echo
  echo "## Slowest tasks (profile_tasks), ${COUNTS[-1]} host(s)"
  echo
  echo "First converge:"
  echo
  echo '```'
  slowest "$WORK/first-${COUNTS[-1]}.log" 10
  echo '```'
  echo
  echo "No-change re-run:"
  echo
  echo '```'
  slowest "$WORK/rerun-${COUNTS[-1]}.log" 10
  echo '```'
} >"$RESULTS"
echo "wrote $RESULTS"
exit 0
}
