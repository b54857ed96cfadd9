"""Structured logs without secrets, graceful drain on SIGTERM, several workers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from vllm_wrapper.auth import hash_key

from .conftest import API_KEYS, MODEL_NAME, Wrapper, metric_value, wait_until
from .stub_upstream import SSE_CHUNKS, StubUpstream

PROMPT_MARKER = "PROMPT-MARKER-7f3a9c-do-not-log"


def test_logs_are_json_with_request_id_and_never_key_or_prompt(auth_wrapper: Wrapper) -> None:
    rid = "log-test-rid-42"
    rid_refused = "log-test-rid-401"
    for name in ("alice", "bob"):
        for path, body in (
            ("/v1/chat/completions", {"model": MODEL_NAME, "max_tokens": 2,
                                      "messages": [{"role": "user", "content": PROMPT_MARKER}]}),
            ("/chat", {"messages": [{"role": "user", "content": PROMPT_MARKER}], "max_tokens": 2,
                       "stream": True}),
            ("/v1/completions", {"model": MODEL_NAME, "prompt": PROMPT_MARKER, "max_tokens": 2}),
        ):
            r = httpx.post(auth_wrapper.url + path, json=body, timeout=60,
                           headers={"Authorization": f"Bearer {API_KEYS[name]}",
                                    "X-Request-Id": rid})
            assert r.status_code == 200
    refused = httpx.post(auth_wrapper.url + "/v1/chat/completions", json={"prompt": PROMPT_MARKER},
                         headers={"Authorization": "Bearer sk-wrong-" + PROMPT_MARKER,
                                  "X-Request-Id": rid_refused})
    assert refused.status_code == 401
    # An access line is written once its answer has been sent: wait for the last one.
    assert wait_until(lambda: rid_refused in auth_wrapper.logs(), 10), "401 not logged"
    text = auth_wrapper.logs()
    for secret in (*API_KEYS.values(), PROMPT_MARKER, hash_key(API_KEYS["bob"])):
        assert secret not in text
    records = auth_wrapper.records()
    access = [r for r in records if r["logger"] == "vllm_wrapper.access"]
    mine = [r for r in access if r["request_id"] == rid]
    assert {r["key"] for r in mine} == {"alice", "bob"}
    assert all(r["status"] == 200 and r["duration_ms"] > 0 for r in mine)
    assert any(r["stream"] for r in mine)
    assert len(mine) == 6
    assert [(r["status"], r["key"]) for r in access if r["request_id"] == rid_refused] == [(401, "-")]


def test_graceful_drain_on_sigterm(start_wrapper) -> None:
    # A stream the scripted upstream holds open until the checks below are done: with real vLLM
    # the stream's length is the machine's speed (700 tokens ended before the checks on a busy
    # machine, and outlasted the drain timeout on a busier one), so the test timed itself.
    stub = StubUpstream(mode="hold")
    try:
        w = start_wrapper(VLLM_UPSTREAM_URL=stub.url, VLLM_WRAPPER_DRAIN_TIMEOUT="30")
        with httpx.stream("POST", w.url + "/v1/chat/completions", timeout=60, json={
            "model": MODEL_NAME, "messages": [{"role": "user", "content": "x"}], "stream": True,
        }) as r:
            assert r.status_code == 200
            chunks = r.iter_raw()
            received = next(chunks)
            w.proc.send_signal(signal.SIGTERM)
            # The handler runs on the wrapper's event loop: on a busy machine that can be later
            # than the next request, so wait for its log line rather than a fixed time.
            assert wait_until(lambda: "SIGTERM received: draining" in w.logs(), 10), \
                "SIGTERM not handled"
            assert w.proc.poll() is None, "wrapper exited while a stream was in flight"
            refused = httpx.post(w.url + "/v1/chat/completions", json={"messages": []}, timeout=5)
            assert refused.status_code == 503
            assert refused.headers["retry-after"]
            assert refused.json()["error"]["code"] == "draining"
            assert httpx.get(w.url + "/ready", timeout=5).status_code == 503
            assert httpx.get(w.url + "/health", timeout=5).status_code == 200
            assert w.proc.poll() is None, "wrapper exited while a stream was in flight"
            assert len(stub.requests) == 1, "a request was passed on while draining"
            stub.release.set()
            received += b"".join(chunks)
        assert received == b"".join(SSE_CHUNKS)  # the stream in flight ended whole
        w.proc.wait(timeout=15)
    finally:
        stub.close()


def test_several_workers_share_metrics_and_reload_keys(start_wrapper, vllm_url: str,
                                                       tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"ops:{hash_key('key-one')}\n")
    keys.chmod(0o600)
    w = start_wrapper(VLLM_UPSTREAM_URL=vllm_url, VLLM_WRAPPER_WORKERS="2",
                      VLLM_WRAPPER_API_KEYS_FILE=str(keys))
    n = 12
    for _ in range(n):  # a new connection each time, so both workers take some
        assert httpx.get(w.url + "/v1/models", headers={"Authorization": "Bearer key-one"}
                         ).status_code == 200

    def counted() -> float:
        text = httpx.get(w.url + "/metrics").text
        return metric_value(text, "vllm_wrapper_requests_total", route="/v1/models", key="ops")

    # A worker counts a request after sending its answer, and the other worker may answer the
    # next /metrics before that: wait for the last count, then every answer must show all n.
    assert wait_until(lambda: counted() >= n, 10), "requests not all counted"
    for _ in range(3):  # whichever worker answers /metrics, it reports both workers' counts
        assert counted() == n
    keys.write_text(f"dev:{hash_key('key-two')}\n")
    future = time.time() + 2
    os.utime(keys, (future, future))

    def all_reloaded() -> bool:
        codes = [httpx.get(w.url + "/v1/models", headers={"Authorization": "Bearer key-two"}
                           ).status_code for _ in range(8)]
        return all(c == 200 for c in codes)

    # Each worker looks at the file at most once a second (auth.RELOAD_CHECK_INTERVAL).
    assert wait_until(all_reloaded, 10), "a worker still refuses the new key"
    assert httpx.get(w.url + "/v1/models", headers={"Authorization": "Bearer key-one"}
                     ).status_code == 401
