"""How soon vllm-router stops sending to a worker that went away (issue #15: within 2 s), three ways, on
127.0.0.1 with wrapper/bench/simulator.py workers (their /ready answers 200 while they run):

1. vllm-router's own health checks, workers registered through POST /workers (--enable-igw, how the edge
   runs it), --health-check-interval-secs 1 --health-failure-threshold 1;
2. the same checks with the workers given on the command line (--worker-urls, one model only);
3. the router role's watch (gpufleet-router-sync --watch 0.5) in front of case 1.

Each try kills one of two workers and polls GET /workers every 50 ms until it is out (unhealthy or
removed). Prints one line per case with the tries' times.
  tests/bench/edge/drain.py [--tries 3]      (uses the edge bench's venv: tests/bench/edge/run.sh makes it)"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
VENV = Path(os.environ.get("GPUFLEET_CACHE", "/var/cache/gpufleet")) / "edge-bench-venv" / "bin"
SYNC = ROOT / "roles/router/templates/gpufleet-router-sync.j2"  # plain Python but for its first line
ROUTER = "http://127.0.0.1:19300"
WORKERS = ["http://127.0.0.1:19301", "http://127.0.0.1:19302"]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


def simulator(url: str) -> subprocess.Popen:
    return subprocess.Popen([str(VENV / "python"), str(ROOT / "wrapper/bench/simulator.py"),
                             "--port", url.rsplit(":", 1)[1], "--model", "m"])


def wait(predicate, timeout: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def serving() -> dict[str, bool]:
    return {w["url"]: w["is_healthy"] for w in get(ROUTER + "/workers")["workers"]}


def case(name: str, igw: bool, watch: bool, tries: int, state: Path) -> str:
    sims = {url: simulator(url) for url in WORKERS}
    mode = ["--enable-igw"] if igw else ["--worker-urls", *WORKERS]
    router = subprocess.Popen([str(VENV / "vllm-router"), "--port", ROUTER.rsplit(":", 1)[1], *mode,
                               "--policy", "cache_aware", "--health-check-endpoint", "/ready",
                               "--health-check-interval-secs", "1", "--health-failure-threshold", "1",
                               "--health-success-threshold", "1", "--log-level", "error",
                               "--prometheus-port", "19309"], stderr=subprocess.DEVNULL)
    procs = [router]
    times = []
    try:
        wait(lambda: _answers(ROUTER + "/health"), 60)
        sync = [sys.executable, str(state / "sync.py"), "--router", ROUTER, "--state-dir", str(state)]
        if igw:
            subprocess.run([*sync, "--wait", "30"], check=True, capture_output=True)
        if watch:
            procs.append(subprocess.Popen([*sync, "--watch", "0.5"], stdout=subprocess.DEVNULL))
        wait(lambda: serving() == dict.fromkeys(WORKERS, True), 30)
        gone = WORKERS[1]
        for _try in range(tries):
            sims[gone].kill()
            sims[gone].wait()
            took = wait(lambda: serving().get(gone) is not True, 10)
            times.append("%.2f s" % took if took is not None else "not out in 10 s")
            sims[gone] = simulator(gone)
            wait(lambda: serving().get(gone) is True, 30)
    finally:
        for proc in [*procs, *sims.values()]:
            proc.kill()
            proc.wait()
    return "| %s | %s |" % (name, " / ".join(times))


def _answers(url: str) -> bool:
    try:
        get(url)
        return True
    except (OSError, ValueError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tries", type=int, default=3)
    args = parser.parse_args()
    if not (VENV / "vllm-router").exists():
        sys.exit("no vllm-router in %s: run tests/bench/edge/run.sh once" % VENV)
    state = Path(tempfile.mkdtemp())
    try:
        (state / "sync.py").write_text("".join(SYNC.read_text().splitlines(True)[1:]))
        (state / "workers.json").write_text(json.dumps(
            [{"host": "h%d" % i, "instance": "server", "model": "m", "url": url} for i, url in enumerate(WORKERS)]))
        print("| how | out after a worker was killed (%d tries) |\n|---|---|" % args.tries)
        print(case("vllm-router health checks, workers from POST /workers (the edge's mode)", True, False,
                   args.tries, state))
        print(case("vllm-router health checks, workers from --worker-urls", False, False, args.tries, state))
        print(case("gpufleet-router-watch (0.5 s) in front of the first", True, True, args.tries, state))
    finally:
        shutil.rmtree(state)


if __name__ == "__main__":
    main()
