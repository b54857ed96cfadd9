"""Closed-loop load generator: C concurrent keep-alive clients for a fixed time
(and at most --max-requests), measuring latency, time to first byte and
throughput. Prints one JSON object."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
import orjson
import uvloop


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


async def run(url: str, concurrency: int, duration: float, warmup: float, stream: bool,
              max_requests: int, model: str, conversations: bool = False) -> dict:
    def body_of(client_id: int) -> bytes:
        # --conversations: each client is its own conversation (its own first message), as a fleet edge's
        # routing key sees real clients; otherwise every request is the same.
        content = f"benchmark conversation {client_id}" if conversations else "benchmark"
        return orjson.dumps({"model": model, "max_tokens": 16, "stream": stream,
                             "messages": [{"role": "user", "content": content}]})
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench-key"}
    latencies: list[float] = []
    ttfbs: list[float] = []
    errors = 0
    issued = 0
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + duration

        async def client(client_id: int) -> None:
            nonlocal errors, issued
            body = body_of(client_id)
            while True:
                now = time.perf_counter()
                if now >= stop_at or issued >= max_requests:
                    return
                issued += 1
                t0 = time.perf_counter()
                first = None
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        async for _chunk in resp.content.iter_any():
                            if first is None:
                                first = time.perf_counter()
                        ok = resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                t1 = time.perf_counter()
                if t0 >= measure_from and t1 <= stop_at:
                    if ok:
                        latencies.append(t1 - t0)
                        ttfbs.append((first or t1) - t0)
                    else:
                        errors += 1

        await asyncio.gather(*(client(i) for i in range(concurrency)))
    return {
        "concurrency": concurrency,
        "stream": stream,
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / duration,
        "p50_ms": pct(latencies, 50) * 1000,
        "p99_ms": pct(latencies, 99) * 1000,
        "mean_ms": (statistics.fmean(latencies) * 1000) if latencies else float("nan"),
        "ttfb_p50_ms": pct(ttfbs, 50) * 1000,
        "ttfb_p99_ms": pct(ttfbs, 99) * 1000,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--max-requests", type=int, default=2_000_000)
    p.add_argument("--model", default="sim")
    p.add_argument("--conversations", action="store_true", help="a first message of its own per client")
    a = p.parse_args()
    if not a.url.startswith(("http://127.", "http://localhost")):
        raise SystemExit("benchmark traffic goes to this machine only (127.0.0.0/8, localhost)")
    result = uvloop.run(run(a.url, a.concurrency, a.duration, a.warmup, a.stream,
                            a.max_requests, a.model, a.conversations))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
