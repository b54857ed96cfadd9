"""The official openai SDK as a client of the wrapper (sync, async, streaming)."""

from __future__ import annotations

import openai
import pytest

from .conftest import API_KEYS, MODEL_NAME, Wrapper

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
