"""A scripted fake upstream for the cases real vLLM cannot produce on demand:
exact SSE bytes with gaps (byte-for-byte relay, no buffering), requests that
never get an answer (timeouts, disconnect before the first byte), and an
upstream that drops the connection (before answering, mid-body, mid-stream).
In mode "api" it plays one named vLLM instance for the routing tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field

SSE_CHUNKS = [
    b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n',
    b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"b\\u00e9"}}]}\n\n',
    b": keep-alive comment\n\n",
    b"data: [DONE]\n\n",
]


@dataclass
class StubUpstream:
    """mode: "sse" (SSE_CHUNKS, gap seconds apart), "stall" (never answer),
    "headers_then_stall" (SSE headers, then nothing), "drop" (close without
    answering), "drop_mid_body" (a JSON answer's headers and half its body, then
    close), "drop_mid_stream" (the first two SSE_CHUNKS, then close without the
    chunked encoding's last chunk), "hold" (the first two SSE_CHUNKS, then the rest
    once `release` is set: a stream that stays in flight until the test ends it),
    "api" (a vLLM instance named `name` serving `models`: /health, /v1/models, the
    `response_ids` it stores under GET /v1/responses/{id}[?stream=true] and
    /cancel, 404 for other ids; any other POST answers a chat completion whose
    content is `name`, or, with "stream": true in the body, a "hold" stream)."""

    mode: str = "sse"
    name: str = "stub"
    models: tuple[str, ...] = ("tiny",)
    response_ids: tuple[str, ...] = ()
    gap: float = 0.3
    port: int = 0
    closed: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[bytes] = field(default_factory=list)
    chunk_sent_at: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self.release.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body

    def _wait_close(self, conn: socket.socket, limit: float = 30.0) -> None:
        conn.settimeout(0.1)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                if conn.recv(1024) == b"":
                    self.closed.set()
                    return
            except TimeoutError:
                continue
            except OSError:
                self.closed.set()
                return

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            request = self._read_request(conn)
            self.requests.append(request)
            if self.mode == "stall":
                self._wait_close(conn)
                return
            if self.mode == "drop":
                return
            if self.mode == "api" and self._api(conn, request):
                return
            if self.mode == "drop_mid_body":
                body = b'{"id":"x","object":"chat.completion","choices":[]}'
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body[:20]))
                return
            head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                    b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")
            conn.sendall(head)
            if self.mode == "headers_then_stall":
                self._wait_close(conn)
                return
            for index, chunk in enumerate(SSE_CHUNKS):
                if index == 2 and self.mode == "drop_mid_stream":
                    return
                if index == 2 and self.mode in ("hold", "api"):
                    self.release.wait(60)
                if index:
                    time.sleep(self.gap)
                self.chunk_sent_at.append(time.monotonic())
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.sendall(b"0\r\n\r\n")

    def _api(self, conn: socket.socket, request: bytes) -> bool:
        """Answers a JSON request as a vLLM instance would; False for a held stream."""
        head, _, body = request.partition(b"\r\n\r\n")
        method, target = head.split(b" ")[:2]
        path, _, query = target.decode().partition("?")
        status, answer = 200, None
        if path == "/health":
            answer = {}
        elif path == "/v1/models":
            answer = {"object": "list", "data": [
                {"id": m, "object": "model", "owned_by": "vllm", "root": self.name}
                for m in self.models]}
        elif path.startswith("/v1/responses/"):
            response_id = path.split("/")[3]
            if response_id not in self.response_ids:
                status, answer = 404, {"error": {"message": f"Response with id '{response_id}' "
                                                 "not found.", "type": "NotFoundError",
                                                 "param": None, "code": 404}}
            elif query == "stream=true":
                return False
            else:
                answer = {"id": response_id, "object": "response", "instance": self.name,
                          "status": "cancelled" if path.endswith("/cancel") else "completed"}
        elif method == b"POST":
            if json.loads(body or b"{}").get("stream") is True:
                return False
            answer = {"id": "chatcmpl-" + self.name, "object": "chat.completion", "created": 1,
                      "model": json.loads(body).get("model"), "choices": [{
                          "index": 0, "finish_reason": "stop",
                          "message": {"role": "assistant", "content": self.name}}]}
        else:
            status, answer = 404, {"error": {"message": "Not Found"}}
        data = json.dumps(answer).encode()
        conn.sendall(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                     % (status, len(data), data))
        return True
