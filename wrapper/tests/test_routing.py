"""Several vLLM instances behind one wrapper (VLLM_UPSTREAMS), played by scripted
upstreams (tests/stub_upstream.py, mode "api") that answer with their own name:
routing by model, replicas sharing the load, the model errors, the merged model
list, Responses API ids found on a later instance, /ready per instance, and the
fleet edge's X-Gpufleet-Instance pin (every route, its 404s, single-upstream mode)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest

from .conftest import MODEL_NAME, Wrapper, free_port, wait_until
from .stub_upstream import SSE_CHUNKS, StubUpstream

ERROR_KEYS = {"message", "type", "param", "code"}


def _chat(model: str | None = None, **extra: object) -> dict:
    body: dict = {"messages": [{"role": "user", "content": "hi"}], **extra}
    if model is not None:
        body["model"] = model
    return body


def _spec(name: str, url: str, *models: str) -> dict:
    return {"name": name, "url": url, "models": list(models)}


def _posts(stub: StubUpstream) -> int:
    return sum(1 for r in stub.requests if r.startswith(b"POST "))


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, StubUpstream]]:
    made = {
        "a": StubUpstream(mode="api", name="a", models=("tiny-a",), response_ids=("resp_on_a",),
                          gap=0.01),
        "b1": StubUpstream(mode="api", name="b1", models=("tiny-b",)),
        "b2": StubUpstream(mode="api", name="b2", models=("tiny-b", "tiny-a")),
    }
    made["a"].release.set()  # a's streams run to the end; b1's and b2's are held
    yield made
    for stub in made.values():
        stub.close()


@pytest.fixture(scope="module")
def down_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def _start(start_wrapper, *specs: dict) -> Wrapper:
    return start_wrapper(VLLM_UPSTREAMS=json.dumps(list(specs)),
                         VLLM_UPSTREAM_URL="http://127.0.0.1:9", VLLM_WRAPPER_RETRY_AFTER="4")


@pytest.fixture(scope="module")
def routed(stubs: dict[str, StubUpstream], start_wrapper) -> Wrapper:
    """b1 and b2 replicas of tiny-b, a serving tiny-a; a last, so that ids are searched."""
    return _start(start_wrapper, _spec("b1", stubs["b1"].url, "tiny-b"),
                  _spec("b2", stubs["b2"].url, "tiny-b"), _spec("a", stubs["a"].url, "tiny-a"))


@pytest.fixture(scope="module")
def partial(stubs: dict[str, StubUpstream], down_url: str, start_wrapper) -> Wrapper:
    """Instance 'down' is unreachable, 'a' answers."""
    return _start(start_wrapper, _spec("down", down_url, "tiny-down"),
                  _spec("a", stubs["a"].url, "tiny-a"))


def _error(r: httpx.Response) -> dict:
    error = r.json()["error"]
    assert set(error) == ERROR_KEYS
    return error


def test_each_model_goes_to_its_instance(stubs: dict[str, StubUpstream], routed: Wrapper) -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/tokenize", "/v1/messages",
                 "/v1/chat/completions/render", "/v1/completions/render"):
        before = _posts(stubs["a"])
        r = httpx.post(routed.url + path, json=_chat("tiny-a"), timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "a"
        assert _posts(stubs["a"]) == before + 1
        assert stubs["a"].requests[-1].startswith(f"POST {path} ".encode())
    r = httpx.post(routed.url + "/chat", json=_chat("tiny-b"), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] in ("b1", "b2")
    # /chat fills in its defaults, the passthrough leaves the body as it was
    assert b'"max_tokens"' in stubs[r.json()["choices"][0]["message"]["content"]].requests[-1]


def test_replicas_take_turns(stubs: dict[str, StubUpstream], routed: Wrapper) -> None:
    before = {name: _posts(stubs[name]) for name in ("a", "b1", "b2")}
    for _ in range(6):
        assert httpx.post(routed.url + "/v1/chat/completions", json=_chat("tiny-b"),
                          timeout=10).status_code == 200
    got = {name: _posts(stubs[name]) - before[name] for name in before}
    assert got == {"a": 0, "b1": 3, "b2": 3}


def test_least_busy_replica_is_chosen(stubs: dict[str, StubUpstream], routed: Wrapper) -> None:
    b1, b2 = stubs["b1"], stubs["b2"]
    assert not b1.release.is_set() and not b2.release.is_set()
    chunks: list[bytes] = []

    def stream() -> None:
        with httpx.stream("POST", routed.url + "/v1/chat/completions",
                          json=_chat("tiny-b", stream=True), timeout=30) as r:
            chunks.extend(r.iter_raw())

    held_before = len(b1.chunk_sent_at) + len(b2.chunk_sent_at)
    client = threading.Thread(target=stream)
    client.start()
    try:
        # the held stream has sent its first two chunks on one replica
        assert wait_until(lambda: len(b1.chunk_sent_at) + len(b2.chunk_sent_at)
                          >= held_before + 2, 10)
        busy, idle = (b1, b2) if len(b1.chunk_sent_at) > len(b2.chunk_sent_at) else (b2, b1)
        busy_before, idle_before = _posts(busy), _posts(idle)
        for _ in range(4):
            r = httpx.post(routed.url + "/v1/chat/completions", json=_chat("tiny-b"), timeout=10)
            assert r.json()["choices"][0]["message"]["content"] == idle.name
        assert (_posts(busy), _posts(idle)) == (busy_before, idle_before + 4)
    finally:
        b1.release.set()
        b2.release.set()
        client.join(30)
    assert b"".join(chunks) == b"".join(SSE_CHUNKS)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat", "/v1/embeddings"])
def test_unknown_model_is_404(routed: Wrapper, path: str) -> None:
    body = {"model": "gpt-nope", "input": "x"} if "embed" in path else _chat("gpt-nope")
    r = httpx.post(routed.url + path, json=body, timeout=10)
    assert r.status_code == 404
    error = _error(r)
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error", "model_not_found", "model")
    assert "gpt-nope" in error["message"]
    assert "'tiny-b'" in error["message"] and "'tiny-a'" in error["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat"])
def test_missing_model_with_several_names_is_400(routed: Wrapper, path: str) -> None:
    r = httpx.post(routed.url + path, json=_chat(), timeout=10)
    assert r.status_code == 400
    error = _error(r)
    assert (error["type"], error["param"]) == ("invalid_request_error", "model")
    assert "'tiny-b'" in error["message"] and "'tiny-a'" in error["message"]


def test_missing_model_with_one_name_is_routed(stubs: dict[str, StubUpstream],
                                               start_wrapper) -> None:
    one = _start(start_wrapper, _spec("a", stubs["a"].url, "tiny-a"),
                 _spec("b2", stubs["b2"].url, "tiny-a"))
    for path in ("/v1/chat/completions", "/chat"):
        r = httpx.post(one.url + path, json=_chat(), timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] in ("a", "b2")
    assert json.loads(stubs[r.json()["choices"][0]["message"]["content"]].requests[-1]
                      .partition(b"\r\n\r\n")[2])["model"] == "tiny-a"  # /chat names it


def test_chat_without_model_takes_vllm_served_model(stubs: dict[str, StubUpstream],
                                                   start_wrapper) -> None:
    """The wrapper role sets VLLM_SERVED_MODEL to the first instance's name: the guide's /chat needs none."""
    chat = start_wrapper(VLLM_UPSTREAMS=json.dumps([_spec("a", stubs["a"].url, "tiny-a"),
                                                    _spec("b1", stubs["b1"].url, "tiny-b")]),
                         VLLM_UPSTREAM_URL="http://127.0.0.1:9", VLLM_SERVED_MODEL="tiny-b")
    r = httpx.post(chat.url + "/chat", json=_chat(), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "b1"
    assert json.loads(stubs["b1"].requests[-1].partition(b"\r\n\r\n")[2])["model"] == "tiny-b"
    # The passthrough is left as sent: without a model it is still refused.
    assert httpx.post(chat.url + "/v1/chat/completions", json=_chat(), timeout=10).status_code == 400


def test_models_are_merged(routed: Wrapper, stubs: dict[str, StubUpstream]) -> None:
    r = httpx.get(routed.url + "/v1/models", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    # b2 also lists tiny-a (it is not routed there): one entry per id, the first seen wins
    assert [(m["id"], m["root"]) for m in body["data"]] == [("tiny-b", "b1"), ("tiny-a", "b2")]


def test_models_without_a_down_instance(partial: Wrapper, down_url: str,
                                        start_wrapper) -> None:
    r = httpx.get(partial.url + "/v1/models", timeout=10)
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["tiny-a"]
    assert wait_until(lambda: any(rec.get("instance") == "down" and "models" in rec.get("msg", "")
                                  for rec in partial.records()), 5)
    dead = _start(start_wrapper, _spec("down", down_url, "x"),
                  _spec("gone", f"http://127.0.0.1:{free_port()}", "y"))
    r = httpx.get(dead.url + "/v1/models", timeout=10)
    assert r.status_code == 503
    assert _error(r)["code"] == "upstream_unavailable"
    assert r.headers["retry-after"] == "4"


def test_response_ids_are_found_on_their_instance(routed: Wrapper,
                                                  stubs: dict[str, StubUpstream]) -> None:
    r = httpx.get(routed.url + "/v1/responses/resp_on_a", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["instance"] == "a"
    r = httpx.post(routed.url + "/v1/responses/resp_on_a/cancel", timeout=10)
    assert (r.status_code, r.json()["instance"], r.json()["status"]) == (200, "a", "cancelled")
    with httpx.stream("GET", routed.url + "/v1/responses/resp_on_a?stream=true",
                      timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert b"".join(r.iter_raw()) == b"".join(SSE_CHUNKS)
    r = httpx.get(routed.url + "/v1/responses/resp_nowhere", timeout=10)
    assert r.status_code == 404
    assert "resp_nowhere" in r.json()["error"]["message"]  # the last instance's own 404


def test_response_id_with_an_instance_down(partial: Wrapper) -> None:
    assert httpx.get(partial.url + "/v1/responses/resp_on_a", timeout=10).status_code == 200
    r = httpx.get(partial.url + "/v1/responses/resp_nowhere", timeout=10)
    assert r.status_code == 503  # it may live on the instance that did not answer
    assert "'down'" in _error(r)["message"] and "'a'" not in _error(r)["message"]


def test_ready_names_the_instance_that_is_down(routed: Wrapper, partial: Wrapper) -> None:
    assert httpx.get(routed.url + "/ready", timeout=10).json() == {"status": "ready"}
    r = httpx.get(partial.url + "/ready", timeout=10)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "4"
    message = _error(r)["message"]
    assert "'down'" in message and "'a'" not in message
    assert httpx.get(partial.url + "/ready?instance=a", timeout=10).status_code == 200
    assert httpx.get(partial.url + "/ready?instance=down", timeout=10).status_code == 503
    r = httpx.get(partial.url + "/ready?instance=zzz", timeout=10)
    assert (r.status_code, _error(r)["param"]) == (404, "instance")


def test_connect_error_names_the_instance(partial: Wrapper) -> None:
    r = httpx.post(partial.url + "/v1/chat/completions", json=_chat("tiny-down"), timeout=10)
    assert r.status_code == 503
    assert "'down'" in _error(r)["message"]
    assert r.headers["retry-after"] == "4"


def test_openai_sdk_through_the_router(routed: Wrapper) -> None:
    client = openai.OpenAI(base_url=routed.url + "/v1", api_key="EMPTY", max_retries=0)
    assert sorted(m.id for m in client.models.list().data) == ["tiny-a", "tiny-b"]
    done = client.chat.completions.create(model="tiny-a", messages=[{"role": "user",
                                                                      "content": "hi"}])
    assert done.choices[0].message.content == "a"
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-nope", messages=[{"role": "user",
                                                                    "content": "hi"}])
    assert err.value.code == "model_not_found"


def test_real_vllm_behind_the_router(vllm_url: str, stubs: dict[str, StubUpstream],
                                     start_wrapper) -> None:
    """Real vLLM as the second instance: its model list, a stream through the SDK, and a
    stored response found there after the scripted instance's 404."""
    w = _start(start_wrapper, _spec("a", stubs["a"].url, "tiny-a"),
               _spec("real", vllm_url, MODEL_NAME))
    client = openai.OpenAI(base_url=w.url + "/v1", api_key="EMPTY", max_retries=0)
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"tiny-a", MODEL_NAME}
    assert models[MODEL_NAME].owned_by == "vllm"
    stream = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user",
                                                                         "content": "hi"}],
                                            max_tokens=3, stream=True,
                                            extra_body={"ignore_eos": True},
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    done = client.responses.create(model=MODEL_NAME, input="hi", max_output_tokens=2,
                                   extra_body={"ignore_eos": True})
    asked_a = len(stubs["a"].requests)
    assert client.responses.retrieve(done.id).id == done.id
    assert stubs["a"].requests[asked_a].startswith(f"GET /v1/responses/{done.id} ".encode())


