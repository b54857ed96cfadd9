"""One pure-ASGI middleware for every cross-cutting concern (cheaper than a
stack of BaseHTTPMiddleware): request id, drain, auth, body-size limit,
in-flight count, metrics and the JSON access log.

The proxied OpenAI routes (exact method and path) are dispatched here directly
to their handler, skipping FastAPI's routing, dependency solving and exception
middlewares, which would otherwise wrap every request and every streamed chunk
in more coroutine layers. The handlers are the same functions the FastAPI
routes call (those routes stay for the OpenAPI schema)."""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Mapping

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics, usage
from .auth import KeyStore
from .config import Settings
from .drain import Drain
from .errors import error_bytes
from .limits import Limiter, refusal_message
from .logs import access_log
from .proxy import replay_receive
from .requestinfo import RequestInfo

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", "/docs", "/openapi.json"})
# Still served while draining: liveness and metrics; /ready answers 503 itself.
DRAIN_EXEMPT = frozenset({"/health", "/ready", "/metrics"})
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,128}$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
INFO_KEY = "vllm_wrapper.info"
# No generation: not counted against a key's limits (vllm-router asks /render before every request it routes).
UNMETERED = frozenset({"/v1/chat/completions/render", "/v1/completions/render", "/tokenize", "/detokenize",
                       "/v1/messages/count_tokens"})
_LIMIT_CODES = {"requests": "rate_limit_exceeded", "tokens": "rate_limit_exceeded",
                "concurrency": "concurrency_limit_exceeded"}
# (method, path) -> handler building the response from the request's info.
FastRoutes = Mapping[tuple[str, str], Callable[[RequestInfo], Response]]


async def send_error(
    send: Send, status: int, message: str, code: str,
    headers: list[tuple[bytes, bytes]] | None = None, type_: str | None = None,
) -> None:
    body = error_bytes(status, message, code=code, type_=type_)
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *(headers or ()),
        ],
    })
    await send({"type": "http.response.body", "body": body})


class WrapperMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, keys: KeyStore, drain: Drain,
                 fast_routes: FastRoutes | None = None, limiter: Limiter | None = None) -> None:
        self.app = app
        self.limiter = limiter
        self.settings = settings
        self.keys = keys
        self.drain = drain
        self.fast_routes: FastRoutes = {} if fast_routes is None else fast_routes
        self.retry_after = str(settings.retry_after).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope["headers"])
        raw_id = headers.get(b"x-request-id")
        if raw_id is not None and _REQUEST_ID.match(raw_id):
            request_id = raw_id.decode()
        else:
            request_id = os.urandom(12).hex()
        info = RequestInfo(request_id=request_id, start=start)
        pinned = headers.get(b"x-gpufleet-instance")
        if pinned is not None:
            info.instance = pinned.decode("latin-1")
        info.fleet_scope = headers.get(b"x-gpufleet-scope") == b"fleet"
        scope[INFO_KEY] = info
        path: str = scope["path"]
        bytes_out = 0
        id_header = (b"x-request-id", request_id.encode())

        async def send_wrapper(message: Message) -> None:
            nonlocal bytes_out
            if message["type"] == "http.response.body":
                bytes_out += len(message.get("body", b""))
            elif message["type"] == "http.response.start":
                info.status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header,
                                      *(() if info.grant is None else info.grant.headers)]
            await send(message)

        counted = path not in DRAIN_EXEMPT
        if counted:
            self.drain.enter()
            metrics.IN_FLIGHT.inc()
        try:
            await self._handle(scope, receive, send_wrapper, path, headers, info)
        finally:
            if info.grant is not None:
                assert self.limiter is not None
                self.limiter.release(info.grant, info.prompt_tokens + info.completion_tokens)
            if counted:
                self.drain.leave()
                metrics.IN_FLIGHT.dec()
            duration = time.perf_counter() - start
            status = 500 if info.status is None else info.status
            route = metrics.route_label(path)
            metrics.observe_request(route, status, info.key_name, duration)
            usage.observe(info)
            if info.ttfb is not None and info.stream:
                metrics.observe_ttfb(route, info.ttfb)
            if self.settings.access_log:
                access_log.info("", extra={"fields": {
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "duration_ms": round(duration * 1000, 3),
                    "ttfb_ms": None if info.ttfb is None else round(info.ttfb * 1000, 3),
                    "key": info.key_name,
                    "client": scope["client"][0] if scope.get("client") else None,
                    "upstream_status": info.upstream_status,
                    "upstream_error": info.upstream_error,
                    "stream": info.stream,
                    "bytes_out": bytes_out,
                    "client_disconnected": info.client_disconnected,
                }})

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, path: str,
        headers: dict[bytes, bytes], info: RequestInfo,
    ) -> None:
        if self.drain.draining and path not in DRAIN_EXEMPT:
            await send_error(send, 503, "vllm-wrapper is shutting down", "draining",
                             [(b"retry-after", self.retry_after), (b"connection", b"close")])
            return
        if self.keys.enabled and path not in OPEN_PATHS:
            key = self.keys.identify(headers.get(b"authorization"))
            refusal = (("missing or invalid API key (send Authorization: Bearer <key>)", "invalid_api_key")
                       if key is None else key.refusal())
            if refusal is not None:
                metrics.AUTH_FAILURES.inc()
                await send_error(send, 401, refusal[0], refusal[1], [(b"www-authenticate", b"Bearer")])
                return
            assert key is not None
            info.key_name = key.name
            info.key_models = key.models
            if (key.limits is not None and self.limiter is not None and scope["method"] == "POST"
                    and path not in UNMETERED):
                grant = await self.limiter.acquire(key.name, key.limits)
                if grant is not None and grant.refused:
                    metrics.RATE_LIMITED.labels(key.name, grant.refused).inc()
                    wait = grant.retry_after
                    await send_error(send, 429, refusal_message(grant), _LIMIT_CODES[grant.refused], [
                        (b"retry-after", str(max(1, math.ceil(wait))).encode()),
                        (b"retry-after-ms", str(max(1, math.ceil(wait * 1000))).encode()),
                        *grant.headers], type_=grant.refused)
                    return
                info.grant = grant
        method: str = scope["method"]
        if method in _BODY_METHODS:
            body = await self._read_body(receive, send, headers)
            if body is None:
                return
            info.body = body
            handler = self.fast_routes.get((method, path))
            if handler is None:
                receive = replay_receive(body, receive)
        else:
            handler = self.fast_routes.get((method, path))
        if handler is None:
            await self.app(scope, receive, send)
            return
        # The body is consumed, so receive() now only reports the disconnect,
        # which is all a proxied response listens for. An exception goes up to
        # ServerErrorMiddleware (outside this middleware), as from a route.
        await handler(info)(scope, receive, send)

    async def _read_body(
        self, receive: Receive, send: Send, headers: dict[bytes, bytes]
    ) -> bytes | None:
        limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        too_large = f"request body larger than {limit} bytes (VLLM_WRAPPER_MAX_BODY_BYTES)"
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await send_error(send, 413, too_large, "request_too_large",
                             [(b"connection", b"close")])
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_error(send, 413, too_large, "request_too_large",
                                 [(b"connection", b"close")])
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
