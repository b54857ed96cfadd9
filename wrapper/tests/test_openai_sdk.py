"""The official openai SDK as a client of the wrapper (sync, async, streaming,
the Responses API)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from .conftest import API_KEYS, MODEL_NAME, Wrapper, metric_value, vllm_metric, wait_until

MESSAGES = [{"role": "user", "content": "Say hi"}]


def test_sync_chat_with_empty_key_on_open_wrapper(wrapper: Wrapper) -> None:
    client = openai.OpenAI(base_url=wrapper.url + "/v1", api_key="EMPTY", max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    done = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=4,
                                          extra_body={"ignore_eos": True})
    assert done.usage is not None and done.usage.completion_tokens == 4
    comp = client.completions.create(model=MODEL_NAME, prompt="a", max_tokens=3,
                                     extra_body={"ignore_eos": True})
    assert comp.usage is not None and comp.usage.completion_tokens == 3


def test_sync_streaming_with_key(auth_wrapper: Wrapper) -> None:
    client = openai.OpenAI(base_url=auth_wrapper.url + "/v1", api_key=API_KEYS["bob"],
                           max_retries=0)
    stream = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=5,
                                            stream=True, extra_body={"ignore_eos": True},
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert any(c.choices and c.choices[0].delta.content is not None for c in chunks)


def test_sdk_sees_auth_error(auth_wrapper: Wrapper) -> None:
    client = openai.OpenAI(base_url=auth_wrapper.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        client.models.list()
    assert err.value.status_code == 401


def test_sdk_sees_upstream_bad_request(wrapper: Wrapper) -> None:
    client = openai.OpenAI(base_url=wrapper.url + "/v1", api_key="EMPTY", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=10**6)


async def test_async_chat_and_streaming(wrapper: Wrapper) -> None:
    client = openai.AsyncOpenAI(base_url=wrapper.url + "/v1", api_key="EMPTY", max_retries=0)
    try:
        done = await client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES,
                                                    max_tokens=2, extra_body={"ignore_eos": True})
        assert done.choices[0].finish_reason == "length"
        stream = await client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES,
                                                      max_tokens=3, stream=True,
                                                      extra_body={"ignore_eos": True})
        finish = [c.choices[0].finish_reason async for c in stream if c.choices]
        assert finish[-1] == "length"
    finally:
        await client.close()


def test_responses_api_create_stream_retrieve(auth_wrapper: Wrapper) -> None:
    client = openai.OpenAI(base_url=auth_wrapper.url + "/v1", api_key=API_KEYS["alice"],
                           max_retries=0)
    done = client.responses.create(model=MODEL_NAME, input="Say hi", max_output_tokens=4,
                                   extra_body={"ignore_eos": True})
    assert done.object == "response"
    assert done.usage is not None and done.usage.output_tokens == 4
    assert done.output_text
    stored = client.responses.retrieve(done.id)
    assert stored.id == done.id
    assert stored.output_text == done.output_text
    events = list(client.responses.create(model=MODEL_NAME, input="Say hi", max_output_tokens=3,
                                          stream=True, extra_body={"ignore_eos": True}))
    assert events[0].type == "response.created"
    assert any(e.type == "response.output_text.delta" for e in events)
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage is not None
    assert events[-1].response.usage.output_tokens == 3
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_never_made")
    text = httpx.get(auth_wrapper.url + "/metrics").text
    for route in ("/v1/responses", "/v1/responses/{response_id}"):
        assert metric_value(text, "vllm_wrapper_requests_total", route=route, key="alice") >= 2


def test_responses_api_background_cancel_stops_vllm(auth_wrapper: Wrapper, vllm_url: str) -> None:
    client = openai.OpenAI(base_url=auth_wrapper.url + "/v1", api_key=API_KEYS["bob"],
                           max_retries=0)
    # Cancelled once vLLM has generated its first tokens, watched closely (every 20 ms): on an
    # idle machine a cancel sent at once arrives before vLLM starts (nothing to stop), and on a
    # busy one vLLM generated 700 of the 900 tokens before the client even had the id, so a
    # slower watch came after the end (cancel answered 400). An attempt that stopped nothing
    # (ended on its own first, or cancelled before vLLM started it) is sent again, at most
    # five times; a cancel that does not stop vLLM fails every attempt.
    for _attempt in range(5):
        assert wait_until(lambda: _running(vllm_url) == 0, 30)
        generated_before, ended_before = _generated(vllm_url), _ended_by_length(vllm_url)
        queued = client.responses.create(model=MODEL_NAME, input="go", max_output_tokens=900,
                                         background=True, extra_body={"ignore_eos": True})
        assert queued.status in ("queued", "in_progress")
        wait_until(lambda before=generated_before: _generated(vllm_url) > before, 10, 0.02)
        try:
            cancelled = client.responses.cancel(queued.id)
        except openai.BadRequestError:  # too late: vLLM had finished it at max_output_tokens
            assert client.responses.retrieve(queued.id).status == "incomplete"
            continue
        assert cancelled.status == "cancelled"
        assert wait_until(lambda: _running(vllm_url) == 0, 5, 0.05), "vLLM still generating"
        time.sleep(2)  # about as long as the whole generation would take
        assert client.responses.retrieve(queued.id).status == "cancelled"
        generated = _generated(vllm_url) - generated_before
        if _ended_by_length(vllm_url) > ended_before or generated == 0:
            continue  # vLLM finished it before the cancel arrived, or never started it
        # Below the full 900, with no margin: on a busy machine most of the answer can be out
        # before the cancel arrives (the 80 % bound failed there although vLLM stopped).
        assert generated < 900, "not cut short"
        break
    else:
        pytest.fail("no attempt was cancelled while vLLM generated it (5 tries)")
    text = httpx.get(auth_wrapper.url + "/metrics").text
    assert metric_value(text, "vllm_wrapper_requests_total",
                        route="/v1/responses/{response_id}/cancel", key="bob", status="200") >= 1


def test_responses_api_needs_a_key(auth_wrapper: Wrapper) -> None:
    client = openai.OpenAI(base_url=auth_wrapper.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.responses.create(model=MODEL_NAME, input="x", max_output_tokens=1)
    with pytest.raises(openai.AuthenticationError):
        client.responses.retrieve("resp_x")
    with pytest.raises(openai.AuthenticationError):
        client.responses.cancel("resp_x")


def _running(vllm_url: str) -> float:
    return vllm_metric(vllm_url, "vllm:num_requests_running")


def _generated(vllm_url: str) -> float:
    return vllm_metric(vllm_url, "vllm:generation_tokens_total")


def _ended_by_length(vllm_url: str) -> float:
    """Requests vLLM finished at their max tokens (an abort is not counted there)."""
    return vllm_metric(vllm_url, "vllm:request_success_total", finished_reason="length")
