"""Per-request facts gathered for the access log and metrics (never the body)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class RequestInfo:
    request_id: str
    start: float
    key_name: str = "-"
    # The models the request's key may use (None: every model, or no keys configured).
    key_models: frozenset[str] | None = None
    upstream_status: int | None = None
    upstream_error: str | None = None
    stream: bool = False
    ttfb: float | None = None
    client_disconnected: bool = False
    body: bytes = b""
    # X-Gpufleet-Instance: the vLLM instance the request is pinned to (None: routed by model).
    instance: str | None = None
    # X-Gpufleet-Scope: fleet (the edge's /v1/models: the fleet's list).
    fleet_scope: bool = False
    # Usage accounting (usage.py): counted route, the model, tokens from vLLM's usage, and whether
    # the stream's usage chunk was asked for by the wrapper only (and is dropped again).
    counted: bool = False
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    strip_usage: bool = False
    # The key's place in its limits (limits.Grant) while the request runs.
    grant: Any = None
    # Response status once http.response.start was sent (None before).
    status: int | None = None
