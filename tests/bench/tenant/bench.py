"""What the tenant controls cost (issue #16): vllm-wrapper without them (a git ref, by default the last
commit before them) against vllm-wrapper with them (the working tree: the key limited to models and
expiring, with request, token and concurrency limits high enough never to refuse, counted in a real
redis-server as the counter_store role runs it, usage per key and model counted, streams asked for vLLM's
usage chunk that is dropped again),
in front of the same simulator, wrapper/bench/loadgen.py at 32 clients, streamed and not, rounds
alternating between the two, medians of the rounds. Prints a markdown table with the command and date and
writes results/latest.{md,json}."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
KEY = "bench-key"  # wrapper/bench/loadgen.py sends it
BASELINE = "bc7fca9"  # main before the tenant controls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(core: str) -> list[str]:
    return ["taskset", "-c", core] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


def loadgen(url: str, stream: bool, args: argparse.Namespace) -> dict:
    cmd = [*pin("0"), sys.executable, str(ROOT / "wrapper/bench/loadgen.py"), "--url", url,
           "--concurrency", str(args.concurrency), "--duration", str(args.duration), "--warmup", "2"]
    out = subprocess.run(cmd + (["--stream"] if stream else []), check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--baseline", default=BASELINE, help="git ref of the wrapper without the controls")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=15)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        baseline_dir = tmp / "baseline"
        baseline_dir.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "wrapper/vllm_wrapper"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline_dir)], input=archive, check=True)
        plain, scoped = tmp / "keys-plain", tmp / "keys-scoped"
        plain.write_text(f"bench:{digest}\n")
        scoped.write_text(f'bench:{digest} {{"models": ["sim", "other"], "expires": "2999-01-01", '
                          '"requests_per_minute": 100000000, "tokens_per_minute": 100000000000, '
                          '"concurrent_requests": 10000}\n')
        password = tmp / "store-password"
        password.write_text("bench-store-password-0123\n")
        try:
            store_port = free_port()
            store = subprocess.Popen([*pin("0"), shutil.which("redis-server") or "redis-server", "--port",
                                      str(store_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                                      "--appendfsync", "everysec", "--dir", str(tmp),
                                      "--requirepass", "bench-store-password-0123"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(store)
            store_env = {"VLLM_WRAPPER_LIMITS_STORE": f"redis://127.0.0.1:{store_port}/0",
                         "VLLM_WRAPPER_LIMITS_STORE_PASSWORD_FILE": str(password)}
            sim_port = free_port()
            sim = subprocess.Popen([*pin("0"), sys.executable, str(ROOT / "wrapper/bench/simulator.py"),
                                    "--port", str(sim_port), "--model", "sim"])
            procs.append(sim)
            wait_ready(f"http://127.0.0.1:{sim_port}/health", sim)
            edges = {}
            for name, source, keys, extra in (
                    ("without the controls (" + args.baseline + ")", baseline_dir / "wrapper", plain, {}),
                    ("with them (working tree)", ROOT / "wrapper", scoped, store_env)):
                port = free_port()
                env = {**{k: v for k, v in os.environ.items() if not k.startswith("VLLM_")},
                       "PYTHONPATH": str(source), "VLLM_UPSTREAM_URL": f"http://127.0.0.1:{sim_port}",
                       "VLLM_WRAPPER_HOST": "127.0.0.1", "VLLM_WRAPPER_PORT": str(port),
                       "VLLM_WRAPPER_WORKERS": "1", "VLLM_WRAPPER_API_KEYS_FILE": str(keys), **extra}
                proc = subprocess.Popen([*pin("1"), sys.executable, "-m", "vllm_wrapper"], env=env, cwd=source,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                procs.append(proc)
                wait_ready(f"http://127.0.0.1:{port}/health", proc)
                edges[name] = f"http://127.0.0.1:{port}/v1/chat/completions"
            results: dict[str, dict[str, list[dict]]] = {n: {"plain": [], "stream": []} for n in edges}
            for _round in range(args.rounds):
                for stream in (False, True):
                    for name, url in edges.items():
                        results[name]["stream" if stream else "plain"].append(loadgen(url, stream, args))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)
    report(results, args)


def report(results: dict, args: argparse.Namespace) -> None:
    def median(runs: list[dict], field: str) -> float:
        return statistics.median(r[field] for r in runs)

    command = "tests/bench/tenant/run.sh " + " ".join(sys.argv[1:])
    setup = (f"{args.concurrency} clients, {args.rounds} alternating rounds of {args.duration:g} s, medians; "
             "simulator 10 ms TTFT, 16 tokens; one wrapper worker on core 1, simulator, redis-server and load "
             "on core 0")
    now = datetime.datetime.now(datetime.UTC)
    lines = [f"Command: `{command.strip()}`  ", f"Date: {now:%Y-%m-%d %H:%M} UTC  ", setup, ""]
    rows = {}
    for kind in ("plain", "stream"):
        lines += [(f"| wrapper ({'streamed' if kind == 'stream' else 'not streamed'}) | latency p50 | latency p99 "
                  "| req/s | errors |"), "|---|---|---|---|---|"]
        for name, runs in results.items():
            r = runs[kind]
            rows[name, kind] = (median(r, "p50_ms"), median(r, "p99_ms"))
            lines.append(f"| {name} | {rows[name, kind][0]:.2f} ms | {rows[name, kind][1]:.2f} ms | "
                         f"{median(r, 'rps'):.0f} | {sum(x['errors'] for x in r)} |")
        base, new = list(results)
        p50 = rows[new, kind][0] - rows[base, kind][0]
        p99 = rows[new, kind][1] - rows[base, kind][1]
        lines += [f"| added by the controls | {p50:+.2f} ms | {p99:+.2f} ms | | |", "",
                  f"Target p50 <= 1 ms: {'met' if p50 <= 1 else 'NOT met'}", ""]
    text = "\n".join(lines)
    print(text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.md").write_text(text + "\n")
    (out / "latest.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
