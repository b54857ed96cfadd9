"""Edge benchmark: nginx least_conn vs nginx -> vllm-router (each policy of --policies), one run, one table.

Part 1, cache locality: three vLLM-on-CPU containers with prefix caching; multi-turn chat sessions
whose prompts share long prefixes, the same sessions (same seed, same concurrency) through each
edge. vLLM's own prefix cache counters, TTFT from the first streamed chunk, throughput.
Every router edge's nginx sets X-Session-ID from the body as the loadbalancer role's does
(roles/loadbalancer/templates/router-session.conf.j2, rendered from the role itself).
Part 2, overhead: three simulators; loadgen at 32 clients through nginx alone and through
nginx -> vllm-router, alternating rounds. Prints a markdown table; writes results/latest.{json,md}.
Only 127.0.0.1 is contacted."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT / "wrapper/bench"))
from loadgen import pct  # noqa: E402
IMAGE = "gpufleet-test/vllm-cpu:0.32.0"
MODEL = "tiny-llama"
VLLM_PORTS = (18101, 18102, 18103)
SIM_PORTS = (18201, 18202, 18203)
CONTAINER = "gpufleet-edgebench-vllm-{}"
SESSION_TEMPLATE = ROOT / "roles/loadbalancer/templates/router-session.conf.j2"

WORDS = (
    "fleet host model token cache prefix engine request router worker latency budget queue batch "
    "kernel memory page block layer tensor weight shard replica region zone rack switch link port "
    "socket header body stream chunk event metric counter gauge alert rule label target scrape "
    "config policy tenant quota limit window bucket retry backoff timeout health probe drain "
    "rollout canary version image build deploy inventory group variable default override value "
    "string number list table index record field schema query answer question summary detail"
).split()


# ---------- processes ----------

def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (127.0.0.1 only)
        return r.read().decode()


def post(url: str, payload: dict | None = None, timeout: float = 30.0) -> tuple[int, str]:
    data = json.dumps(payload).encode() if payload is not None else b""
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_http(url: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            get(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{what}: {url} not ready after {timeout:.0f}s")


class Procs:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.containers: list[str] = []

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.remove(p)

    def close(self) -> None:
        for p in list(self.procs):
            self.stop(p)
        for c in self.containers:
            subprocess.run(["docker", "rm", "-f", c], capture_output=True, check=False)


def session_conf(workdir: Path) -> Path:
    """The edge's X-Session-ID maps, rendered from the loadbalancer role's template."""
    import jinja2  # pylint: disable=import-outside-toplevel
    out = workdir / "router-session.conf"
    if not out.exists():
        template = jinja2.Template(SESSION_TEMPLATE.read_text(), trim_blocks=True, lstrip_blocks=True)
        out.write_text(template.render(ansible_managed="tests/bench/edge"))
    return out


def nginx_conf(workdir: Path, name: str, listen: int, upstreams: list[int],
               session_key: bool = False) -> Path:
    d = workdir / name
    d.mkdir()
    servers = "".join(f"    server 127.0.0.1:{p};\n" for p in upstreams)
    # The role's router-edge.conf: the body in one memory buffer, the key as X-Session-ID.
    http_extra = f"  include {session_conf(workdir)};\n" if session_key else ""
    loc_extra = ("      client_body_buffer_size 1m;\n      client_body_in_single_buffer on;\n"
                 "      proxy_set_header X-Session-ID $gpufleet_session_key;\n") if session_key else ""
    conf = d / "nginx.conf"
    conf.write_text(f"""worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
{http_extra}  upstream up {{
    least_conn;
{servers}    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{listen};
    client_max_body_size 16m;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
{loc_extra}      proxy_buffering off;
      proxy_read_timeout 600s;
    }}
  }}
}}
""")
    return conf


def start_nginx(procs: Procs, name: str, listen: int, upstreams: list[int],
                session_key: bool = False) -> subprocess.Popen:
    conf = nginx_conf(procs.workdir, name, listen, upstreams, session_key)
    p = procs.start(name, ["nginx", "-c", str(conf), "-g", "daemon off;"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            get(f"http://127.0.0.1:{listen}/health", timeout=2)
            return p
        except urllib.error.HTTPError:
            return p  # nginx answers (the upstream decides the status)
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(name)


def start_router(procs: Procs, name: str, port: int, prom: int, workers: list[int],
                 model: str, args: argparse.Namespace, policy: str) -> subprocess.Popen:
    p = procs.start(name, [
        str(Path(sys.executable).parent / "vllm-router"), "--host", "127.0.0.1", "--port", str(port), "--enable-igw",
        "--policy", policy, "--cache-threshold", str(args.cache_threshold),
        "--balance-abs-threshold", str(args.balance_abs_threshold),
        "--balance-rel-threshold", str(args.balance_rel_threshold),
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(prom), "--log-level", "warning",
    ])
    wait_http(f"http://127.0.0.1:{port}/health", 30, name)
    for w in workers:
        status, body = post(f"http://127.0.0.1:{port}/workers",
                            {"url": f"http://127.0.0.1:{w}", "model_id": model}, timeout=60)
        if status >= 300:
            raise RuntimeError(f"{name}: registering worker {w}: {status} {body}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stats = json.loads(get(f"http://127.0.0.1:{port}/workers"))["stats"]
        if stats["healthy_workers"] >= len(workers):
            return p
        time.sleep(0.5)
    raise TimeoutError(f"{name}: {len(workers)} workers not active")


# ---------- metrics ----------

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def scrape(url: str) -> list[tuple[str, dict, float]]:
    out = []
    for line in get(url).splitlines():
        m = LINE.match(line)
        if not m or line.startswith("#"):
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        try:
            out.append((m.group(1), labels, float(m.group(3))))
        except ValueError:
            continue
    return out


def metric_sum(samples: list[tuple[str, dict, float]], name: str, **match: str) -> float:
    return sum(v for n, lab, v in samples
               if n == name and all(lab.get(k) == want for k, want in match.items()))


def prefix_decisions(after: list, before: list) -> dict[str, float]:
    """vllm_router_prefix_routing_decisions_total by outcome, counted between two scrapes."""
    name = "vllm_router_prefix_routing_decisions_total"
    outcomes = sorted({lab.get("outcome", "") for n, lab, _v in after if n == name})
    return {o: metric_sum(after, name, outcome=o) - metric_sum(before, name, outcome=o) for o in outcomes}


def vllm_prefix_counters() -> tuple[float, float, float]:
    queries = hits = preempted = 0.0
    for port in VLLM_PORTS:
        s = scrape(f"http://127.0.0.1:{port}/metrics")
        queries += metric_sum(s, "vllm:prefix_cache_queries_total")
        hits += metric_sum(s, "vllm:prefix_cache_hits_total")
        preempted += metric_sum(s, "vllm:num_preemptions_total")
    return queries, hits, preempted


# ---------- part 1: sessions ----------

def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _word in range(n))


def make_sessions(seed: int, sessions: int, shared_words: int, context_words: int,
                  turn_words: int, turns: int, ramp: float, think: float) -> list[dict]:
    rng = random.Random(seed)
    shared = "You are the operations assistant of a GPU fleet. " + words(rng, shared_words)
    out = []
    for i in range(sessions):
        out.append({
            "system": f"{shared}\nSession {i} reference document:\n{words(rng, context_words)}",
            "users": [f"Question {t + 1}: {words(rng, turn_words)}" for t in range(turns)],
            "start": rng.uniform(0, ramp),
            "think": [rng.uniform(0, 2 * think) for _turn in range(turns)],
        })
    return out


async def chat_turn(http: aiohttp.ClientSession, url: str, messages: list[dict],
                    max_tokens: int) -> dict:
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = None
    text = []
    usage: dict = {}
    async with http.post(url, json=body, headers={"Authorization": "Bearer bench"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {(await resp.text())[:300]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            if first is None:
                first = time.perf_counter()
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            for ch in event.get("choices") or []:
                text.append((ch.get("delta") or {}).get("content") or "")
            if event.get("usage"):
                usage = event["usage"]
    t1 = time.perf_counter()
    return {"ttft": (first or t1) - t0, "latency": t1 - t0, "text": "".join(text), "usage": usage}


async def run_sessions(url: str, sessions: list[dict], max_tokens: int) -> dict:
    ttfts: list[float] = []
    prompt_tokens = completion_tokens = 0
    last_turn_tokens: list[int] = []  # each session's whole context at its last turn
    errors: list[str] = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as http:
        async def session(s: dict) -> None:
            nonlocal prompt_tokens, completion_tokens
            messages = [{"role": "system", "content": s["system"]}]
            await asyncio.sleep(s["start"])
            for user, think in zip(s["users"], s["think"]):
                if len(messages) > 1:
                    await asyncio.sleep(think)
                messages.append({"role": "user", "content": user})
                try:
                    r = await chat_turn(http, url, messages, max_tokens)
                except (aiohttp.ClientError, RuntimeError, TimeoutError) as e:
                    errors.append(str(e))
                    return
                ttfts.append(r["ttft"])
                prompt_tokens += r["usage"].get("prompt_tokens", 0)
                completion_tokens += r["usage"].get("completion_tokens", 0)
                messages.append({"role": "assistant", "content": r["text"]})
            last_turn_tokens.append(r["usage"].get("total_tokens", 0))

        t0 = time.perf_counter()
        await asyncio.gather(*(session(s) for s in sessions))
        wall = time.perf_counter() - t0
    return {"requests": len(ttfts), "errors": len(errors), "first_error": errors[:1],
            "wall_s": wall, "rps": len(ttfts) / wall, "out_tok_s": completion_tokens / wall,
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "context_tokens_all_sessions": sum(last_turn_tokens),
            "ttft_p50_ms": pct(ttfts, 50) * 1000, "ttft_p99_ms": pct(ttfts, 99) * 1000,
            "ttft_mean_ms": statistics.fmean(ttfts) * 1000 if ttfts else float("nan")}


def start_vllm(procs: Procs, args: argparse.Namespace) -> None:
    for i, port in enumerate(VLLM_PORTS):
        name = CONTAINER.format(i + 1)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
        procs.containers.append(name)
        # One OpenMP thread each: three engines share two cores with Docker's equal CPU weights;
        # dev mode serves POST /reset_prefix_cache, which empties the cache between the policies;
        # --enable-scale-out serves /v1/chat/completions/render (403 without it), which cache_aware
        # asks for token ids. Both policies run against the same engines with the same flags.
        # KV cache: --kv-cache-tokens per engine, as --num-gpu-blocks-override blocks of
        # --block-size tokens (0: the image's VLLM_CPU_KVCACHE_SPACE, 1 GiB, millions of tokens of
        # this model, so nothing is ever evicted).
        kv = []
        if args.kv_cache_tokens:
            kv = ["--block-size", str(args.block_size),
                  "--num-gpu-blocks-override", str(-(-args.kv_cache_tokens // args.block_size))]
        subprocess.run([
            "docker", "run", "-d", "--name", name, "--network", "host",
            "-e", "OMP_NUM_THREADS=1", "-e", "VLLM_CPU_OMP_THREADS_BIND=nobind",
            "-e", "VLLM_SERVER_DEV_MODE=1", IMAGE,
            "--model", "/opt/models/tiny", "--served-model-name", MODEL,
            "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(args.max_model_len),
            "--enable-prefix-caching", "--enable-scale-out", *kv,
        ], check=True, capture_output=True)
    for i, port in enumerate(VLLM_PORTS):
        try:
            wait_http(f"http://127.0.0.1:{port}/health", 600, CONTAINER.format(i + 1))
        except TimeoutError:
            logs = subprocess.run(["docker", "logs", "--tail", "30", CONTAINER.format(i + 1)],
                                  capture_output=True, text=True, check=False)
            print(logs.stdout, logs.stderr, file=sys.stderr)
            raise


def kv_capacity() -> list[str]:
    """Each engine's KV cache as vLLM logs it at start ("KV cache size: N tokens")."""
    out = []
    for i in range(len(VLLM_PORTS)):
        logs = subprocess.run(["docker", "logs", CONTAINER.format(i + 1)], capture_output=True,
                              text=True, check=False)
        m = re.findall(r"KV cache size: ([\d,]+) tokens", logs.stdout + logs.stderr)
        out.append(m[-1].replace(",", "") if m else "?")
    return out


