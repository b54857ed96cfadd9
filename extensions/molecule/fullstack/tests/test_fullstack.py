"""The deployed stack answers OpenAI-compatible requests and keeps its secrets."""

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
from host_http import get_json, request  # noqa: E402

testinfra_hosts = ["ansible://gpu_servers"]

KEY = "sk-FULLSTACKfakeKEYdoNotPrint4567"
TOKEN = "hf_FULLSTACKfakeTOKENdoNotPrint0123"
SECRETS = pathlib.Path(__file__).resolve().parents[1].joinpath("secrets").read_text().split()
WRAPPER = "http://127.0.0.1:8001"


def wrapper(host, path, body=None, key=KEY):
    """(body, status) of a request to the wrapper on the host's loopback."""
    code, text = request(host, WRAPPER + path, body=body, key=key)
    return text, code


def chat_body(stream):
    return {"model": "tiny-llama", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "stream": stream}


@pytest.mark.parametrize("name, port", [("vllm-a", 8000), ("vllm-wrapper", 8001)])
def test_container_running_and_listening_on_loopback_only(host, name, port):
    state = json.loads(host.check_output(f"docker inspect -f '{{{{json .State}}}}' {name}"))
    assert state["Status"] == "running"
    assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_vllm_answers_health_and_serves_the_model(host):
    assert request(host, "http://127.0.0.1:8000/health")[0] == 200
    models = get_json(host, "http://127.0.0.1:8000/v1/models")
    assert [m["id"] for m in models["data"]] == ["tiny-llama"]


def test_wrapper_ready(host):
    body, status = wrapper(host, "/ready", key=None)
    assert status == 200, body


def test_models_through_the_wrapper(host):
    body, status = wrapper(host, "/v1/models")
    assert status == 200
    assert json.loads(body)["data"][0]["id"] == "tiny-llama"


def test_chat_completion(host):
    body, status = wrapper(host, "/v1/chat/completions", chat_body(False))
    assert status == 200, body
    reply = json.loads(body)
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert 0 < reply["usage"]["completion_tokens"] <= 8


def test_chat_completion_streaming(host):
    body, status = wrapper(host, "/v1/chat/completions", chat_body(True))
    assert status == 200, body
    events = [line[len("data: "):] for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_guide_chat_endpoint(host):
    payload = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    body, status = wrapper(host, "/chat", payload)
    assert status == 200, body


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_missing_or_wrong_key_gets_openai_shaped_401(host, key):
    body, status = wrapper(host, "/v1/models", key=key)
    assert status == 401
    assert set(json.loads(body)["error"]) >= {"message", "type", "param", "code"}


def test_secret_files_are_private(host):
    token_file = host.file("/etc/vllm/secrets/hf_token")
    assert token_file.mode == 0o600 and token_file.user == "root"
    assert token_file.content_string == TOKEN
    assert host.file("/etc/vllm").mode == 0o700
    keys = host.file("/etc/vllm-wrapper/keys/api_keys")
    assert keys.mode == 0o600
    assert KEY not in keys.content_string


@pytest.mark.parametrize("name", ["vllm-a", "vllm-wrapper"])
def test_secrets_absent_from_docker_inspect_and_logs(host, name):
    seen = host.check_output(f"docker inspect {name}") + host.run(f"docker logs {name}").stdout
    seen += host.run(f"docker logs {name}").stderr
    for secret in SECRETS:
        assert secret not in seen


def test_token_reaches_the_container_through_a_file(host):
    env = json.loads(host.check_output("docker inspect -f '{{json .Config.Env}}' vllm-a"))
    assert "HF_TOKEN_PATH=/run/secrets/vllm/hf_token" in env
    assert host.check_output("docker exec vllm-a cat /run/secrets/vllm/hf_token") == TOKEN
