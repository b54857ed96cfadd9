"""Prometheus metrics. With several uvicorn workers set PROMETHEUS_MULTIPROC_DIR
(the launcher does it) so /metrics aggregates every worker; otherwise each
worker reports only its own numbers."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
)
KNOWN_ROUTES = frozenset(
    {
        "/chat", "/v1/chat/completions", "/v1/completions", "/v1/chat/completions/render",
        "/v1/completions/render", "/v1/models", "/v1/embeddings",
        "/v1/responses", "/tokenize", "/detokenize", "/v1/messages", "/v1/messages/count_tokens",
        "/health", "/ready", "/metrics", "/docs", "/openapi.json",
    }
)
_RESPONSES = "/v1/responses/"

REQUESTS = Counter(
    "vllm_wrapper_requests_total",
    "Requests handled, by route, HTTP status and API key name.",
    ["route", "status", "key"],
)
DURATION = Histogram(
    "vllm_wrapper_request_duration_seconds",
    "Time from request start to the last byte of the response.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
TTFB = Histogram(
    "vllm_wrapper_time_to_first_byte_seconds",
    "Time from request start to the first response body byte (first token when streaming).",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "vllm_wrapper_requests_in_flight",
    "Requests being handled now.",
    multiprocess_mode="livesum",
)
UPSTREAM_ERRORS = Counter(
    "vllm_wrapper_upstream_errors_total",
    "Upstream (vLLM) failures by reason: connect, timeout, protocol.",
    ["reason"],
)
CLIENT_DISCONNECTS = Counter(
    "vllm_wrapper_client_disconnects_total",
    "Clients that went away before the response was complete, by phase.",
    ["phase"],
)
AUTH_FAILURES = Counter(
    "vllm_wrapper_auth_failures_total",
    "Requests rejected for a missing or invalid API key.",
)

RATE_LIMITED = Counter(
    "vllm_wrapper_rate_limited_total",
    "Requests refused with 429 by the API key's limits, by key and limit (requests, tokens, concurrency).",
    ["key", "limit"],
)
LIMITS_STORE_ERRORS = Counter(
    "vllm_wrapper_limits_store_errors_total",
    "Calls to the limits' counter store that failed (the requests went on without their limits).",
)
USAGE_REQUESTS = Counter(
    "vllm_wrapper_usage_requests_total",
    "Answered generation and embedding requests, by API key name and model (model_name, as vLLM names it).",
    ["key", "model_name"],
)
USAGE_TOKENS = Counter(
    "vllm_wrapper_usage_tokens_total",
    "Tokens by API key name, model and type (prompt, completion), from vLLM's own usage numbers.",
    ["key", "model_name", "type"],
)

# Labelled children, cached: .labels() costs a lock, a tuple and a dict lookup
# per call. Route labels are a closed set, key names and statuses are few.
_request_children: dict[tuple[str, int, str], Counter] = {}
_duration_children: dict[str, Histogram] = {}
_ttfb_children: dict[str, Histogram] = {}


def route_label(path: str) -> str:
    if path in KNOWN_ROUTES:
        return path
    if path.startswith(_RESPONSES):  # one label per route, not per response id
        response_id, slash, rest = path[len(_RESPONSES):].partition("/")
        if response_id and (rest == "cancel" or not slash):
            return "/v1/responses/{response_id}" + slash + rest
    return "other"


def observe_request(route: str, status: int, key: str, duration: float) -> None:
    ident = (route, status, key)
    child = _request_children.get(ident)
    if child is None:
        child = _request_children[ident] = REQUESTS.labels(route, str(status), key)
    child.inc()
    hist = _duration_children.get(route)
    if hist is None:
        hist = _duration_children[route] = DURATION.labels(route)
    hist.observe(duration)


def observe_ttfb(route: str, seconds: float) -> None:
    hist = _ttfb_children.get(route)
    if hist is None:
        hist = _ttfb_children[route] = TTFB.labels(route)
    hist.observe(seconds)


_usage_children: dict[tuple[str, str], tuple[Counter, Counter, Counter]] = {}


def observe_usage(key: str, model: str, prompt: int, completion: int) -> None:
    children = _usage_children.get((key, model))
    if children is None:
        children = _usage_children[key, model] = (
            USAGE_REQUESTS.labels(key, model), USAGE_TOKENS.labels(key, model, "prompt"),
            USAGE_TOKENS.labels(key, model, "completion"))
    children[0].inc()
    if prompt:
        children[1].inc(prompt)
    if completion:
        children[2].inc(completion)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
