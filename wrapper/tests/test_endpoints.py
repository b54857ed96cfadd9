"""Every endpoint against the real vLLM, through the wrapper."""

from __future__ import annotations

import json

import httpx
import pytest

from .conftest import MODEL_NAME, Wrapper, metric_value
from .stub_upstream import StubUpstream

CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hello"}]}


def _sse_events(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


def test_health(wrapper: Wrapper) -> None:
    r = httpx.get(wrapper.url + "/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert r.headers["x-request-id"]


def test_ready_when_vllm_answers(wrapper: Wrapper) -> None:
    r = httpx.get(wrapper.url + "/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ready"}


def test_docs_and_openapi(wrapper: Wrapper) -> None:
    assert "swagger" in httpx.get(wrapper.url + "/docs").text.lower()
    spec = httpx.get(wrapper.url + "/openapi.json").json()
    for path in ("/chat", "/v1/chat/completions", "/v1/completions", "/v1/models",
                 "/v1/embeddings", "/v1/responses", "/v1/responses/{response_id}",
                 "/v1/responses/{response_id}/cancel", "/tokenize", "/detokenize",
                 "/v1/messages", "/v1/messages/count_tokens", "/v1/chat/completions/render",
                 "/v1/completions/render", "/health", "/ready", "/metrics"):
        assert path in spec["paths"], path


def test_models_passthrough(wrapper: Wrapper, vllm_url: str) -> None:
    r = httpx.get(wrapper.url + "/v1/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == [MODEL_NAME]
    direct = httpx.get(vllm_url + "/v1/models").json()
    assert r.json()["data"][0]["max_model_len"] == direct["data"][0]["max_model_len"]


def test_chat_completions_non_streaming(wrapper: Wrapper) -> None:
    r = httpx.post(wrapper.url + "/v1/chat/completions",
                   json={**CHAT, "max_tokens": 5, "ignore_eos": True}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert r.headers["content-type"].startswith("application/json")


def test_chat_completions_streaming(wrapper: Wrapper) -> None:
    payload = {**CHAT, "max_tokens": 6, "ignore_eos": True, "stream": True,
               "stream_options": {"include_usage": True}}
    with httpx.stream("POST", wrapper.url + "/v1/chat/completions", json=payload, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        assert "content-length" not in r.headers
        text = r.read().decode()
    events = _sse_events(text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def test_completions(wrapper: Wrapper) -> None:
    r = httpx.post(wrapper.url + "/v1/completions", timeout=60,
                   json={"model": MODEL_NAME, "prompt": "once upon", "max_tokens": 4,
                         "ignore_eos": True})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "text_completion"
    assert r.json()["usage"]["completion_tokens"] == 4


def test_completions_streaming(wrapper: Wrapper) -> None:
    r = httpx.post(wrapper.url + "/v1/completions", timeout=60,
                   json={"model": MODEL_NAME, "prompt": "x", "max_tokens": 3, "ignore_eos": True,
                         "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    events = _sse_events(r.text)
    assert events[-1] == "[DONE]"
    # Byte-level tokens that end mid-character are sent together, so count tokens, not chunks.
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 3
    assert len(events) >= 3


def test_embeddings_on_a_generative_model_pass_vllm_answer_through(wrapper: Wrapper,
                                                                   vllm_url: str) -> None:
    # A generative model serves no embeddings: vLLM's own status and body must come through.
    payload = {"model": MODEL_NAME, "input": "hello"}
    direct = httpx.post(vllm_url + "/v1/embeddings", json=payload)
    via = httpx.post(wrapper.url + "/v1/embeddings", json=payload)
    assert direct.status_code == 404
    assert via.status_code == direct.status_code
    assert via.content == direct.content


def test_embeddings_from_a_pooling_vllm(start_wrapper, vllm_embed_url: str) -> None:
    w = start_wrapper(VLLM_UPSTREAM_URL=vllm_embed_url)
    payload = {"model": MODEL_NAME, "input": ["hello", "world"]}
    r = httpx.post(w.url + "/v1/embeddings", json=payload, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert len(body["data"][0]["embedding"]) == 128  # the tiny model's hidden size
    assert body["data"] == httpx.post(vllm_embed_url + "/v1/embeddings", json=payload).json()["data"]
    text = httpx.get(w.url + "/metrics").text
    assert metric_value(text, "vllm_wrapper_requests_total", route="/v1/embeddings",
                        status="200") == 1


def test_render_routes(wrapper: Wrapper, vllm_url: str) -> None:
    """vllm-router (the fleet edge with router_policy cache_aware) asks these for a prompt's token ids."""
    r = httpx.post(wrapper.url + "/v1/chat/completions/render", json=CHAT, timeout=30)
    assert r.status_code == 200, r.text
    direct = httpx.post(vllm_url + "/v1/chat/completions/render", json=CHAT, timeout=30)
    assert r.json()["token_ids"] == direct.json()["token_ids"]
    tokens = httpx.post(vllm_url + "/tokenize", json=CHAT).json()["tokens"]
    assert r.json()["token_ids"] == tokens
    prompt = {"model": MODEL_NAME, "prompt": "hello tokens"}
    r = httpx.post(wrapper.url + "/v1/completions/render", json=prompt, timeout=30)
    assert r.status_code == 200, r.text
    assert [item["token_ids"] for item in r.json()] == [
        httpx.post(vllm_url + "/tokenize", json=prompt).json()["tokens"]]


def test_router_extra_fields_pass(wrapper: Wrapper) -> None:
    """The body vllm-router sends for a plain chat request: its own fields added."""
    body = {**CHAT, "max_tokens": 2, "stream": False, "logprobs": False, "no_stop_trim": False,
            "ignore_eos": False, "continue_final_message": False, "skip_special_tokens": True}
    for path in ("/v1/chat/completions/render", "/v1/chat/completions"):
        r = httpx.post(wrapper.url + path, json=body, timeout=60,
                       headers={"X-Gpufleet-Instance": "server"})
        assert r.status_code == 200, (path, r.text)


def test_tokenize_and_detokenize_round_trip(wrapper: Wrapper, vllm_url: str) -> None:
    payload = {"model": MODEL_NAME, "prompt": "hello tokens"}
    r = httpx.post(wrapper.url + "/tokenize", json=payload)
    assert r.status_code == 200, r.text
    assert r.content == httpx.post(vllm_url + "/tokenize", json=payload).content
    tokens = r.json()["tokens"]
    assert r.json()["count"] == len(tokens) > 2
    back = httpx.post(wrapper.url + "/detokenize", json={"model": MODEL_NAME, "tokens": tokens})
    assert back.status_code == 200, back.text
    assert back.json()["prompt"].endswith("hello tokens")
    chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(wrapper.url + "/tokenize", json=chat)
    assert r.status_code == 200, r.text
    assert r.content == httpx.post(vllm_url + "/tokenize", json=chat).content


def test_messages_api(wrapper: Wrapper, vllm_url: str) -> None:
    payload = {"model": MODEL_NAME, "max_tokens": 4, "ignore_eos": True,
               "messages": [{"role": "user", "content": "hello"}]}
    r = httpx.post(wrapper.url + "/v1/messages", json=payload, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["usage"]["output_tokens"] == 4
    count = {"model": MODEL_NAME, "messages": payload["messages"]}
    r = httpx.post(wrapper.url + "/v1/messages/count_tokens", json=count)
    assert r.status_code == 200, r.text
    assert r.json()["input_tokens"] == body["usage"]["input_tokens"]
    with httpx.stream("POST", wrapper.url + "/v1/messages", json={**payload, "stream": True},
                      timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["x-accel-buffering"] == "no"
        text = r.read().decode()
    events = [line.removeprefix("event: ") for line in text.splitlines()
              if line.startswith("event: ")]
    assert events[0] == "message_start"
    assert events[-1] == "message_stop"
    assert "content_block_delta" in events


def test_responses_api_raw(wrapper: Wrapper) -> None:
    payload = {"model": MODEL_NAME, "input": "hello", "max_output_tokens": 3, "ignore_eos": True}
    r = httpx.post(wrapper.url + "/v1/responses", json=payload, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "response"
    assert r.json()["usage"]["output_tokens"] == 3
    stored = httpx.get(wrapper.url + "/v1/responses/" + r.json()["id"])
    assert stored.status_code == 200, stored.text
    assert stored.json()["id"] == r.json()["id"]
    assert stored.json()["output"] == r.json()["output"]
    # A finished response cannot be cancelled: vLLM's 400 comes through.
    cancel = httpx.post(wrapper.url + f"/v1/responses/{r.json()['id']}/cancel")
    assert cancel.status_code == 400
    assert cancel.json()["error"]["param"] == "response_id"
    unknown = httpx.get(wrapper.url + "/v1/responses/resp_does_not_exist")
    assert unknown.status_code == 404
    assert "resp_does_not_exist" in unknown.json()["error"]["message"]


def test_response_ids_cannot_leave_the_route(start_wrapper) -> None:
    stub = StubUpstream(gap=0.0)
    try:
        w = start_wrapper(VLLM_UPSTREAM_URL=stub.url)
        for method, path in (
            ("GET", "/v1/responses/%2E%2E"), ("POST", "/v1/responses/%2E%2E/cancel"),
            ("POST", "/v1/responses/.hidden/cancel"), ("GET", "/v1/responses/x/input_items"),
            ("POST", "/v1/responses/a%2F..%2F..%2Fstart_profile/cancel"),
        ):
            r = httpx.request(method, w.url + path)
            assert r.status_code in (400, 404), (path, r.text)
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert stub.requests == []
    finally:
        stub.close()


def test_upstream_4xx_passes_through(wrapper: Wrapper, vllm_url: str) -> None:
    payload = {**CHAT, "max_tokens": 100000}
    direct = httpx.post(vllm_url + "/v1/chat/completions", json=payload)
    via = httpx.post(wrapper.url + "/v1/chat/completions", json=payload)
    assert direct.status_code == 400
    assert via.status_code == 400
    assert via.json()["error"]["message"] == direct.json()["error"]["message"]


def test_chat_simple_form_uses_defaults(wrapper: Wrapper) -> None:
    r = httpx.post(wrapper.url + "/chat", timeout=60,
                   json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == MODEL_NAME
    assert 1 <= body["usage"]["completion_tokens"] <= 8  # VLLM_DEFAULT_MAX_TOKENS=8


def test_chat_simple_form_streaming(wrapper: Wrapper) -> None:
    r = httpx.post(wrapper.url + "/chat", timeout=60,
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                         "stream": True, "temperature": 0})
    assert r.status_code == 200
    assert r.headers["x-accel-buffering"] == "no"
    assert _sse_events(r.text)[-1] == "[DONE]"


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 9}, "temperature"),
        # found by schemathesis: beyond 64 bits it used to crash the JSON encoder
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2**70}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "colour": "red"}, "colour"),
        ({"messages": [{"role": "user", "content": "lone \ud800 surrogate"}]},
         "messages.0.content"),
    ],
)
def test_chat_invalid_body_names_field(wrapper: Wrapper, payload: dict, param: str) -> None:
    r = httpx.post(wrapper.url + "/chat", content=json.dumps(payload),  # \u escapes kept
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param
    assert param in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b""])
def test_passthrough_rejects_non_object_json(wrapper: Wrapper, body: bytes) -> None:
    r = httpx.post(wrapper.url + "/v1/chat/completions", content=body,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "body"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/version"), ("GET", "/load"), ("POST", "/scale_elastic_ep"),
        ("POST", "/is_scaling_elastic_ep"), ("POST", "/invocations"),
        ("POST", "/inference/v1/generate"), ("POST", "/inference/v1/abort_requests"),
        ("GET", "/v1/chat/completions"), ("POST", "/v1/models"), ("GET", "/ping"),
        ("POST", "/v1/messages/render"), ("POST", "/v1/responses/render"),
        ("POST", "/v1/chat/completions/derender"),
        ("POST", "/v1/load_lora_adapter"), ("POST", "/v1/unload_lora_adapter"),
        ("POST", "/sleep"), ("POST", "/wake_up"), ("GET", "/is_sleeping"),
        ("POST", "/start_profile"), ("POST", "/stop_profile"), ("POST", "/reset_prefix_cache"),
        ("POST", "/collective_rpc"), ("GET", "/server_info"), ("POST", "/pause"),
        ("POST", "/update_weights"), ("GET", "/tokenizer_info"), ("POST", "/generative_scoring"),
        ("GET", "/v1/responses"), ("DELETE", "/v1/responses/resp_1"), ("GET", "/tokenize"),
        ("POST", "/v2/embed"), ("POST", "/pooling"), ("POST", "/v1/messages/batches"),
    ],
)
def test_vllm_admin_paths_not_reachable(wrapper: Wrapper, method: str, path: str) -> None:
    r = httpx.request(method, wrapper.url + path, json={})
    assert r.status_code in (404, 405)
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_request_id_propagated_to_vllm(wrapper: Wrapper) -> None:
    rid = "test-req-0123456789"
    r = httpx.post(wrapper.url + "/v1/chat/completions", headers={"X-Request-Id": rid},
                   json={**CHAT, "max_tokens": 1}, timeout=60)
    assert r.headers["x-request-id"] == rid
    assert rid in r.json()["id"]  # vLLM builds the completion id from X-Request-Id


def test_invalid_request_id_is_replaced(wrapper: Wrapper) -> None:
    r = httpx.get(wrapper.url + "/health", headers={"X-Request-Id": "bad id\twith spaces"})
    assert r.headers["x-request-id"] != "bad id\twith spaces"


def test_metrics(wrapper: Wrapper) -> None:
    httpx.get(wrapper.url + "/v1/models")
    r = httpx.get(wrapper.url + "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert metric_value(text, "vllm_wrapper_requests_total", route="/v1/models",
                        status="200") >= 1
    for name in ("vllm_wrapper_request_duration_seconds_bucket", "vllm_wrapper_requests_in_flight",
                 "vllm_wrapper_time_to_first_byte_seconds_bucket"):
        assert name in text


def test_retrieve_passes_its_query_parameters(start_wrapper) -> None:
    stub = StubUpstream(gap=0.0)
    try:
        w = start_wrapper(VLLM_UPSTREAM_URL=stub.url)
        r = httpx.get(w.url + "/v1/responses/resp_0a1b?stream=true&starting_after=2")
        assert r.status_code == 200  # the stub answers SSE
        assert r.headers["x-accel-buffering"] == "no"
        bad = httpx.get(w.url + "/v1/responses/resp_0a1b?starting_after=-5")
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "query.starting_after"
        assert [req.split(b" ")[1] for req in stub.requests] == [
            b"/v1/responses/resp_0a1b?stream=true&starting_after=2"]
    finally:
        stub.close()