def cold_engines(args: argparse.Namespace) -> None:
    """Warm each engine's code paths with an unrelated short prompt, then empty its prefix cache."""
    for port in VLLM_PORTS:
        status, body = post(f"http://127.0.0.1:{port}/v1/chat/completions", {
            "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "warm up"}]},
            timeout=120)
        if status != 200:
            raise RuntimeError(f"warm-up {port}: {status} {body[:200]}")
        status, body = post(f"http://127.0.0.1:{port}/reset_prefix_cache")
        if status != 200:
            raise RuntimeError(f"reset_prefix_cache {port}: {status} {body[:200]}")


def probe(system: str) -> dict:
    """One engine, nothing else running: what a prefix hit can save and what a render call costs."""
    url = f"http://127.0.0.1:{VLLM_PORTS[0]}"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "probe"}]
    post(f"{url}/reset_prefix_cache")

    async def ttft() -> dict:
        async with aiohttp.ClientSession() as http:
            return await chat_turn(http, f"{url}/v1/chat/completions", messages, 1)

    miss = asyncio.run(ttft())
    hit = asyncio.run(ttft())
    t0 = time.perf_counter()
    status, _body = post(f"{url}/v1/chat/completions/render", {"model": MODEL, "messages": messages})
    render = time.perf_counter() - t0
    post(f"{url}/reset_prefix_cache")
    return {"prompt_tokens": miss["usage"].get("prompt_tokens"), "miss_ttft_ms": miss["ttft"] * 1000,
            "hit_ttft_ms": hit["ttft"] * 1000, "render_ms": render * 1000, "render_status": status}