PIN = "X-Gpufleet-Instance"
# What vllm-router 0.1.17 sends for a plain chat request: the client's body, re-serialised
# with fields of its own.
ROUTER_BODY = (b'{"model":"tiny-b","messages":[{"role":"user","content":"hi"}],"stream":false,'
               b'"logprobs":false,"no_stop_trim":false,"ignore_eos":false,'
               b'"continue_final_message":false,"skip_special_tokens":true}')


def _body(stub: StubUpstream) -> bytes:
    return stub.requests[-1].partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/tokenize",
                                  "/v1/chat/completions/render", "/v1/completions/render"])
def test_pin_sends_every_request_to_that_instance(stubs: dict[str, StubUpstream],
                                                   routed: Wrapper, path: str) -> None:
    before = {name: _posts(stubs[name]) for name in ("a", "b1", "b2")}
    for _ in range(4):  # unpinned, the two replicas of tiny-b would take turns
        r = httpx.post(routed.url + path, json=_chat("tiny-b"), headers={PIN: "b2"}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "b2"
        assert stubs["b2"].requests[-1].startswith(f"POST {path} ".encode())
    got = {name: _posts(stubs[name]) - before[name] for name in before}
    assert got == {"a": 0, "b1": 0, "b2": 4}


def test_pin_without_model_takes_the_instance_model(stubs: dict[str, StubUpstream],
                                                    routed: Wrapper) -> None:
    r = httpx.post(routed.url + "/v1/chat/completions", json=_chat(), headers={PIN: "a"},
                   timeout=10)
    assert (r.status_code, r.json()["choices"][0]["message"]["content"]) == (200, "a")
    assert "model" not in json.loads(_body(stubs["a"]))  # the passthrough body as sent
    r = httpx.post(routed.url + "/chat", json=_chat(), headers={PIN: "b1"}, timeout=10)
    assert (r.status_code, r.json()["choices"][0]["message"]["content"]) == (200, "b1")
    assert json.loads(_body(stubs["b1"]))["model"] == "tiny-b"


def test_router_body_passes_unchanged(stubs: dict[str, StubUpstream], routed: Wrapper) -> None:
    for path in ("/v1/chat/completions/render", "/v1/chat/completions"):
        r = httpx.post(routed.url + path, content=ROUTER_BODY, timeout=10,
                       headers={PIN: "b1", "content-type": "application/json",
                                "authorization": "Bearer sk-client"})
        assert r.status_code == 200, r.text
        assert stubs["b1"].requests[-1].startswith(f"POST {path} ".encode())
        assert _body(stubs["b1"]) == ROUTER_BODY
        head = stubs["b1"].requests[-1].partition(b"\r\n\r\n")[0].lower()
        assert b"sk-client" not in head and b"x-gpufleet-instance" not in head


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/chat/completions"), ("POST", "/v1/chat/completions/render"), ("POST", "/chat"),
    ("GET", "/v1/models"), ("GET", "/ready"), ("GET", "/v1/responses/resp_on_a"),
    ("POST", "/v1/responses/resp_on_a/cancel"),
])
def test_pin_to_an_unknown_instance_is_404(routed: Wrapper, method: str, path: str) -> None:
    r = httpx.request(method, routed.url + path, json=_chat("tiny-a"), headers={PIN: "zz"},
                      timeout=10)
    assert r.status_code == 404, r.text
    error = _error(r)
    assert (error["type"], error["code"]) == ("invalid_request_error", "instance_not_found")
    assert "'zz'" in error["message"]
    assert "'b1', 'b2', 'a'" in error["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat", "/v1/completions/render"])
