"""Upstream (vLLM) client and the relay of its responses to the client.

Streaming responses are relayed chunk by chunk as they arrive. Every relay
races the client's disconnect: when the client goes away, in any phase, the
upstream request is cancelled and its connection closed, so vLLM aborts the
request and frees the slot."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from . import metrics, usage
from .config import Settings
from .errors import error_bytes
from .requestinfo import RequestInfo

log = logging.getLogger("vllm_wrapper.proxy")

_PASS_RESPONSE_HEADERS = ("content-type", "content-encoding")


class UpstreamUnavailable(Exception):
    """vLLM could not be reached; the message says why."""


class Upstream:
    """One vLLM server. `name` is its instance name in VLLM_UPSTREAMS (None for the
    single VLLM_UPSTREAM_URL); error messages name it."""

    def __init__(self, settings: Settings, base: str | None = None,
                 name: str | None = None) -> None:
        self.settings = settings
        self.base = settings.upstream_url if base is None else base
        self.name = name
        self.label = "vLLM" if name is None else f"vLLM instance {name!r}"
        # Subject of the timeout and disconnect messages (unchanged for one upstream).
        self.subject = "upstream" if name is None else f"upstream ({self.label})"
        # Proxied requests to this upstream now (this worker), for least-busy routing.
        self.in_flight = 0
        self.session: aiohttp.ClientSession | None = None
        self._auth_header: str | None = (
            f"Bearer {settings.upstream_api_key}" if settings.upstream_api_key else None
        )
        self._model: str | None = settings.served_model

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.settings.upstream_max_connections,
            # Below uvicorn's (vLLM's) 5 s keep-alive so we never reuse a
            # connection the server is about to close.
            keepalive_timeout=3.0,
            ttl_dns_cache=60,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self.settings.upstream_connect_timeout,
                sock_read=self.settings.upstream_timeout,
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def headers(self, request_id: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        if self._auth_header:
            headers["Authorization"] = self._auth_header
        return headers

    async def check_health(self) -> str | None:
        """None when vLLM's /health answers 200, else the reason it is not ready."""
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(total=self.settings.ready_timeout)
        try:
            async with self.session.get(f"{self.base}/health", timeout=timeout) as resp:
                await resp.read()
                if resp.status == 200:
                    return None
                return f"upstream /health returned HTTP {resp.status}"
        except TimeoutError:
            return f"upstream /health did not answer within {self.settings.ready_timeout} s"
        except aiohttp.ClientError as exc:
            return f"upstream unreachable: {type(exc).__name__}: {exc}"

    async def served_model(self, request_id: str) -> str:
        """VLLM_SERVED_MODEL, or the first model vLLM lists (cached once found)."""
        if self._model is not None:
            return self._model
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(total=self.settings.ready_timeout)
        try:
            async with self.session.get(
                f"{self.base}/v1/models", headers=self.headers(request_id), timeout=timeout
            ) as resp:
                data: Any = await resp.json(content_type=None)
            self._model = str(data["data"][0]["id"])
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise UpstreamUnavailable(f"cannot discover the served model: {exc}") from None
        return self._model


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class ProxyResponse(Response):
    """An ASGI response that forwards one request to vLLM and relays the answer."""

    def __init__(
        self, upstream: Upstream, method: str, path: str, body: bytes | None, info: RequestInfo
    ) -> None:  # Response.__init__ is deliberately not called: we send ourselves.
        self.upstream = upstream
        self.method = method
        self.path = path
        self.body = body
        self.info = info
        self.phase = "upstream_wait"
        self.complete = False
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = asyncio.ensure_future(self._relay(send))
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait((relay, watcher), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            relay.cancel()
            raise
        finally:
            if not watcher.done():
                watcher.cancel()
        if relay.done():
            exc = relay.exception()
            if exc is None or self.complete:
                return
            if isinstance(exc, OSError):  # raised by send() once the client is gone
                self._client_gone()
                return
            raise exc
        if self.complete:
            await relay
            return
        relay.cancel()
        try:
            await relay
        except (asyncio.CancelledError, OSError):
            pass
        self._client_gone()

    def _client_gone(self) -> None:
        self.info.client_disconnected = True
        metrics.CLIENT_DISCONNECTS.labels(self.phase).inc()

    def _upstream_failed(self, reason: str) -> None:
        """Counts an upstream failure (connect, timeout, protocol) and logs its reason."""
        metrics.UPSTREAM_ERRORS.labels(reason).inc()
        self.info.upstream_error = reason

    async def _send_error(self, send: Send, status: int, message: str, code: str,
                          retry_after: bool = False) -> None:
        headers = [(b"content-type", b"application/json")]
        if retry_after:
            headers.append((b"retry-after", str(self.upstream.settings.retry_after).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        self.complete = True
        await send({"type": "http.response.body", "body": error_bytes(status, message, code=code)})

    async def _relay(self, send: Send) -> None:
        try:
            resp = await self._request(self.upstream)
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self._send_failure(send, exc)
            return
        await self._relay_and_release(resp, send)

    async def _request(self, upstream: Upstream) -> aiohttp.ClientResponse:
        assert upstream.session is not None
        return await upstream.session.request(
            self.method, upstream.base + self.path, data=self.body,
            headers=upstream.headers(self.info.request_id),
        )

    async def _send_failure(self, send: Send, exc: BaseException) -> None:
        """The error answer for an upstream that could not be asked (no response)."""
        upstream = self.upstream
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            self._upstream_failed("connect")
            await self._send_error(
                send, 503,
                f"upstream ({upstream.label}) did not accept a connection within "
                f"{upstream.settings.upstream_connect_timeout} s",
                "upstream_unavailable", retry_after=True,
            )
        elif isinstance(exc, TimeoutError):
            self._upstream_failed("timeout")
            await self._send_error(
                send, 504,
                f"{upstream.subject} did not answer within {upstream.settings.upstream_timeout} s",
                "upstream_timeout",
            )
        elif isinstance(exc, aiohttp.ServerDisconnectedError):
            self._upstream_failed("protocol")
            await self._send_error(send, 502,
                                   f"{upstream.subject} closed the connection without answering",
                                   "upstream_disconnected", retry_after=True)
        else:
            self._upstream_failed("connect")
            log.warning("upstream unreachable: %s: %s", type(exc).__name__, exc,
                        extra={"fields": {"request_id": self.info.request_id,
                                          "instance": upstream.name}})
            await self._send_error(send, 503, f"upstream ({upstream.label}) is unavailable",
                                   "upstream_unavailable", retry_after=True)

    async def _relay_and_release(self, resp: aiohttp.ClientResponse, send: Send) -> None:
        try:
            await self._relay_response(resp, send)
        finally:
            # close(), not release(): on an early exit the connection must be
            # dropped so vLLM notices and aborts the request.
            if self.complete and resp.content.at_eof():
                resp.release()
            else:
                resp.close()

    async def _relay_response(self, resp: aiohttp.ClientResponse, send: Send) -> None:
        self.info.upstream_status = resp.status
        content_type = resp.headers.get("Content-Type", "")
        headers: list[tuple[bytes, bytes]] = [
            (name.encode(), resp.headers[name].encode())
            for name in _PASS_RESPONSE_HEADERS if name in resp.headers
        ]
        if content_type.startswith("text/event-stream"):
            self.info.stream = True
            headers.append((b"cache-control", b"no-cache"))
            headers.append((b"x-accel-buffering", b"no"))
            self.phase = "streaming"
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            first = True
            pending = b""
            try:
                async for chunk in resp.content.iter_any():
                    if first:
                        self.info.ttfb = time.perf_counter() - self.info.start
                        first = False
                    if self.info.counted:
                        chunk, pending = usage.scan_stream(self.info, pending + chunk)
                        if not chunk:
                            continue
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if pending:
                    await send({"type": "http.response.body", "body": pending, "more_body": True})
            except (TimeoutError, aiohttp.ClientError) as exc:
                reason = "timeout" if isinstance(exc, TimeoutError) else "protocol"
                self._upstream_failed(reason)
                event = b"data: " + error_bytes(502, f"{self.upstream.subject} stream ended "
                                                f"abnormally ({reason})",
                                                code="upstream_" + reason) + b"\n\n"
                await send({"type": "http.response.body", "body": event, "more_body": True})
            self.complete = True
            await send({"type": "http.response.body", "body": b""})
            return
        self.phase = "body"
        try:
            body = await resp.read()
        except TimeoutError:
            self._upstream_failed("timeout")
            await self._send_error(send, 504,
                                   f"{self.upstream.subject} timed out while sending its answer",
                                   "upstream_timeout")
            return
        except aiohttp.ClientError:
            self._upstream_failed("protocol")
            await self._send_error(send, 502,
                                   f"{self.upstream.subject} connection failed mid-answer",
                                   "upstream_disconnected", retry_after=True)
            return
        if self.info.counted and resp.status == 200:
            usage.record_body(self.info, body)
        headers.append((b"content-length", str(len(body)).encode()))
        self.info.ttfb = time.perf_counter() - self.info.start
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        self.complete = True
        await send({"type": "http.response.body", "body": body})


def replay_receive(body: bytes, receive: Receive) -> Receive:
    """A receive() that first yields the already-read body, then the real channel."""
    sent = False

    async def _receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return _receive
