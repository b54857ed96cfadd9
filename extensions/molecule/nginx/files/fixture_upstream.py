"""TEST FIXTURE standing in for vllm-wrapper on 127.0.0.1:8001 in the nginx Molecule scenario.

Answers the wrapper's public paths with small JSON bodies; POST with {"stream": true} answers
server-sent events, one chunk every STREAM_GAP seconds, so a test can tell whether nginx buffers.
Every JSON body echoes what nginx forwarded (path, Authorization seen, X-Forwarded-*).
"""

import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STREAM_CHUNKS = 6
STREAM_GAP = 0.5


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keepalive, as nginx's upstream keepalive expects
    # Headers and body go out in separate writes; without TCP_NODELAY each response waits ~40 ms
    # for a delayed ACK, too slow for the rate-limit tests' bursts.
    disable_nagle_algorithm = True

    def _send(self, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _echo(self):
        return {
            "fixture": "fixture-upstream",
            "path": self.path,
            "authorization_seen": bool(self.headers.get("Authorization")),
            "x_forwarded_for": self.headers.get("X-Forwarded-For"),
            "x_forwarded_proto": self.headers.get("X-Forwarded-Proto"),
        }

    def do_GET(self):
        if self.path in ("/health", "/ready"):
            self._send(200, {"status": "ok", **self._echo()})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "fixture-model", "object": "model"}], **self._echo()})
        elif self.path == "/metrics":
            self._send(200, b"# fixture metrics\nfixture_up 1\n", "text/plain; version=0.0.4")
        elif self.path == "/docs":
            self._send(200, b"<html><body>fixture docs</body></html>", "text/html")
        elif self.path == "/openapi.json":
            self._send(200, {"openapi": "3.1.0", "info": {"title": "fixture"}, "paths": {}})
        elif self.path.startswith("/v1/responses/"):
            self._send(200, {"object": "response", **self._echo()})
        else:
            self._send(404, {"error": {"message": "fixture: no such path", "type": "not_found_error",
                                       "param": None, "code": None}})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        if not body.get("stream"):
            self._send(200, {"object": "chat.completion", "bytes_received": len(raw), **self._echo()})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(STREAM_CHUNKS):
            self._chunk(f"data: {json.dumps({'index': i, 't': time.time()})}\n\n".encode())
            time.sleep(STREAM_GAP)
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, data):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", 8001), Handler).serve_forever()
