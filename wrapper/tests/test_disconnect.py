"""A client that goes away must free vLLM's slot in every phase: proved with vLLM's own counters
(the request began, and never finished on its own: vLLM aborted it), and, for the phase before
the first byte, with a scripted upstream that sees its connection closed."""

from __future__ import annotations

import socket
import time

import httpx
import orjson
import pytest

from .conftest import MODEL_NAME, Wrapper, metric_value, vllm_metric, wait_until
from .stub_upstream import StubUpstream

# 1000 tokens take vLLM CPU about 1 s with the tiny model (more on a busy machine): long enough to
# leave mid-way.
LONG = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 1000, "ignore_eos": True}
# Longer than a whole LONG generation: a request that was not aborted has finished by then.
SETTLE_S = 3


def _counts_when_idle(vllm_url: str) -> tuple[float, float]:
    """Once vLLM runs nothing: requests it finished on its own (vllm:request_success_total for every
    finished_reason but abort and error: stop, length, ...) and tokens it generated."""
    assert wait_until(lambda: vllm_metric(vllm_url, "vllm:num_requests_running") == 0, 30), \
        "vLLM still running a request"
    text = httpx.get(vllm_url + "/metrics").text  # one reading for all three
    finished = metric_value(text, "vllm:request_success_total") - sum(
        metric_value(text, "vllm:request_success_total", finished_reason=reason)
        for reason in ("abort", "error"))
    return finished, metric_value(text, "vllm:generation_tokens_total")


def _raw_request(url: str, path: str, body: dict) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    payload = orjson.dumps(body)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (path.encode(), len(payload), payload)
    )
    return sock


def _read_events(sock: socket.socket, count: int) -> None:
    """Reads until `count` events came, or the stream ended (an early end of sequence on /chat,
    which has no ignore_eos: vLLM then counts the request finished, and the try is made again)."""
    data = b""
    while data.count(b"data: ") < count and (chunk := sock.recv(65536)):
        data += chunk
    assert b"200 OK" in data.split(b"\r\n")[0]


def _leave_mid_request(vllm_url: str, url: str, path: str, body: dict) -> None:
    """Sends body, leaves while vLLM generates, and asserts that vLLM aborted the request: it
    generated tokens for it and never finished it. A streamed request is left after its third
    event; a non-streamed one after a delay, since nothing shows from outside that it is under way
    (vLLM's running gauge can lag a whole 1 s generation on a busy machine). A try where vLLM
    generated nothing (left before it began: the delay doubles) or finished the request (done
    before the client left, or an early end of sequence: the delay halves) tested nothing and is
    made again, at most four times; a wrapper that never aborts fails every one of them."""
    delay, tries = 0.2, []
    for _attempt in range(4):
        finished_before, generated_before = _counts_when_idle(vllm_url)
        sock = _raw_request(url, path, body)
        if body.get("stream"):
            _read_events(sock, 3)
        else:
            time.sleep(delay)
        sock.close()
        time.sleep(SETTLE_S)
        finished, generated = _counts_when_idle(vllm_url)
        finished, generated = finished - finished_before, generated - generated_before
        if generated > 0 and finished == 0:
            return
        tries.append({"delay_s": delay, "generated": generated, "finished": finished})
        delay = delay * 2 if generated == 0 else delay / 2
    pytest.fail(f"vLLM never aborted a request after the client left: {tries}")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat"])
def test_disconnect_mid_stream_aborts_vllm_request(wrapper: Wrapper, vllm_url: str,
                                                    path: str) -> None:
    body = {**LONG, "stream": True} if path != "/chat" else {
        "messages": LONG["messages"], "max_tokens": 1000, "stream": True}
    _leave_mid_request(vllm_url, wrapper.url, path, body)


def test_disconnect_non_streaming_aborts_vllm_request(wrapper: Wrapper, vllm_url: str) -> None:
    _leave_mid_request(vllm_url, wrapper.url, "/v1/chat/completions", LONG)
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
