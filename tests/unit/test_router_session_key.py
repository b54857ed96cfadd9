"""The fleet edge's routing key (roles/loadbalancer/templates/router-session.conf.j2) in this machine's real nginx.

The template is rendered as the role renders it and included, with router-edge.conf's body settings, in an nginx
whose upstream is a second server of the same nginx answering the X-Session-ID it received. So every assertion is
about the header vllm-router would get for a request body.
"""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import time
import urllib.request

import jinja2
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "roles" / "loadbalancer" / "templates" / "router-session.conf.j2"
EDGE = ROOT / "roles" / "loadbalancer" / "templates" / "router-edge.conf.j2"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def edge_body_settings():
    """router-edge.conf's lines that make the body readable and send the key, as the role writes them."""
    wanted = ("client_body_buffer_size", "client_body_in_single_buffer", "proxy_set_header X-Session-ID")
    return [line for line in EDGE.read_text().splitlines() if line.startswith(wanted)]


@pytest.fixture(scope="module")
def edge(tmp_path_factory, debian_nginx):
    work = tmp_path_factory.mktemp("edge")
    template = jinja2.Template(TEMPLATE.read_text(), trim_blocks=True, lstrip_blocks=True)
    (work / "session.conf").write_text(template.render(ansible_managed="test"))
    settings = edge_body_settings()
    assert len(settings) == 3, settings
    front, back = free_port(), free_port()
    conf = work / "nginx.conf"
    conf.write_text("""
pid %(work)s/nginx.pid;
error_log %(work)s/error.log warn;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path %(work)s/body;
    proxy_temp_path %(work)s/proxy;
    client_max_body_size 8m;
    include %(work)s/session.conf;
    server {
        listen 127.0.0.1:%(front)d;
        %(settings)s
        location / { proxy_pass http://127.0.0.1:%(back)d; }
    }
    server {
        listen 127.0.0.1:%(back)d;
        location / { default_type text/plain; return 200 "$http_x_session_id"; }
    }
}
""" % {"work": work, "front": front, "back": back, "settings": "\n        ".join(settings)})
    proc = subprocess.Popen([debian_nginx, "-c", str(conf), "-g", "daemon off;"])
    url = "http://127.0.0.1:%d/v1/chat/completions" % front
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(url, data=b"{}", timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)
    # A regex that hits PCRE's match limit logs an alert with the start of the body (the prompt) and sets no key.
    log = (work / "error.log").read_text()
    assert "pcre" not in log.lower(), log[-2000:]


def key(url, body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read().decode()


def chat(first, *later, **extra):
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": first}]
    for turn in later:
        messages += [{"role": "assistant", "content": "An answer."}, {"role": "user", "content": turn}]
    return {"model": "tiny-llama", "messages": messages, "max_tokens": 8, **extra}


def test_every_turn_of_a_conversation_has_the_key_of_its_first_turn(edge):
    first = key(edge, chat("What is a KV cache?"))
    assert first and first.isdigit() and len(first) == 6, first
    assert key(edge, chat("What is a KV cache?", "And a prefix cache?")) == first
    assert key(edge, chat("What is a KV cache?", "And a prefix cache?", "Thanks.", stream=True)) == first


def test_conversations_that_start_differently_have_different_keys(edge):
    keys = {key(edge, chat("Question %d about GPUs" % n)) for n in range(20)}
    assert len(keys) == 20, keys


def test_the_key_does_not_depend_on_field_order_or_spacing(edge):
    first = key(edge, chat("Where is my model?"))
    reordered = '{"messages": [{"content": "Be brief.", "role": "system"}, {"content": "Where is my model?", "role": "user"}], "model": "tiny-llama"}'
    compact = json.dumps(chat("Where is my model?"), separators=(",", ":"))
    assert key(edge, reordered.encode()) == first
    assert key(edge, compact.encode()) == first


def test_a_key_the_client_gives_wins(edge):
    by_user = key(edge, chat("Hello", user="alice"))
    assert by_user == key(edge, chat("Something else entirely", user="alice")) != key(edge, chat("Hello"))
    by_cache_key = key(edge, chat("Hello", prompt_cache_key="team-a/chat-7"))
    assert by_cache_key == key(edge, chat("Other", prompt_cache_key="team-a/chat-7")) != by_user
    assert key(edge, chat("Hello"), {"X-Session-ID": "client-session-1"}) == "client-session-1"


def test_completions_are_keyed_by_the_prompt_and_non_ascii_text_gives_an_ascii_key(edge):
    prompt = key(edge, {"model": "tiny-llama", "prompt": "Once upon a time"})
    assert prompt.isdigit() and prompt == key(edge, {"model": "tiny-llama", "prompt": "Once upon a time", "n": 2})
    raw = '{"model": "m", "messages": [{"role": "user", "content": "日本語の質問です"}]}'.encode()
    assert key(edge, raw).isdigit()


def test_a_body_without_text_gets_no_key(edge):
    assert key(edge, {"model": "tiny-llama", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}) == ""
    assert key(edge, b"") == ""


def test_a_half_megabyte_prompt_is_keyed(edge):
    long = "word " * 100_000
    assert key(edge, chat(long)) == key(edge, chat(long, "A second turn."))
    assert key(edge, chat(long)).isdigit()


def test_long_messages_before_the_key_are_scanned_once(edge):
    system = {"content": "Reference text. " * 2500, "role": "system"}  # 40 kB before the user message
    content_first = {"model": "tiny-llama", "messages": [system, {"content": "Where is my model?", "role": "user"}]}
    assert key(edge, content_first) == key(edge, chat("Where is my model?"))
    image_only = {"model": "tiny-llama", "messages": [
        system, {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]}
    assert key(edge, image_only) == ""