def test_pin_to_an_instance_without_the_model_is_404(stubs: dict[str, StubUpstream],
                                                     routed: Wrapper, path: str) -> None:
    asked = {name: len(stub.requests) for name, stub in stubs.items()}
    r = httpx.post(routed.url + path, json=_chat("tiny-b"), headers={PIN: "a"}, timeout=10)
    assert r.status_code == 404, r.text
    error = _error(r)
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error", "model_not_found", "model")
    assert "'tiny-b'" in error["message"] and "'a'" in error["message"]
    assert error["message"].endswith("its models: 'tiny-a'")
    assert {name: len(stub.requests) for name, stub in stubs.items()} == asked


def test_pinned_models_are_the_instance_list(routed: Wrapper, partial: Wrapper) -> None:
    r = httpx.get(routed.url + "/v1/models", headers={PIN: "a"}, timeout=10)
    assert r.status_code == 200
    # merged, tiny-a would be b2's entry (b2 comes first and also lists it)
    assert [(m["id"], m["root"]) for m in r.json()["data"]] == [("tiny-a", "a")]
    r = httpx.get(partial.url + "/v1/models", headers={PIN: "down"}, timeout=10)
    assert r.status_code == 503
    assert "'down'" in _error(r)["message"]


def test_pinned_ready_and_response_ids(routed: Wrapper, partial: Wrapper) -> None:
    assert httpx.get(partial.url + "/ready", headers={PIN: "a"}, timeout=10).status_code == 200
    r = httpx.get(partial.url + "/ready", headers={PIN: "down"}, timeout=10)
    assert r.status_code == 503
    assert "'down'" in _error(r)["message"]
    # the header wins over the query, as the edge sets it
    assert httpx.get(partial.url + "/ready?instance=a", headers={PIN: "down"},
                     timeout=10).status_code == 503
    # an id of instance a is not looked for on b1
    r = httpx.get(routed.url + "/v1/responses/resp_on_a", headers={PIN: "b1"}, timeout=10)
    assert r.status_code == 404
    assert "resp_on_a" in r.json()["error"]["message"]  # b1's own 404
    r = httpx.get(routed.url + "/v1/responses/resp_on_a", headers={PIN: "a"}, timeout=10)
    assert (r.status_code, r.json()["instance"]) == (200, "a")


