"""Keys limited to models, expired and disabled keys (issue #16), through the official openai SDK
against the wrapper in front of the real vLLM: one upstream, and routed (VLLM_UPSTREAMS)."""

from __future__ import annotations

import json

import openai
import pytest

from vllm_wrapper.auth import hash_key

from .conftest import MODEL_NAME, Wrapper

KEYS = {
    "scoped": ("sk-scoped-1f2e3d", {"models": [MODEL_NAME, "elsewhere"]}),
    "other": ("sk-other-4c5b6a", {"models": ["elsewhere"], "expires": "2999-01-01"}),
    "expired": ("sk-expired-7d8e9f", {"expires": "2020-01-31T12:00:00Z"}),
    "disabled": ("sk-disabled-0a1b2c", {"disabled": True}),
    "open": ("sk-open-3d4e5f", {}),
}
MESSAGES = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(scope="module", params=["single", "routed"])
def scoped_wrapper(request: pytest.FixtureRequest, vllm_url: str, start_wrapper,
                   tmp_path_factory: pytest.TempPathFactory) -> Wrapper:
    path = tmp_path_factory.mktemp("scoped-keys") / "keys"
    path.write_text("".join(f"{name}:{hash_key(key)}" + (f" {json.dumps(attrs)}" if attrs else "") + "\n"
                            for name, (key, attrs) in KEYS.items()))
    path.chmod(0o600)
    env = {"VLLM_DEFAULT_MAX_TOKENS": "4", "VLLM_WRAPPER_API_KEYS_FILE": str(path)}
    if request.param == "single":
        env["VLLM_UPSTREAM_URL"] = vllm_url
    else:
        env["VLLM_UPSTREAMS"] = json.dumps([{"name": "a", "url": vllm_url, "models": [MODEL_NAME]}])
    return start_wrapper(**env)


def client(wrapper: Wrapper, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=wrapper.url + "/v1", api_key=KEYS[name][0], max_retries=0)


def test_a_key_uses_its_models_and_lists_only_them(scoped_wrapper: Wrapper) -> None:
    scoped = client(scoped_wrapper, "scoped")
    assert [m.id for m in scoped.models.list().data] == [MODEL_NAME]
    answer = scoped.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=2)
    assert answer.choices[0].message.content is not None
    assert [m.id for m in client(scoped_wrapper, "open").models.list().data] == [MODEL_NAME]


def test_a_model_outside_the_keys_scope_is_403_naming_it(scoped_wrapper: Wrapper) -> None:
    other = client(scoped_wrapper, "other")
    assert other.models.list().data == []
    for call in (
        lambda: other.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=2),
        lambda: other.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=2, stream=True),
        lambda: other.completions.create(model=MODEL_NAME, prompt="a", max_tokens=2),
    ):
        with pytest.raises(openai.PermissionDeniedError) as refused:
            call()
        assert refused.value.status_code == 403
        assert refused.value.body["code"] == "model_not_allowed", refused.value.body
        assert MODEL_NAME in refused.value.body["message"] and "'other'" in refused.value.body["message"]


@pytest.mark.parametrize(("name", "code"), [("expired", "api_key_expired"), ("disabled", "api_key_disabled")])
def test_expired_and_disabled_keys_are_401(scoped_wrapper: Wrapper, name: str, code: str) -> None:
    refused_client = client(scoped_wrapper, name)
    with pytest.raises(openai.AuthenticationError) as refused:
        refused_client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=2)
    assert refused.value.status_code == 401 and refused.value.body["code"] == code, refused.value.body
    assert refused.value.response.headers["www-authenticate"] == "Bearer"


def test_the_simple_chat_route_keeps_the_scope(scoped_wrapper: Wrapper) -> None:
    import httpx

    answer = httpx.post(scoped_wrapper.url + "/chat", json={"messages": MESSAGES, "max_tokens": 2},
                        headers={"authorization": "Bearer " + KEYS["other"][0]}, timeout=60)
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "model_not_allowed", answer.text
    answer = httpx.post(scoped_wrapper.url + "/chat", json={"messages": MESSAGES, "max_tokens": 2},
                        headers={"authorization": "Bearer " + KEYS["scoped"][0]}, timeout=60)
    assert answer.status_code == 200, answer.text
