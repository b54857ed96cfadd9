"""Gateway benchmark: direct to the simulator vs through vllm-wrapper vs through
LiteLLM proxy, same upstream, same load, one run. Each gateway gets one worker
pinned to one core (taskset); simulator and load generator share the other.
Prints a markdown table and writes bench/results/latest.json."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

HERE = Path(__file__).resolve().parent
WRAPPER_DIR = HERE.parent
KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(core: str) -> list[str]:
    return ["taskset", "-c", core] if shutil.which("taskset") and os.cpu_count() > 1 else []


def wait_ready(url: str, proc: subprocess.Popen, timeout: float, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


def tree_cpu_rss(pid: int) -> tuple[float, int]:
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    cpu = 0.0
    rss = 0
    for p in procs:
        try:
            t = p.cpu_times()
            cpu += t.user + t.system
            rss += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return cpu, rss


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    fh = log.open("wb")
    return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **env},
                            start_new_session=True)


def loadgen(url: str, c: int, stream: bool, duration: float, warmup: float, model: str) -> dict:
    cmd = [*pin("0"), sys.executable, str(HERE / "loadgen.py"), "--url", url, "--concurrency",
           str(c), "--duration", str(duration), "--warmup", str(warmup), "--model", model]
    if stream:
        cmd.append("--stream")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 120)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--concurrency", default="1,32,256")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--ttft", type=float, default=0.02)
    ap.add_argument("--itl", type=float, default=0.002)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--targets", default="direct,wrapper,litellm")
    ap.add_argument("--soak", type=float, default=0.0,
                    help="seconds of extra soak through the wrapper (c=32) with RSS samples")
    ap.add_argument("--out", default=str(HERE / "results" / "latest.json"))
    ap.add_argument("--litellm", default=os.path.join(
        os.environ.get("GPUFLEET_CACHE", "/var/cache/gpufleet"), "litellm-venv", "bin", "litellm"))
    ap.add_argument("--wrapper-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the wrapper (repeatable)")
    ap.add_argument("--table-from", metavar="JSON", help="only print the table of a saved run")
    args = ap.parse_args()
    if args.table_from:
        print(table(json.loads(Path(args.table_from).read_text())["results"]))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="wrapper-bench-"))
    procs: list[subprocess.Popen] = []
    sim_port, wrap_port, lite_port = free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    try:
        sim = start([*pin("0"), sys.executable, str(HERE / "simulator.py"), "--port", str(sim_port),
                     "--ttft", str(args.ttft), "--itl", str(args.itl), "--tokens", str(args.tokens)],
                    {}, tmp / "sim.log")
        procs.append(sim)
        wait_ready(sim_url + "/health", sim, 30)
        targets: dict[str, tuple[str, int | None, str]] = {
            "direct": (sim_url + "/v1/chat/completions", None, "sim")}
        wanted = args.targets.split(",")
        if "wrapper" in wanted:
            w = start([*pin("1"), sys.executable, "-m", "vllm_wrapper"], {
                "PYTHONPATH": str(WRAPPER_DIR), "VLLM_UPSTREAM_URL": sim_url,
                "VLLM_WRAPPER_PORT": str(wrap_port), "VLLM_WRAPPER_HOST": "127.0.0.1",
                "VLLM_WRAPPER_API_KEY": KEY, "VLLM_WRAPPER_WORKERS": "1",
                **dict(kv.split("=", 1) for kv in args.wrapper_env),
            }, tmp / "wrapper.log")
            procs.append(w)
            wait_ready(f"http://127.0.0.1:{wrap_port}/health", w, 60)
            targets["wrapper"] = (f"http://127.0.0.1:{wrap_port}/v1/chat/completions", w.pid, "sim")
        if "litellm" in wanted:
            cfg = tmp / "litellm.yaml"
            cfg.write_text(
                "model_list:\n  - model_name: sim\n    litellm_params:\n"
                f"      model: openai/sim\n      api_base: {sim_url}/v1\n      api_key: dummy\n"
                f"general_settings:\n  master_key: {KEY}\n"
                "litellm_settings:\n  set_verbose: false\n  telemetry: false\n"
            )
            lp = start([*pin("1"), args.litellm, "--config", str(cfg), "--host", "127.0.0.1",
                        "--port", str(lite_port), "--num_workers", "1"], {
                "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
                "LITELLM_TELEMETRY": "False", "NO_DOCS": "True",
            }, tmp / "litellm.log")
            procs.append(lp)
            wait_ready(f"http://127.0.0.1:{lite_port}/health/liveliness", lp, 180)
            targets["litellm"] = (f"http://127.0.0.1:{lite_port}/v1/chat/completions", lp.pid, "sim")

        results = []
        for c in [int(x) for x in args.concurrency.split(",")]:
            for stream in (False, True):
                for name in wanted:
                    url, pid, model = targets[name]
                    before = tree_cpu_rss(pid) if pid else (0.0, 0)
                    t0 = time.monotonic()
                    r = loadgen(url, c, stream, args.duration, args.warmup, model)
                    elapsed = time.monotonic() - t0
                    after = tree_cpu_rss(pid) if pid else (0.0, 0)
                    r.update(target=name, gateway_cpu_pct=100 * (after[0] - before[0]) / elapsed,
                             gateway_rss_mb=after[1] / 2**20)
                    results.append(r)
                    print(json.dumps(r), flush=True)
        soak = None
        if args.soak > 0 and "wrapper" in targets:
            url, pid, model = targets["wrapper"]
            samples = [(0.0, tree_cpu_rss(pid)[1] / 2**20)]
            t_start = time.monotonic()
            requests = errors = 0
            while time.monotonic() - t_start < args.soak:
                r = loadgen(url, 32, len(samples) % 2 == 0, min(30.0, args.soak), 0.0, model)
                requests += r["requests"]
                errors += r["errors"]
                samples.append((time.monotonic() - t_start, tree_cpu_rss(pid)[1] / 2**20))
            soak = {"seconds": args.soak, "rss_mb_samples": samples, "requests": requests,
                    "errors": errors}
            print(json.dumps({"soak": soak}), flush=True)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": vars(args), "cpus": os.cpu_count(),
                                   "results": results, "soak": soak}, indent=1))
        print(table(results))
        return 0
    finally:
        for p in reversed(procs):
            stop(p)


def table(results: list[dict]) -> str:
    direct = {(r["concurrency"], r["stream"]): r for r in results if r["target"] == "direct"}
    lite = {(r["concurrency"], r["stream"]): r for r in results if r["target"] == "litellm"}
    lines = [
        "| mode | conc | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| TTFB p50 ms | added TTFB p50 ms | errors | gw CPU % | gw RSS MiB | vs LiteLLM |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["p50_ms"] is None:  # no request succeeded in the cell
            lines.append(f"| {'stream' if r['stream'] else 'non-stream'} | {r['concurrency']} | "
                         f"{r['target']} | 0 | - | - | - | - | - | - | {r['errors']} | - | - | |")
            continue
        key = (r["concurrency"], r["stream"])
        d = direct.get(key)
        added = (f"{r['p50_ms'] - d['p50_ms']:.2f} | {r['p99_ms'] - d['p99_ms']:.2f} | "
                 if d and r["target"] != "direct" else "- | - | ")
        added_ttfb = (f"{r['ttfb_p50_ms'] - d['ttfb_p50_ms']:.2f}"
                      if d and r["target"] != "direct" else "-")
        ratio = (f"{r['rps'] / lite[key]['rps']:.1f}x"
                 if r["target"] == "wrapper" and key in lite and lite[key]["rps"] else "")
        gw = ("-", "-") if r["target"] == "direct" else (f"{r['gateway_cpu_pct']:.0f}",
                                                          f"{r['gateway_rss_mb']:.0f}")
        lines.append(
            f"| {'stream' if r['stream'] else 'non-stream'} | {r['concurrency']} | {r['target']} | "
            f"{r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {added}"
            f"{r['ttfb_p50_ms']:.2f} | {added_ttfb} | {r['errors']} | {gw[0]} | {gw[1]} | {ratio} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
