"""Requests users really send, from this machine through nginx with the openai SDK: n > 1, logprobs with
top_logprobs, JSON response format, stop strings, seeds, streamed and not. Each is answered, and the vLLM
engine stays up: the container is neither restarted nor re-started, and /health answers 200 after."""

import json
import pathlib
import ssl
import sys

import httpx2
import openai
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
from host_http import request  # noqa: E402

testinfra_hosts = ["ansible://gpu_servers"]

KEY = "sk-FULLSTACKfakeKEYdoNotPrint4567"
NAME = "gpu01.fleet.test"
MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


class HostTransport(httpx2.HTTPTransport):
    """Connects to the host's address while TLS (SNI, certificate check) and Host use its name, which
    resolves only on the host itself."""

    def __init__(self, address, **kwargs):
        super().__init__(**kwargs)
        self.address = address

    def handle_request(self, request):
        request.url = request.url.copy_with(host=self.address)
        request.extensions = {**request.extensions, "sni_hostname": NAME}
        return super().handle_request(request)


@pytest.fixture(scope="module")
def client(gpu_address, pebble_ca):
    transport = HostTransport(gpu_address, verify=ssl.create_default_context(cafile=str(pebble_ca)))
    # No retries: a request the engine dies on must fail here, not succeed on a restarted engine.
    with openai.OpenAI(
        base_url=f"https://{NAME}/v1", api_key=KEY, max_retries=0, timeout=300, http_client=httpx2.Client(transport=transport)
    ) as sdk:
        yield sdk


def engine(host):
    """What changes when vllm-a's process dies and Docker starts it again."""
    state = json.loads(host.check_output("docker inspect -f '{{json .}}' vllm-a"))
    return {"restarts": state["RestartCount"], "started": state["State"]["StartedAt"], "status": state["State"]["Status"]}


@pytest.fixture
def engine_before(host):
    before = engine(host)
    assert before["status"] == "running", before
    return before


def assert_engine_stayed_up(host, before):
    assert engine(host) == before, "vllm-a died and was restarted during the request"
    assert request(host, "http://127.0.0.1:8000/health")[0] == 200


CASES = {
    "n2-logprobs": {"n": 2, "logprobs": True, "top_logprobs": 3},
    "json-format": {"response_format": {"type": "json_object"}},
    "stop-seed": {"stop": ["."], "seed": 1234},
}


def check_choices(choices, case):
    """CHOICES: index -> (text, finish reason, logprob entries)."""
    assert sorted(choices) == list(range(CASES[case].get("n", 1))), choices
    for text, finish, logprobs in choices.values():
        assert finish in ("stop", "length")
        if case == "n2-logprobs":
            assert logprobs and all(len(entry.top_logprobs) == 3 for entry in logprobs)
        if case == "stop-seed":
            assert "." not in text


@pytest.mark.parametrize("case", CASES)
def test_completion_answered_and_engine_stays_up(host, client, engine_before, case):
    reply = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, max_tokens=8, **CASES[case])
    choices = {
        c.index: (c.message.content or "", c.finish_reason, c.logprobs.content if c.logprobs else None)
        for c in reply.choices
    }
    check_choices(choices, case)
    assert reply.usage.completion_tokens > 0
    assert_engine_stayed_up(host, engine_before)


@pytest.mark.parametrize("case", CASES)
def test_stream_answered_and_engine_stays_up(host, client, engine_before, case):
    text, finish, logprobs = {}, {}, {}
    with client.chat.completions.create(
        model="tiny-llama", messages=MESSAGES, max_tokens=8, stream=True, **CASES[case]
    ) as stream:
        for chunk in stream:
            for c in chunk.choices:
                text[c.index] = text.get(c.index, "") + (c.delta.content or "")
                finish[c.index] = c.finish_reason or finish.get(c.index)
                logprobs.setdefault(c.index, []).extend(c.logprobs.content or [] if c.logprobs else [])
    check_choices({i: (text[i], finish[i], logprobs[i]) for i in text}, case)
    assert_engine_stayed_up(host, engine_before)


def test_same_seed_same_answer(client):
    answers = {
        client.chat.completions.create(
            model="tiny-llama", messages=MESSAGES, max_tokens=8, seed=99, temperature=1.0
        ).choices[0].message.content
        for _attempt in range(2)
    }
    assert len(answers) == 1, answers
