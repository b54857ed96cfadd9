"""Auth, error statuses, and byte-exact unbuffered relay (scripted upstream)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from .conftest import API_KEYS, MODEL_NAME, Wrapper, free_port, metric_value
from .stub_upstream import SSE_CHUNKS, StubUpstream

CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


def _error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEYS["alice"]},
     {"Authorization": "Basic " + API_KEYS["alice"]}],
)
def test_401_without_valid_key(auth_wrapper: Wrapper, headers: dict) -> None:
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                         ("POST", "/chat"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
                         ("POST", "/v1/responses"), ("GET", "/v1/responses/resp_1"),
                         ("POST", "/v1/responses/resp_1/cancel"), ("POST", "/tokenize"),
                         ("POST", "/detokenize"), ("POST", "/v1/messages"),
                         ("POST", "/v1/messages/count_tokens"),
                         ("POST", "/v1/chat/completions/render"),
                         ("POST", "/v1/completions/render")):
        r = httpx.request(method, auth_wrapper.url + path, json=CHAT, headers=headers)
        assert r.status_code == 401, path
        assert _error(r)["code"] == "invalid_api_key"


@pytest.mark.parametrize("name", ["alice", "bob"])
def test_valid_keys_inline_and_file(auth_wrapper: Wrapper, name: str) -> None:
    r = httpx.post(auth_wrapper.url + "/v1/chat/completions", json=CHAT, timeout=60,
                   headers={"Authorization": f"Bearer {API_KEYS[name]}"})
    assert r.status_code == 200, r.text
    text = httpx.get(auth_wrapper.url + "/metrics").text
    assert metric_value(text, "vllm_wrapper_requests_total", key=name, status="200") >= 1


def test_open_paths_need_no_key(auth_wrapper: Wrapper) -> None:
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(auth_wrapper.url + path).status_code == 200, path


def test_key_is_not_sent_to_vllm(start_wrapper) -> None:
    stub = StubUpstream(mode="sse", gap=0.0)
    try:
        w = start_wrapper(VLLM_UPSTREAM_URL=stub.url, VLLM_WRAPPER_API_KEY="client-key-xyz",
                          VLLM_UPSTREAM_API_KEY="upstream-key-abc")
        r = httpx.post(w.url + "/v1/chat/completions", json=CHAT,
                       headers={"Authorization": "Bearer client-key-xyz"})
        assert r.status_code == 200
        raw = stub.requests[0]
        assert b"client-key-xyz" not in raw
        assert b"authorization: bearer upstream-key-abc" in raw.lower()
        assert b'"max_tokens":2' in raw.replace(b" ", b"")
    finally:
        stub.close()


def test_413_body_too_large(start_wrapper, vllm_url: str) -> None:
    w = start_wrapper(VLLM_UPSTREAM_URL=vllm_url, VLLM_WRAPPER_MAX_BODY_BYTES="1000")
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
    r = httpx.post(w.url + "/v1/chat/completions", json=big)
    assert r.status_code == 413
    assert "VLLM_WRAPPER_MAX_BODY_BYTES" in _error(r)["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for _ in range(5):
            yield b"x" * 300

    r = httpx.post(w.url + "/v1/chat/completions", content=chunks())
    assert r.status_code == 413
    small = httpx.post(w.url + "/v1/chat/completions", json=CHAT, timeout=60)
    assert small.status_code == 200


def test_503_when_upstream_down(start_wrapper) -> None:
    w = start_wrapper(VLLM_UPSTREAM_URL=f"http://127.0.0.1:{free_port()}",
                      VLLM_WRAPPER_RETRY_AFTER="7")
    for method, path, body in (("POST", "/v1/chat/completions", CHAT), ("GET", "/v1/models", None),
                               ("POST", "/chat", {"messages": CHAT["messages"], "model": "m"})):
        r = httpx.request(method, w.url + path, json=body)
        assert r.status_code == 503, path
        assert r.headers["retry-after"] == "7"
        assert _error(r)["code"] == "upstream_unavailable"
    ready = httpx.get(w.url + "/ready")
    assert ready.status_code == 503
    assert "unreachable" in _error(ready)["message"]
    assert ready.headers["retry-after"] == "7"
    # /chat without a model must discover it, which also fails cleanly
    r = httpx.post(w.url + "/chat", json={"messages": CHAT["messages"]})
    assert r.status_code == 503
    assert httpx.get(w.url + "/health").status_code == 200


def test_504_when_upstream_times_out(start_wrapper) -> None:
    stub = StubUpstream(mode="stall")
    try:
        w = start_wrapper(VLLM_UPSTREAM_URL=stub.url, VLLM_UPSTREAM_TIMEOUT="0.5")
        t0 = time.monotonic()
        r = httpx.post(w.url + "/v1/chat/completions", json=CHAT, timeout=10)
        assert r.status_code == 504
        assert _error(r)["code"] == "upstream_timeout"
        assert time.monotonic() - t0 < 5
        assert stub.closed.wait(5), "timed-out upstream connection was not closed"
    finally:
        stub.close()


def test_stream_relayed_byte_for_byte_without_buffering(start_wrapper) -> None:
    stub = StubUpstream(mode="sse", gap=0.4)
    try:
        w = start_wrapper(VLLM_UPSTREAM_URL=stub.url)
        received: list[tuple[float, bytes]] = []
        with httpx.stream("POST", w.url + "/v1/chat/completions",
                          json={**CHAT, "stream": True}, timeout=10) as r:
            assert r.status_code == 200
            assert r.headers["x-accel-buffering"] == "no"
            assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
            for chunk in r.iter_raw():
                received.append((time.monotonic(), chunk))
        assert b"".join(c for _, c in received) == b"".join(SSE_CHUNKS)
        # Each upstream chunk reaches the client long before the next one is sent.
        first_arrival = received[0][0]
        assert first_arrival < stub.chunk_sent_at[1]
        assert len(received) >= len(SSE_CHUNKS) - 1
    finally:
        stub.close()


def test_upstream_5xx_passes_through(start_wrapper) -> None:
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    body = b'{"error":{"message":"engine dead","type":"InternalServerError","param":null,"code":500}}'

    def serve() -> None:
        for _ in range(2):
            conn, _ = srv.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json"
                             b"\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))

    threading.Thread(target=serve, daemon=True).start()
    try:
        w = start_wrapper(VLLM_UPSTREAM_URL=f"http://127.0.0.1:{srv.getsockname()[1]}")
        r = httpx.post(w.url + "/v1/completions", json={"prompt": "x"})
        assert r.status_code == 500
        assert r.content == body
    finally:
        srv.close()