def run_edge(url: str, sessions: list[dict], args: argparse.Namespace, prom: int | None) -> dict:
    q0, h0, p0 = vllm_prefix_counters()
    m0 = scrape(f"http://127.0.0.1:{prom}/metrics") if prom else []
    r = asyncio.run(run_sessions(url, sessions, args.max_tokens))
    q1, h1, p1 = vllm_prefix_counters()
    r.update(cache_queries=q1 - q0, cache_hits=h1 - h0, preemptions=p1 - p0,
             hit_rate=(h1 - h0) / (q1 - q0) if q1 > q0 else float("nan"))
    if prom:
        m1 = scrape(f"http://127.0.0.1:{prom}/metrics")
        r["router_decisions"] = prefix_decisions(m1, m0)
        r["router_per_worker"] = {lab.get("worker", "?"): v for n, lab, v in m1
                                  if n == "vllm_router_processed_requests_total"}
    return r


def part_cache(procs: Procs, args: argparse.Namespace) -> dict:
    sessions = make_sessions(args.seed, args.sessions, args.shared_words, args.context_words,
                             args.turn_words, args.turns, args.ramp, args.think)
    print(f"[cache] starting 3 vLLM containers ({IMAGE})", flush=True)
    t = time.monotonic()
    start_vllm(procs, args)
    print(f"[cache] vLLM ready in {time.monotonic() - t:.0f}s", flush=True)
    results: dict = {"kv_cache_tokens": kv_capacity(), "edges": {}}
    print(f"[cache] KV cache per engine (tokens): {results['kv_cache_tokens']}", flush=True)

    results["probe"] = probe(sessions[0]["system"])
    print(f"[cache] probe: {json.dumps(results['probe'])}", flush=True)
    cold_engines(args)
    ng = start_nginx(procs, "nginx-lc-vllm", 18110, list(VLLM_PORTS))
    print("[cache] nginx least_conn ...", flush=True)
    r = run_edge("http://127.0.0.1:18110/v1/chat/completions", sessions, args, None)
    results["edges"]["least_conn"] = r
    procs.stop(ng)
    print(f"[cache] least_conn: {json.dumps(r)}", flush=True)

    for i, policy in enumerate(args.policies):
        port = 18120 + 10 * i
        cold_engines(args)
        router = start_router(procs, f"router-vllm-{policy}", port, port + 1, list(VLLM_PORTS), MODEL, args,
                              policy)
        ng = start_nginx(procs, f"nginx-router-vllm-{policy}", port + 5, [port], session_key=True)
        print(f"[cache] nginx -> vllm-router {policy} ...", flush=True)
        r = run_edge(f"http://127.0.0.1:{port + 5}/v1/chat/completions", sessions, args, port + 1)
        results["edges"][policy] = r
        procs.stop(ng)
        procs.stop(router)
        print(f"[cache] {policy}: {json.dumps(r)}", flush=True)
    return results