def test_single_upstream_is_instance_server(stubs: dict[str, StubUpstream],
                                            start_wrapper) -> None:
    single = start_wrapper(VLLM_UPSTREAM_URL=stubs["a"].url)
    for path in ("/v1/chat/completions", "/v1/chat/completions/render", "/chat"):
        r = httpx.post(single.url + path, json=_chat("tiny-a"), headers={PIN: "server"},
                       timeout=10)
        assert (r.status_code, r.json()["choices"][0]["message"]["content"]) == (200, "a")
    assert httpx.get(single.url + "/v1/models", headers={PIN: "server"},
                     timeout=10).json()["data"][0]["id"] == "tiny-a"
    assert httpx.get(single.url + "/ready", headers={PIN: "server"}, timeout=10).status_code == 200
    asked = len(stubs["a"].requests)
    for method, path in (("POST", "/v1/chat/completions"), ("POST", "/chat"),
                         ("GET", "/v1/models"), ("GET", "/ready"),
                         ("GET", "/v1/responses/resp_on_a")):
        r = httpx.request(method, single.url + path, json=_chat("tiny-a"), headers={PIN: "a"},
                          timeout=10)
        assert r.status_code == 404, (path, r.text)
        error = _error(r)
        assert (error["type"], error["code"]) == ("invalid_request_error", "instance_not_found")
        assert error["message"].endswith("instances: 'server'")
    assert len(stubs["a"].requests) == asked


