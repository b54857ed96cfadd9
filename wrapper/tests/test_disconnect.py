"""A client that goes away must free vLLM's slot in every phase: proved with
vLLM's own vllm:num_requests_running returning to 0 (well before the generation would have ended),
and, for the phase before the first byte, with a scripted upstream that sees
its connection closed."""

from __future__ import annotations

import socket
import time

import httpx
import orjson
import pytest

from .conftest import MODEL_NAME, Wrapper, metric_value, wait_until
from .stub_upstream import StubUpstream

# ~1000 tokens takes vLLM CPU about 2 s with the tiny model: long enough to
# disconnect mid-way, and it would still be running if the abort failed.
LONG = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 1000, "ignore_eos": True}


def _vllm_metrics(vllm_url: str) -> str:
    return httpx.get(vllm_url + "/metrics").text


def _running(vllm_url: str) -> float:
    return metric_value(_vllm_metrics(vllm_url), "vllm:num_requests_running")


def _generated(vllm_url: str) -> float:
    return metric_value(_vllm_metrics(vllm_url), "vllm:generation_tokens_total")


def _raw_request(url: str, path: str, body: dict) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    payload = orjson.dumps(body)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (path.encode(), len(payload), payload)
    )
    return sock


def _read_events(sock: socket.socket, count: int) -> bytes:
    data = b""
    while data.count(b"data: ") < count:
        chunk = sock.recv(65536)
        assert chunk, "stream ended early"
        data += chunk
    assert b"200 OK" in data.split(b"\r\n")[0]
    return data


def _send_seen_running(vllm_url: str, url: str, path: str, body: dict) -> tuple[socket.socket, float]:
    """Sends the request and returns once vLLM shows it running, with vLLM's generated-token count
    from before it. vLLM updates its running gauge only now and then, and a whole 1000-token answer
    can take as little as 1.5 s on a free machine: a request that ends before it is ever seen
    running, or is seen only when most of it is generated (a busy machine: the gauge lags), tested
    nothing yet, so it is sent again (at most five times)."""
    for _attempt in range(5):
        assert wait_until(lambda: _running(vllm_url) == 0, 30)
        generated_before = _generated(vllm_url)
        sock = _raw_request(url, path, body)
        if body.get("stream"):
            _read_events(sock, 3)
        if (wait_until(lambda: _running(vllm_url) >= 1, 10, 0.02)
                and _generated(vllm_url) - generated_before < body["max_tokens"] * 0.4):
            return sock, generated_before
        sock.close()
    pytest.fail("request never seen running early in vLLM (5 tries)")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat"])
def test_disconnect_mid_stream_aborts_vllm_request(wrapper: Wrapper, vllm_url: str,
                                                    path: str) -> None:
    body = {**LONG, "stream": True} if path != "/chat" else {
        "messages": LONG["messages"], "max_tokens": 1000, "stream": True}
    sock, generated_before = _send_seen_running(vllm_url, wrapper.url, path, body)
    t0 = time.monotonic()
    sock.close()
    assert wait_until(lambda: _running(vllm_url) == 0, 5, 0.02), "vLLM still running the request"
    assert time.monotonic() - t0 < 5
    time.sleep(3)  # longer than the whole generation would take
    assert _running(vllm_url) == 0
    assert _generated(vllm_url) - generated_before < LONG["max_tokens"] * 0.8, "not cut short"


def test_disconnect_non_streaming_aborts_vllm_request(wrapper: Wrapper, vllm_url: str) -> None:
    sock, generated_before = _send_seen_running(vllm_url, wrapper.url, "/v1/chat/completions", LONG)
    sock.close()
    assert wait_until(lambda: _running(vllm_url) == 0, 5, 0.02), "vLLM still running the request"
    time.sleep(3)  # longer than the whole generation would take
    assert _running(vllm_url) == 0
    assert _generated(vllm_url) - generated_before < LONG["max_tokens"] * 0.8, "not cut short"
    text = httpx.get(wrapper.url + "/metrics").text
    assert metric_value(text, "vllm_wrapper_client_disconnects_total") >= 1


@pytest.mark.parametrize("mode", ["stall", "headers_then_stall"])
def test_disconnect_before_first_byte_closes_upstream(start_wrapper, mode: str) -> None:
    stub = StubUpstream(mode=mode)
    try:
        w = start_wrapper(VLLM_UPSTREAM_URL=stub.url)
        sock = _raw_request(w.url, "/v1/chat/completions", {**LONG, "stream": True})
        assert wait_until(lambda: bool(stub.requests), 5, 0.02)
        time.sleep(0.2)
        assert not stub.closed.is_set()
        sock.close()
        assert stub.closed.wait(5), "upstream connection still open after client left"
    finally:
        stub.close()
