"""A fast OpenAI-compatible upstream simulator for the gateway benchmark.

Fixed time to first token (--ttft) and inter-token gap (--itl), --tokens
tokens per answer, so the gateway under test, not the model, is the
bottleneck. Serves POST /v1/chat/completions (stream or not), GET /v1/models
and GET /health over HTTP/1.1 keep-alive. Raw asyncio protocol on uvloop."""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
import uvloop

MODEL = "sim"


class Sim(asyncio.Protocol):
    ttft = 0.01
    itl = 0.002
    tokens = 16
    model = MODEL

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""
        self.busy = False
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buf[:head_end]
        length = 0
        lower = head.lower()
        idx = lower.find(b"content-length:")
        if idx >= 0:
            end = lower.find(b"\r\n", idx)
            length = int(lower[idx + 15:end if end >= 0 else None])
        total = head_end + 4 + length
        if len(self.buf) < total:
            return
        body = self.buf[head_end + 4:total]
        self.buf = self.buf[total:]
        line = head.split(b"\r\n", 1)[0]
        method, path = line.split(b" ")[:2]
        self.busy = True
        self.task = asyncio.ensure_future(self._respond(method, path, body))

    def _send(self, status: str, body: bytes) -> None:
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status.encode(), len(body), body)
        )

    async def _respond(self, method: bytes, path: bytes, body: bytes) -> None:
        try:
            if path in (b"/health", b"/ready"):
                self._send("200 OK", b"")
            elif path == b"/v1/models":
                self._send("200 OK", orjson.dumps({"object": "list", "data": [
                    {"id": self.model, "object": "model", "owned_by": "sim"}]}))
            elif method == b"POST" and path in (b"/v1/chat/completions", b"/v1/completions"):
                compact = body.replace(b" ", b"")
                if b'"stream":true' in compact:
                    await self._stream(b'"include_usage":true' in compact)
                else:
                    await asyncio.sleep(self.ttft + (self.tokens - 1) * self.itl)
                    self._send("200 OK", orjson.dumps({
                        "id": "chatcmpl-sim", "object": "chat.completion",
                        "created": int(time.time()), "model": self.model,
                        "choices": [{"index": 0, "finish_reason": "length", "message": {
                            "role": "assistant", "content": "tok " * self.tokens}}],
                        "usage": {"prompt_tokens": 8, "completion_tokens": self.tokens,
                                  "total_tokens": 8 + self.tokens},
                    }))
            else:
                self._send("404 Not Found", b'{"error":{"message":"not found"}}')
        except asyncio.CancelledError:
            return
        self.busy = False
        if not self.closed and self.buf:
            self._next()

    async def _stream(self, include_usage: bool = False) -> None:
        w = self.transport.write
        w(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        created = int(time.time())
        await asyncio.sleep(self.ttft)
        for i in range(self.tokens):
            if i:
                await asyncio.sleep(self.itl)
            if self.closed:
                return
            event = b"data: " + orjson.dumps({
                "id": "chatcmpl-sim", "object": "chat.completion.chunk", "created": created,
                "model": self.model, "choices": [{"index": 0, "delta": {"content": "tok "},
                                             "finish_reason": None}],
            }) + b"\n\n"
            w(b"%x\r\n%s\r\n" % (len(event), event))
        if include_usage:  # vLLM's last chunk when the request asks for usage
            event = b"data: " + orjson.dumps({
                "id": "chatcmpl-sim", "object": "chat.completion.chunk", "created": created,
                "model": self.model, "choices": [],
                "usage": {"prompt_tokens": 8, "completion_tokens": self.tokens,
                          "total_tokens": 8 + self.tokens},
            }) + b"\n\n"
            w(b"%x\r\n%s\r\n" % (len(event), event))
        done = b"data: [DONE]\n\n"
        w(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sim, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--ttft", type=float, default=0.01, help="seconds to first token")
    parser.add_argument("--itl", type=float, default=0.002, help="seconds between tokens")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--model", default=MODEL, help="the model name it serves")
    args = parser.parse_args()
    Sim.ttft, Sim.itl, Sim.tokens, Sim.model = args.ttft, args.itl, args.tokens, args.model
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
