"""Structured logs without secrets, graceful drain on SIGTERM, several workers."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx

from vllm_wrapper.auth import hash_key

from .conftest import API_KEYS, MODEL_NAME, Wrapper, metric_value, wait_until

PROMPT_MARKER = "PROMPT-MARKER-7f3a9c-do-not-log"


def test_logs_are_json_with_request_id_and_never_key_or_prompt(auth_wrapper: Wrapper) -> None:
    rid = "log-test-rid-42"
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
    httpx.post(auth_wrapper.url + "/v1/chat/completions", json={"prompt": PROMPT_MARKER},
               headers={"Authorization": "Bearer sk-wrong-" + PROMPT_MARKER})
    assert wait_until(lambda: auth_wrapper.logs().count(rid) >= 6, 5)
    text = auth_wrapper.logs()
    for secret in (*API_KEYS.values(), PROMPT_MARKER, hash_key(API_KEYS["bob"])):
        assert secret not in text
    records = auth_wrapper.records()
    access = [r for r in records if r["logger"] == "vllm_wrapper.access"]
    mine = [r for r in access if r["request_id"] == rid]
    assert {r["key"] for r in mine} == {"alice", "bob"}
    assert all(r["status"] == 200 and r["duration_ms"] > 0 for r in mine)
    assert any(r["stream"] for r in mine)
    assert any(r["status"] == 401 for r in access)


def test_graceful_drain_on_sigterm(start_wrapper, vllm_url: str) -> None:
    w = start_wrapper(VLLM_UPSTREAM_URL=vllm_url, VLLM_WRAPPER_DRAIN_TIMEOUT="30")
    result: dict[str, object] = {}

    def stream() -> None:
        with httpx.stream("POST", w.url + "/v1/chat/completions", timeout=60, json={
            "model": MODEL_NAME, "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 700, "ignore_eos": True, "stream": True,
        }) as r:
            result["status"] = r.status_code
            result["body"] = r.read()

    t = threading.Thread(target=stream)
    t.start()
    assert wait_until(lambda: "status" in result, 10), "stream did not start"
    w.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert w.proc.poll() is None, "wrapper exited while a stream was in flight"
    refused = httpx.post(w.url + "/v1/chat/completions", json={"messages": []}, timeout=5)
    assert refused.status_code == 503
    assert refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "draining"
    assert httpx.get(w.url + "/ready", timeout=5).status_code == 503
    assert httpx.get(w.url + "/health", timeout=5).status_code == 200
    t.join(timeout=30)
    assert result["status"] == 200
    assert bytes(result["body"]).rstrip().endswith(b"data: [DONE]")  # type: ignore[arg-type]
    w.proc.wait(timeout=15)


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
    for _ in range(3):  # whichever worker answers /metrics, it reports both workers' counts
        text = httpx.get(w.url + "/metrics").text
        assert metric_value(text, "vllm_wrapper_requests_total", route="/v1/models",
                            key="ops") == n
    keys.write_text(f"dev:{hash_key('key-two')}\n")
    future = time.time() + 2
    os.utime(keys, (future, future))
    time.sleep(1.2)

    def all_reloaded() -> bool:
        codes = [httpx.get(w.url + "/v1/models", headers={"Authorization": "Bearer key-two"}
                           ).status_code for _ in range(8)]
        return all(c == 200 for c in codes)

    assert wait_until(all_reloaded, 5)
    assert httpx.get(w.url + "/v1/models", headers={"Authorization": "Bearer key-one"}
                     ).status_code == 401