# ---------- part 2: overhead ----------

def loadgen(url: str, args: argparse.Namespace) -> dict:
    out = subprocess.run([
        sys.executable, str(ROOT / "wrapper/bench/loadgen.py"), "--url", url,
        "--concurrency", str(args.concurrency), "--duration", str(args.duration),
        "--warmup", "2", "--model", "sim", "--conversations"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def part_overhead(procs: Procs, args: argparse.Namespace) -> dict:
    print("[overhead] simulators, nginx, vllm-router", flush=True)
    for port in SIM_PORTS:
        procs.start(f"sim-{port}", [sys.executable, str(ROOT / "wrapper/bench/simulator.py"),
                                    "--port", str(port), "--model", "sim"])
    for port in SIM_PORTS:
        wait_http(f"http://127.0.0.1:{port}/health", 30, f"simulator {port}")
    start_nginx(procs, "nginx-lc-sim", 18210, list(SIM_PORTS))
    edges = {"least_conn": 18210}
    for i, policy in enumerate(args.policies):
        port = 18220 + 10 * i
        start_router(procs, f"router-sim-{policy}", port, port + 1, list(SIM_PORTS), "sim", args, policy)
        start_nginx(procs, f"nginx-router-sim-{policy}", port + 5, [port], session_key=True)
        edges[policy] = port + 5
    # The floor of any extra hop on this machine: one more nginx, doing nothing but proxying, in front of
    # the least_conn one. What the router adds beyond it is the router's own cost.
    start_nginx(procs, "nginx-hop-sim", 18290, [18210])
    edges["extra_hop"] = 18290
    rounds: dict[str, list[dict]] = {name: [] for name in edges}
    for i in range(args.rounds):
        for name, port in edges.items():
            r = loadgen(f"http://127.0.0.1:{port}/v1/chat/completions", args)
            rounds[name].append(r)
            print(f"[overhead] round {i + 1} {name}: {json.dumps(r)}", flush=True)
    summary: dict = {"edges": {}}
    for edge, rs in rounds.items():
        summary["edges"][edge] = {k: statistics.median(r[k] for r in rs)
                                  for k in ("p50_ms", "p99_ms", "rps", "errors", "requests")}
        summary["edges"][edge]["rounds"] = rs
    for i, policy in enumerate(args.policies):
        prom = 18220 + 10 * i + 1
        summary["edges"][policy]["router_decisions"] = prefix_decisions(
            scrape(f"http://127.0.0.1:{prom}/metrics"), [])
    return summary


# ---------- report ----------

def edge_name(edge: str) -> str:
    return {"least_conn": "nginx least_conn",
            "extra_hop": "nginx -> nginx least_conn (an empty extra hop)"}.get(edge, f"nginx -> vllm-router {edge}")


def report(args: argparse.Namespace, date: str, cache: dict | None, over: dict | None) -> str:
    lines = [f"Command: `{args.command}`  ", f"Date: {date}  ", ""]
    if cache:
        edges = cache["edges"]
        lc = edges["least_conn"]
        lines += [
            f"Cache locality: {args.sessions} sessions x {args.turns} turns, all sessions open at once "
            f"(up to {args.sessions} requests in flight), starts spread over {args.ramp:.0f} s, "
            f"{args.think:.1f} s mean think time between turns, seed {args.seed}, "
            f"max_tokens {args.max_tokens}, "
            "3 vLLM-on-CPU engines with prefix caching, emptied before each edge; KV cache per "
            f"engine {' / '.join(cache['kv_cache_tokens'])} tokens (vLLM's log); all sessions' "
            f"contexts at their last turn {lc['context_tokens_all_sessions']} tokens; cache_aware "
            f"--cache-threshold {args.cache_threshold} --balance-abs-threshold "
            f"{args.balance_abs_threshold} --balance-rel-threshold {args.balance_rel_threshold}", "",
            "| edge | prefix cache hit rate (vLLM) | TTFT p50 | TTFT p99 | req/s | output tok/s "
            "| prompt tokens | preemptions | requests (errors) | hit rate / least_conn | TTFT p50 / least_conn |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for edge, r in edges.items():
            ratio = r["hit_rate"] / lc["hit_rate"] if lc["hit_rate"] else float("inf")
            lines.append(
                f"| {edge_name(edge)} | {r['hit_rate']:.1%} ({r['cache_hits']:.0f}/{r['cache_queries']:.0f}) "
                f"| {r['ttft_p50_ms']:.0f} ms | {r['ttft_p99_ms']:.0f} ms | {r['rps']:.2f} "
                f"| {r['out_tok_s']:.1f} | {r['prompt_tokens']} | {r['preemptions']:.0f} "
                f"| {r['requests']} ({r['errors']}) | {ratio:.2f}x "
                f"| {r['ttft_p50_ms'] / lc['ttft_p50_ms'] - 1:+.0%} |")
        lines.append("")
        for policy in args.policies:
            r = edges[policy]
            ratio = r["hit_rate"] / lc["hit_rate"] if lc["hit_rate"] else float("inf")
            drop = 1 - r["ttft_p50_ms"] / lc["ttft_p50_ms"]
            lines += [
                f"{policy}: hit rate {ratio:.2f}x least_conn's (target >= 2x: "
                f"{'met' if ratio >= 2 else 'NOT met'}); TTFT p50 {-drop:+.0%} (target -30% or lower: "
                f"{'met' if drop >= 0.30 else 'NOT met'}); requests per worker "
                + ", ".join(f"{v:.0f}" for _k, v in sorted(r["router_per_worker"].items()))
                + "; prefix decisions " + (", ".join(f"{k} {v:.0f}" for k, v in r["router_decisions"].items())
                                           or "none (not cache_aware)") + ".  ",
            ]
        pr = cache["probe"]
        lines += [
            f"Probe, one engine, nothing else running, a {pr['prompt_tokens']}-token prompt: TTFT "
            f"{pr['miss_ttft_ms']:.1f} ms on a cache miss, {pr['hit_ttft_ms']:.1f} ms on a hit; "
            f"a /v1/chat/completions/render call {pr['render_ms']:.1f} ms (HTTP {pr['render_status']}).",
            "",
        ]
    if over:
        edges = over["edges"]
        lc = edges["least_conn"]
        lines += [
            f"Overhead: 3 simulators (wrapper/bench/simulator.py, 10 ms TTFT, 16 tokens, not "
            f"streamed), {args.concurrency} concurrent clients, {args.rounds} alternating rounds "
            f"of {args.duration:.0f} s, medians of the rounds", "",
            "| edge | latency p50 | latency p99 | req/s | errors | added p50 | added p99 | target (1 ms / 5 ms) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for edge, r in edges.items():
            d50, d99 = r["p50_ms"] - lc["p50_ms"], r["p99_ms"] - lc["p99_ms"]
            verdict = "" if edge == "least_conn" else ("met" if d50 <= 1 and d99 <= 5 else "NOT met")
            lines.append(
                f"| {edge_name(edge)} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | {r['rps']:.0f} "
                f"| {r['errors']:.0f} | {d50:+.2f} ms | {d99:+.2f} ms | {verdict} |")
        lines.append("")
        for policy in args.policies:
            decisions = edges[policy]["router_decisions"]
            lines.append(f"{policy} prefix decisions: "
                         + (", ".join(f"{k} {v:.0f}" for k, v in decisions.items()) or "none") + "  ")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--command", default="tests/bench/edge/run.sh")
    p.add_argument("--part", choices=("all", "cache", "overhead"), default="all")
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--sessions", type=int, default=32)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--shared-words", type=int, default=30)
    p.add_argument("--context-words", type=int, default=350)
    p.add_argument("--turn-words", type=int, default=15)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--ramp", type=float, default=2.0, help="sessions start within this many seconds")
    p.add_argument("--think", type=float, default=1.0, help="mean seconds between a session's turns")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--kv-cache-tokens", type=int, default=21504,
                   help="KV cache per engine in tokens (0: the image's 1 GiB, no eviction)")
    p.add_argument("--block-size", type=int, default=32,
                   help="vLLM KV block size in tokens with --kv-cache-tokens (CPU: multiples of 32)")
    p.add_argument("--cache-threshold", type=float, default=0.3)
    p.add_argument("--balance-abs-threshold", type=int, default=64)
    p.add_argument("--balance-rel-threshold", type=float, default=1.5)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--policies", type=lambda v: v.split(","), default=["sticky_least_loaded", "cache_aware"],
                   help="router policies to compare with least_conn, comma-separated (the role's default first)")
    args = p.parse_args()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    workdir = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    procs = Procs(workdir)
    cache = over = None
    try:
        if args.part in ("all", "cache"):
            cache = part_cache(procs, args)
            for c in procs.containers:
                subprocess.run(["docker", "rm", "-f", c], capture_output=True, check=False)
            procs.containers.clear()
        if args.part in ("all", "overhead"):
            over = part_overhead(procs, args)
    finally:
        procs.close()
    text = report(args, date, cache, over)
    print("\n" + text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.md").write_text(text)
    (out / "latest.json").write_text(json.dumps(
        {"command": args.command, "date": date, "args": vars(args), "cache": cache,
         "overhead": over}, indent=1, default=str))
    print(f"logs: {workdir}")


if __name__ == "__main__":
    main()