FLEET = ["tiny-a", "tiny-b", "tiny-elsewhere"]


@pytest.fixture(scope="module")
def fleet_routed(stubs: dict[str, StubUpstream], start_wrapper) -> Wrapper:
    """As `routed`, knowing the fleet's models (VLLM_FLEET_MODELS, the wrapper role's list)."""
    return start_wrapper(
        VLLM_UPSTREAMS=json.dumps([_spec("b1", stubs["b1"].url, "tiny-b"),
                                   _spec("a", stubs["a"].url, "tiny-a")]),
        VLLM_UPSTREAM_URL="http://127.0.0.1:9", VLLM_WRAPPER_RETRY_AFTER="4",
        VLLM_FLEET_MODELS=json.dumps(FLEET))


def _pinned_refusals(url: str, instance: str, path: str) -> tuple[httpx.Response, httpx.Response]:
    elsewhere = httpx.post(url + path, json=_chat("tiny-elsewhere"), headers={PIN: instance}, timeout=10)
    unknown = httpx.post(url + path, json=_chat("no-such"), headers={PIN: instance}, timeout=10)
    return elsewhere, unknown


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/chat/completions/render"])
def test_pinned_model_of_the_fleet_served_elsewhere_is_503_else_404_naming_the_fleet(
        stubs: dict[str, StubUpstream], fleet_routed: Wrapper, path: str) -> None:
    before = _posts(stubs["a"])
    elsewhere, unknown = _pinned_refusals(fleet_routed.url, "a", path)
    assert elsewhere.status_code == 503 and elsewhere.headers["retry-after"] == "4", elsewhere.text
    assert _error(elsewhere)["code"] == "model_unavailable"
    assert _error(elsewhere)["type"] == "service_unavailable"
    assert unknown.status_code == 404, unknown.text
    assert _error(unknown)["code"] == "model_not_found"
    assert all(repr(name) in _error(unknown)["message"] for name in FLEET), unknown.text
    assert _posts(stubs["a"]) == before  # neither reached vLLM
    served = httpx.post(fleet_routed.url + path, json=_chat("tiny-a"), headers={PIN: "a"}, timeout=10)
    assert served.status_code == 200, served.text


