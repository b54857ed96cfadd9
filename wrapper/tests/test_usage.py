"""Usage per API key and model (issue #16): the wrapper's token counters equal vLLM's own over a run of
streamed and non-streamed requests, and a stream whose client did not ask for usage stays as vLLM sends
it without usage (the wrapper asks vLLM for it and drops that chunk)."""

from __future__ import annotations

import httpx
import openai
import pytest

from .conftest import API_KEYS, MODEL_NAME, Wrapper, metric_value

MESSAGES = [{"role": "user", "content": "Count to three"}]


def counters(wrapper: Wrapper, vllm_url: str) -> dict[str, float]:
    ours = httpx.get(wrapper.url + "/metrics", timeout=10).text
    theirs = httpx.get(vllm_url + "/metrics", timeout=10).text

    def own(name: str, **labels: str) -> float:
        try:
            return metric_value(ours, name, key="bob", model_name=MODEL_NAME, **labels)
        except KeyError:
            return 0.0

    return {
        "requests": own("vllm_wrapper_usage_requests_total"),
        "prompt": own("vllm_wrapper_usage_tokens_total", type="prompt"),
        "completion": own("vllm_wrapper_usage_tokens_total", type="completion"),
        "vllm_prompt": metric_value(theirs, "vllm:prompt_tokens_total"),
        "vllm_completion": metric_value(theirs, "vllm:generation_tokens_total"),
    }


@pytest.fixture()
def bob(auth_wrapper: Wrapper) -> openai.OpenAI:
    return openai.OpenAI(base_url=auth_wrapper.url + "/v1", api_key=API_KEYS["bob"], max_retries=0)


def test_a_stream_without_include_usage_reaches_the_client_without_usage(bob: openai.OpenAI) -> None:
    chunks = list(bob.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=5, stream=True,
                                              extra_body={"ignore_eos": True}))
    assert chunks and all(c.usage is None for c in chunks), [c.usage for c in chunks]
    assert all(c.choices for c in chunks), "the usage chunk (no choices) must not reach this client"
    asked = list(bob.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=5, stream=True,
                                             stream_options={"include_usage": True},
                                             extra_body={"ignore_eos": True}))
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens == 5 and asked[-1].choices == []


def test_usage_counters_equal_vllms_own(bob: openai.OpenAI, auth_wrapper: Wrapper, vllm_url: str) -> None:
    before = counters(auth_wrapper, vllm_url)
    eos = {"ignore_eos": True}
    bob.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=7, extra_body=eos)
    list(bob.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=6, stream=True,
                                     extra_body={"ignore_eos": True}))
    list(bob.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=4, stream=True,
                                     stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    bob.completions.create(model=MODEL_NAME, prompt="one two three", max_tokens=3, extra_body=eos)
    list(bob.completions.create(model=MODEL_NAME, prompt="four five", max_tokens=5, stream=True,
                                extra_body={"ignore_eos": True}))
    # The simple /chat route, streamed, without a model (the served one).
    with httpx.stream("POST", auth_wrapper.url + "/chat", timeout=60,
                      headers={"authorization": "Bearer " + API_KEYS["bob"]},
                      json={"messages": MESSAGES, "max_tokens": 2, "stream": True}) as answer:
        assert answer.status_code == 200 and b'"choices":[]' not in answer.read()
    after = counters(auth_wrapper, vllm_url)
    delta = {name: after[name] - before[name] for name in after}
    assert delta["requests"] == 6, delta
    # 7 + 6 + 4 + 3 + 5 with ignore_eos, and 1 or 2 from /chat.
    assert delta["completion"] == delta["vllm_completion"] and 26 <= delta["completion"] <= 27, delta
    assert delta["prompt"] == delta["vllm_prompt"] > 0, delta
