"""Per-key limits (issue #16): requests and tokens per minute and concurrent requests, kept in a real
Redis that several wrappers share, answered as the official openai SDK expects (RateLimitError with
Retry-After and OpenAI's x-ratelimit-* headers)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from vllm_wrapper.auth import hash_key

from .conftest import MODEL_NAME, Wrapper, metric_value
from .stub_upstream import StubUpstream

KEYS = {
    "per-minute": ("sk-rpm-8a7b6c5d", {"requests_per_minute": 3}),
    "tokens": ("sk-tpm-1b2c3d4e", {"tokens_per_minute": 100}),
    "parallel": ("sk-conc-5e6f7a8b", {"concurrent_requests": 2}),
    "shared": ("sk-shared-9c0d1e2f", {"requests_per_minute": 4}),
    "free": ("sk-free-3a4b5c6d", {}),
}
MESSAGES = [{"role": "user", "content": "Say hi"}]
# A finished request's tokens and concurrent place reach the store within limits.RELEASE_BATCH (5 ms).
RELEASED = 0.05


def write_keys(path: Path) -> Path:
    path.write_text("".join(f"{name}:{hash_key(key)}" + (f" {json.dumps(attrs)}" if attrs else "") + "\n"
                            for name, (key, attrs) in KEYS.items()))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def keys_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_keys(tmp_path_factory.mktemp("limited-keys") / "keys")


@pytest.fixture(scope="module")
def limited_pair(vllm_url: str, start_wrapper, counter_store: dict[str, str],
                 keys_path: Path) -> tuple[Wrapper, Wrapper]:
    """Two wrappers (two hosts of a fleet) in front of the real vLLM, sharing one counter store."""
    env = {"VLLM_UPSTREAM_URL": vllm_url, "VLLM_DEFAULT_MAX_TOKENS": "4", "VLLM_WRAPPER_WORKERS": "2",
           "VLLM_WRAPPER_API_KEYS_FILE": str(keys_path),
           "VLLM_WRAPPER_LIMITS_STORE": counter_store["VLLM_WRAPPER_LIMITS_STORE"],
           "VLLM_WRAPPER_LIMITS_STORE_PASSWORD_FILE":
               counter_store["VLLM_WRAPPER_LIMITS_STORE_PASSWORD_FILE"]}
    return start_wrapper(**env), start_wrapper(**env)


def client(wrapper: Wrapper, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=wrapper.url + "/v1", api_key=KEYS[name][0], max_retries=0)


def test_requests_per_minute_give_rate_limit_error_with_openai_headers(limited_pair) -> None:
    sdk = client(limited_pair[0], "per-minute")
    remaining = []
    for _ in range(3):
        raw = sdk.chat.completions.with_raw_response.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=2)
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        raw.parse()
    assert remaining == [2, 1, 0]
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=2)
    error, headers = refused.value, refused.value.response.headers
    assert error.status_code == 429
    assert error.body["code"] == "rate_limit_exceeded" and error.body["type"] == "requests", error.body
    assert "3 requests per minute" in error.body["message"]
    # One request comes back every 20 s (3 per minute).
    assert 1 <= int(headers["retry-after"]) <= 20 and 0 < int(headers["retry-after-ms"]) <= 20000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    # Other keys are not limited by it.
    client(limited_pair[0], "free").chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=2)
    assert metric_value(httpx.get(limited_pair[0].url + "/metrics").text, "vllm_wrapper_rate_limited_total",
                        key="per-minute", limit="requests") == 1


def test_tokens_per_minute_count_vllms_usage_streamed_or_not(limited_pair) -> None:
    sdk = client(limited_pair[0], "tokens")
    first = sdk.chat.completions.with_raw_response.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=8)
    usage = first.parse().usage
    assert first.headers["x-ratelimit-limit-tokens"] == "100"
    # Each answer's headers show the bucket before its own tokens: the next one's, 100 less vLLM's own
    # usage numbers of the answers before (plus up to 2 refilled meanwhile, 100 per minute).
    left = []
    for _ in range(12):
        time.sleep(RELEASED)
        try:
            raw = sdk.chat.completions.with_raw_response.create(model=MODEL_NAME, messages=MESSAGES,
                                                                max_tokens=8, stream=True)
        except openai.RateLimitError as exc:
            refused = exc
            break
        left.append(int(raw.headers["x-ratelimit-remaining-tokens"]))
        # The stream did not ask for usage: the wrapper asked vLLM for it and left it out.
        assert all(chunk.usage is None for chunk in raw.parse())
    else:
        pytest.fail(f"the key was never refused; remaining tokens seen: {left}")
    assert left and 100 - usage.total_tokens <= left[0] <= 100 - usage.total_tokens + 2, (usage, left)
    # Streams are charged too: at least their prompt each.
    assert all(b - a >= usage.prompt_tokens - 2 for a, b in zip(left[1:], left, strict=False)), left
    assert refused.body["type"] == "tokens" and "100 tokens per minute" in refused.body["message"]
    assert refused.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(refused.response.headers["retry-after"]) >= 1


def test_concurrency_limit_holds_under_parallel_streams(start_wrapper, counter_store, keys_path) -> None:
    stub = StubUpstream(mode="hold", gap=0.0)
    wrappers = [start_wrapper(VLLM_UPSTREAM_URL=stub.url, VLLM_WRAPPER_WORKERS="2",
                              VLLM_WRAPPER_API_KEYS_FILE=str(keys_path),
                              VLLM_WRAPPER_LIMITS_STORE=counter_store["VLLM_WRAPPER_LIMITS_STORE"],
                              VLLM_WRAPPER_LIMITS_STORE_PASSWORD_FILE=counter_store[
                                  "VLLM_WRAPPER_LIMITS_STORE_PASSWORD_FILE"]) for _ in range(2)]
    outcomes: list[object] = []
    started = threading.Barrier(6)

    def stream(index: int) -> None:
        sdk = client(wrappers[index % 2], "parallel")
        started.wait()
        try:
            with sdk.chat.completions.create(model="tiny", messages=MESSAGES, stream=True) as events:
                outcomes.append("streaming")
                for _ in events:
                    pass
        except openai.RateLimitError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(6)]
    try:
        for t in threads:
            t.start()
        # Six parallel streams over two wrappers: two hold the key's places, four are refused at once.
        deadline = time.monotonic() + 20
        while len(outcomes) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(o == "streaming" for o in outcomes) == 2, outcomes
        refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
        assert len(refused) == 4
        assert all(r.body["code"] == "concurrency_limit_exceeded" for r in refused), refused[0].body
        assert all(r.response.headers["retry-after"] == "1" for r in refused)
        stub.release.set()
        for t in threads:
            t.join(30)
        # The places are free again once the streams end.
        time.sleep(RELEASED)
        with client(wrappers[0], "parallel").chat.completions.create(model="tiny", messages=MESSAGES,
                                                                      stream=True) as events:
            assert list(events)
    finally:
        stub.release.set()
        stub.close()


def test_limits_hold_across_wrappers_sharing_the_store(limited_pair) -> None:
    first, second = (client(w, "shared") for w in limited_pair)
    for sdk in (first, second, first, second):
        sdk.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=2)
    for sdk in (first, second):
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=2)


def test_an_unreachable_store_serves_without_limits(vllm_url, start_wrapper, keys_path) -> None:
    from .conftest import free_port

    wrapper = start_wrapper(VLLM_UPSTREAM_URL=vllm_url, VLLM_DEFAULT_MAX_TOKENS="2",
                            VLLM_WRAPPER_API_KEYS_FILE=str(keys_path),
                            VLLM_WRAPPER_LIMITS_STORE=f"redis://127.0.0.1:{free_port()}/0")
    sdk = client(wrapper, "per-minute")
    for _ in range(5):  # over its 3 per minute: without the store the key is not limited
        raw = sdk.chat.completions.with_raw_response.create(model=MODEL_NAME, messages=MESSAGES)
        assert "x-ratelimit-limit-requests" not in raw.headers
    metrics = httpx.get(wrapper.url + "/metrics").text
    assert metric_value(metrics, "vllm_wrapper_limits_store_errors_total") >= 1
    assert "limits store unreachable" in wrapper.logs()


def test_keys_with_limits_need_a_store(vllm_url, tmp_path: Path) -> None:
    import subprocess
    import sys

    from .conftest import WRAPPER_DIR

    keys = write_keys(tmp_path / "keys")
    code = "from vllm_wrapper.app import create_app; create_app()"
    done = subprocess.run([sys.executable, "-c", code],
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(WRAPPER_DIR),
                               "VLLM_UPSTREAM_URL": vllm_url, "VLLM_WRAPPER_API_KEYS_FILE": str(keys)},
                          capture_output=True, text=True, cwd=WRAPPER_DIR, timeout=60)
    assert done.returncode != 0
    assert "have limits, which need a counter store: set VLLM_WRAPPER_LIMITS_STORE" in done.stderr