def test_pinned_model_check_in_single_upstream_mode(stubs: dict[str, StubUpstream], start_wrapper) -> None:
    single = start_wrapper(VLLM_UPSTREAM_URL=stubs["a"].url, VLLM_SERVED_MODEL="tiny-a",
                           VLLM_FLEET_MODELS=json.dumps(FLEET))
    elsewhere, unknown = _pinned_refusals(single.url, "server", "/v1/chat/completions")
    assert (elsewhere.status_code, _error(elsewhere)["code"]) == (503, "model_unavailable"), elsewhere.text
    assert (unknown.status_code, _error(unknown)["code"]) == (404, "model_not_found"), unknown.text
    assert "'tiny-elsewhere'" in _error(unknown)["message"]
    # Not pinned: unchanged, vLLM itself answers for the model.
    r = httpx.post(single.url + "/v1/chat/completions", json=_chat("tiny-a"), timeout=10)
    assert r.status_code == 200, r.text


def test_fleet_scope_lists_the_fleet_in_openai_shape(fleet_routed: Wrapper, routed: Wrapper) -> None:
    r = httpx.get(fleet_routed.url + "/v1/models", headers={"X-Gpufleet-Scope": "fleet"}, timeout=10)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == FLEET
    assert all(m["object"] == "model" and m["owned_by"] == "gpufleet" and isinstance(m["created"], int)
               for m in data["data"])
    # Without the header, or without a fleet list: this host's models, as before.
    own = httpx.get(fleet_routed.url + "/v1/models", timeout=10).json()
    assert sorted(m["id"] for m in own["data"]) == ["tiny-a", "tiny-b"]
    plain = httpx.get(routed.url + "/v1/models", headers={"X-Gpufleet-Scope": "fleet"}, timeout=10).json()
    assert "tiny-elsewhere" not in [m["id"] for m in plain["data"]]
