"""Per-key limits that hold for the whole fleet: requests and tokens per minute and concurrent requests,
counted in one Redis or Valkey store that every wrapper shares (VLLM_WRAPPER_LIMITS_STORE).

Requests and tokens are token buckets that refill continuously (a key with 60 requests per minute gets
one back every second and may burst to 60), as OpenAI's limits do. A request is taken when it starts;
its tokens (prompt plus completion, from vLLM's usage numbers) when it ends, so a bucket may go below
zero and the key waits until it refills. Each check is one Lua script on the store, atomic across
wrappers, timed by the store's clock; finished requests are reported in batches (RELEASE_BATCH).
Concurrent requests are a sorted set of request ids whose scores are lease ends, so a wrapper that dies
mid-request frees its places after VLLM_WRAPPER_LIMITS_LEASE.

When the store cannot be reached the request goes on without its limits (logged and counted in
vllm_wrapper_limits_store_errors_total): the store is never the reason a fleet stops serving."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from . import metrics
from .config import ConfigError

log = logging.getLogger("vllm_wrapper.limits")

# How long the wrapper waits for the store, and stops asking it after a failure (seconds).
STORE_TIMEOUT = 0.5
STORE_RETRY = 5.0
# Finished requests are reported to the store together, at most this long after they end (seconds): one
# call for all of them instead of one each, which halves the store's cost per request under load.
RELEASE_BATCH = 0.005

_BUCKET = """
local function bucket(key, cap, now)
  local v = redis.call('HMGET', key, 'level', 'ts')
  local level, ts = tonumber(v[1]), tonumber(v[2])
  if level == nil then return cap end
  return math.min(cap, level + math.max(0, now - ts) * cap / 60000)
end
local function keep(key, cap, level, now)
  redis.call('HSET', key, 'level', tostring(level), 'ts', now)
  redis.call('PEXPIRE', key, math.ceil((cap - level) * 60000 / cap) + 1000)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# KEYS: requests bucket, tokens bucket, in-flight set. ARGV: rpm, tpm, concurrent, request id, lease ms.
# Returns the refused limit ('' when taken), the requests and tokens levels (-1: no limit), in flight.
_ACQUIRE = _BUCKET + """
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local rq, tk, busy = -1, -1, 0
if rpm > 0 then rq = bucket(KEYS[1], rpm, now) end
if tpm > 0 then tk = bucket(KEYS[2], tpm, now) end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  busy = redis.call('ZCARD', KEYS[3])
end
local refused = ''
if conc > 0 and busy >= conc then refused = 'concurrency'
elseif rpm > 0 and rq < 1 then refused = 'requests'
elseif tpm > 0 and tk <= 0 then refused = 'tokens' end
if refused == '' then
  if rpm > 0 then rq = rq - 1; keep(KEYS[1], rpm, rq, now) end
  if conc > 0 then
    local lease = tonumber(ARGV[5])
    redis.call('ZADD', KEYS[3], now + lease, ARGV[4])
    redis.call('PEXPIRE', KEYS[3], lease)
    busy = busy + 1
  end
end
return {refused, tostring(rq), tostring(tk), busy}
"""
# Finished requests, several at once. KEYS: tokens bucket and in-flight set of each; ARGV: tpm, tokens
# used and request id ('' when not in the set) of each.
_RELEASE = _BUCKET + """
for i = 1, #KEYS, 2 do
  local j = (i - 1) / 2 * 3
  local tpm, used, member = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), ARGV[j + 3]
  if member ~= '' then redis.call('ZREM', KEYS[i + 1], member) end
  if tpm > 0 and used > 0 then keep(KEYS[i], tpm, bucket(KEYS[i], tpm, now) - used, now) end
end
return 0
"""


