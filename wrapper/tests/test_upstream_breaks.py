"""The 502 paths: the upstream drops the connection before answering, half-way
through a JSON answer, or in the middle of a stream (scripted upstream, since
real vLLM does not do this on demand). The client gets an OpenAI-shaped error,
and the wrapper's counters and in-flight gauge come back to rest."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from .conftest import MODEL_NAME, Wrapper, metric_value, wait_until
from .stub_upstream import SSE_CHUNKS, StubUpstream

CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def stub() -> Iterator[StubUpstream]:
    upstream = StubUpstream(gap=0.05)
    yield upstream
    upstream.close()


@pytest.fixture(scope="module")
def broken(stub: StubUpstream, start_wrapper) -> Wrapper:
    return start_wrapper(VLLM_UPSTREAM_URL=stub.url, VLLM_WRAPPER_RETRY_AFTER="3")


def _metrics(w: Wrapper) -> str:
    return httpx.get(w.url + "/metrics").text


def _count(w: Wrapper, name: str, **labels: str) -> float:
    try:
        return metric_value(_metrics(w), name, **labels)
    except KeyError:
        return 0.0


def _access_log(w: Wrapper, request_id: str) -> dict:
    assert wait_until(lambda: request_id in w.logs(), 5)
    return next(r for r in w.records()
                if r["logger"] == "vllm_wrapper.access" and r.get("request_id") == request_id)


@pytest.mark.parametrize(("mode", "path"), [
    ("drop", "/v1/chat/completions"), ("drop", "/v1/responses"), ("drop", "/tokenize"),
    ("drop_mid_body", "/v1/chat/completions"), ("drop_mid_body", "/v1/messages"),
])
def test_upstream_drop_answers_502(stub: StubUpstream, broken: Wrapper, mode: str,
                                   path: str) -> None:
    stub.mode = mode
    before = _count(broken, "vllm_wrapper_upstream_errors_total", reason="protocol")
    rid = f"drop-{mode}-{path.strip('/').replace('/', '-')}"
    r = httpx.post(broken.url + path, json=CHAT, headers={"X-Request-Id": rid}, timeout=10)
    assert r.status_code == 502
    assert r.headers["content-type"] == "application/json"
    assert r.headers["retry-after"] == "3"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS
    assert body["error"]["code"] == "upstream_disconnected"
    assert body["error"]["type"] == "api_error"
    after = _count(broken, "vllm_wrapper_upstream_errors_total", reason="protocol")
    assert after == before + 1
    assert _count(broken, "vllm_wrapper_requests_total", route=path, status="502") >= 1
    line = _access_log(broken, rid)
    assert line["status"] == 502
    assert line["upstream_error"] == "protocol"


def test_stream_broken_mid_way_ends_with_an_error_event(stub: StubUpstream,
                                                       broken: Wrapper) -> None:
    stub.mode = "drop_mid_stream"
    before = _count(broken, "vllm_wrapper_upstream_errors_total", reason="protocol")
    with httpx.stream("POST", broken.url + "/v1/chat/completions", timeout=10,
                      json={**CHAT, "stream": True},
                      headers={"X-Request-Id": "broken-stream-1"}) as r:
        assert r.status_code == 200  # sent before the upstream broke
        raw = r.read()  # ends cleanly: the wrapper closes its own chunked body
    head = b"".join(SSE_CHUNKS[:2])
    assert raw.startswith(head)
    rest = raw[len(head):]
    assert rest.startswith(b"data: ") and rest.endswith(b"\n\n")
    error = json.loads(rest[len(b"data: "):])["error"]
    assert set(error) == ERROR_KEYS
    assert error["code"] == "upstream_protocol"
    assert b"[DONE]" not in raw
    assert _count(broken, "vllm_wrapper_upstream_errors_total", reason="protocol") == before + 1
    line = _access_log(broken, "broken-stream-1")
    assert (line["status"], line["stream"], line["upstream_error"]) == (200, True, "protocol")


def test_openai_sdk_raises_on_a_broken_stream(stub: StubUpstream, broken: Wrapper) -> None:
    stub.mode = "drop_mid_stream"
    client = openai.OpenAI(base_url=broken.url + "/v1", api_key="EMPTY", max_retries=0)
    stream = client.chat.completions.create(model=MODEL_NAME, messages=CHAT["messages"],
                                            stream=True)
    chunks = []
    with pytest.raises(openai.APIError, match="upstream stream ended abnormally"):
        for chunk in stream:
            chunks.append(chunk)
    assert len(chunks) == 2  # the two events the upstream sent before it broke


def test_wrapper_recovers_after_upstream_breaks(stub: StubUpstream, broken: Wrapper) -> None:
    for mode in ("drop", "drop_mid_body", "drop_mid_stream"):
        stub.mode = mode
        httpx.post(broken.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10)
    assert wait_until(
        lambda: _count(broken, "vllm_wrapper_requests_in_flight") == 0, 5), "in-flight stuck"
    stub.mode = "sse"
    r = httpx.post(broken.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10)
    assert r.status_code == 200
    assert r.content == b"".join(SSE_CHUNKS)
    assert httpx.get(broken.url + "/health").status_code == 200