@dataclass(frozen=True)
class Limits:
    """A key's limits (0: none of that kind)."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    concurrent_requests: int = 0

    SETTINGS: ClassVar[tuple[str, ...]] = ("requests_per_minute", "tokens_per_minute", "concurrent_requests")

    @classmethod
    def of(cls, attrs: dict[str, Any]) -> Limits | None:
        values = {name: attrs.get(name) or 0 for name in cls.SETTINGS}
        return cls(**values) if any(values.values()) else None


@dataclass(slots=True)
class Grant:
    """A request's place in its key's limits: the headers its answer carries, and whether it was refused."""

    key: str
    limits: Limits
    request_id: str
    refused: str = ""
    retry_after: float = 0.0
    headers: tuple[tuple[bytes, bytes], ...] = ()


def duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 1s, 6m0s, 1h2m3s."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _headers(limits: Limits, requests: float, tokens: float) -> tuple[tuple[bytes, bytes], ...]:
    out: list[tuple[bytes, bytes]] = []
    for kind, cap, level in (("requests", limits.requests_per_minute, requests),
                             ("tokens", limits.tokens_per_minute, tokens)):
        if cap:
            out += [(f"x-ratelimit-limit-{kind}".encode(), str(cap).encode()),
                    (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, math.floor(level))).encode()),
                    (f"x-ratelimit-reset-{kind}".encode(), duration((cap - level) * 60 / cap).encode())]
    return tuple(out)


def _retry_after(refused: str, limits: Limits, requests: float, tokens: float) -> float:
    if refused == "requests":
        return (1 - requests) * 60 / limits.requests_per_minute
    if refused == "tokens":
        return (1 - tokens) * 60 / limits.tokens_per_minute
    return 1.0  # concurrency: a place frees when one of the key's requests ends


def refusal_message(grant: Grant) -> str:
    limits = grant.limits
    if grant.refused == "concurrency":
        return (f"API key {grant.key!r} has {limits.concurrent_requests} concurrent request(s) in progress, "
                "its limit; retry when one ends")
    if grant.refused == "requests":
        return (f"Rate limit reached for API key {grant.key!r}: {limits.requests_per_minute} requests per "
                f"minute; retry after {duration(grant.retry_after)}")
    return (f"Rate limit reached for API key {grant.key!r}: {limits.tokens_per_minute} tokens per minute; "
            f"retry after {duration(grant.retry_after)}")


class Limiter:
    """The store's two scripts, called once when a limited key's request starts and once when it ends."""

    def __init__(self, url: str, password_file: str | None, lease: float) -> None:
        import redis.asyncio as aioredis  # only a wrapper with a store needs the client
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        password = None
        if password_file is not None:
            try:
                with open(password_file, encoding="utf-8") as fh:
                    password = fh.read().strip() or None
            except OSError as exc:
                raise ConfigError(f"VLLM_WRAPPER_LIMITS_STORE_PASSWORD_FILE={password_file!r} cannot be "
                                  f"read: {exc.strerror}") from None
        self._client = aioredis.Redis.from_url(
            url, password=password, socket_timeout=STORE_TIMEOUT, socket_connect_timeout=STORE_TIMEOUT,
            # One immediate retry (a pooled connection the store closed when it restarted), not the client's
            # default backoff of seconds: a request never waits long for its limits.
            retry=Retry(NoBackoff(), 1), health_check_interval=30, max_connections=256)
        self._acquire = self._client.register_script(_ACQUIRE)
        self._release = self._client.register_script(_RELEASE)
        self._lease_ms = str(int(lease * 1000))
        self._down_until = 0.0
        self._finished: list[tuple[Grant, int]] = []
        self._flush: asyncio.Task | None = None

    @staticmethod
    def _keys(name: str) -> list[str]:
        # One hash tag per key name: a Redis Cluster keeps a key's counters on one shard.
        return [f"gpufleet:limits:{{{name}}}:{kind}" for kind in ("requests", "tokens", "inflight")]

    def _failed(self, exc: Exception) -> None:
        metrics.LIMITS_STORE_ERRORS.inc()
        if time.monotonic() >= self._down_until:
            log.error("limits store unreachable, serving without limits for %.0f s: %s", STORE_RETRY, exc)
        self._down_until = time.monotonic() + STORE_RETRY

    async def acquire(self, key: str, limits: Limits) -> Grant | None:
        """The request's grant (check .refused), or None when the store cannot be asked."""
        if time.monotonic() < self._down_until:
            return None
        request_id = os.urandom(12).hex()  # not the client's X-Request-Id, which need not be unique
        try:
            refused, requests, tokens, _ = await self._acquire(
                keys=self._keys(key),
                args=[limits.requests_per_minute, limits.tokens_per_minute, limits.concurrent_requests,
                      request_id, self._lease_ms])
        except Exception as exc:  # any store failure: serve without limits
            self._failed(exc)
            return None
        refused = refused.decode() if isinstance(refused, bytes) else str(refused)
        requests, tokens = float(requests), float(tokens)
        grant = Grant(key, limits, request_id, refused, headers=_headers(limits, requests, tokens))
        if refused:
            grant.retry_after = _retry_after(refused, limits, requests, tokens)
        return grant

    def release(self, grant: Grant, tokens: int) -> None:
        """Note a finished request: its place in the key's concurrent requests and the tokens it used."""
        limits = grant.limits
        if not limits.concurrent_requests and not (limits.tokens_per_minute and tokens):
            return
        self._finished.append((grant, tokens))
        if self._flush is None:
            self._flush = asyncio.get_running_loop().create_task(self._send_finished(RELEASE_BATCH))

    async def _send_finished(self, delay: float) -> None:
        await asyncio.sleep(delay)
        finished, self._finished, self._flush = self._finished, [], None
        keys: list[str] = []
        args: list[object] = []
        for grant, tokens in finished:
            keys += self._keys(grant.key)[1:]
            args += [grant.limits.tokens_per_minute, tokens,
                     grant.request_id if grant.limits.concurrent_requests else ""]
        try:
            await self._release(keys=keys, args=args)
        except Exception as exc:
            self._failed(exc)

    async def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._finished:
            await self._send_finished(0)
        await self._client.aclose()
