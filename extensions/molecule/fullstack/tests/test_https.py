"""Through nginx over HTTPS with a certificate from the ACME test server: the public path."""

import json
import pathlib
import re
import sys
import time
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[4] / "playbooks" / "files"))
from host_http import pebble_root, request  # noqa: E402
from http_request import connect  # noqa: E402

testinfra_hosts = ["ansible://gpu_servers"]

KEY = "sk-FULLSTACKfakeKEYdoNotPrint4567"
NAME = "gpu01.fleet.test"
ROOT_CA = "/tmp/pebble-root.pem"


@pytest.fixture(scope="module")
def root_ca(host):
    pebble_root(host, ROOT_CA)
    return ROOT_CA


def https(host, root_ca, path, body=None, key=KEY):
    """(body, status) of a request from the host to its own name (127.0.0.1 in /etc/hosts), TLS verified."""
    status, text = request(host, f"https://{NAME}{path}", body=body, key=key, ca_file=root_ca)
    return text, status


def test_certificate_issued_by_the_acme_server(host):
    issuer = host.check_output(
        f"echo | openssl s_client -connect 127.0.0.1:443 -servername {NAME} 2>/dev/null | openssl x509 -noout -issuer"
    )
    assert "Pebble" in issuer


def test_chat_over_https_with_verified_tls(host, root_ca):
    payload = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    body, status = https(host, root_ca, "/v1/chat/completions", payload)
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["role"] == "assistant"


def test_streaming_over_https(host, root_ca):
    payload = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
    body, status = https(host, root_ca, "/v1/chat/completions", payload)
    assert status == 200, body
    events = [line for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) > 2


def test_models_over_https(host, root_ca):
    body, status = https(host, root_ca, "/v1/models")
    assert status == 200
    assert json.loads(body)["data"][0]["id"] == "tiny-llama"


def test_missing_key_is_401_over_https(host, root_ca):
    body, status = https(host, root_ca, "/v1/models", key=None)
    assert status == 401
    assert json.loads(body)["error"]["type"] == "authentication_error"


def test_http_redirects_to_https(host):
    assert request(host, f"http://{NAME}/v1/models")[0] in (301, 308)


def request_limits(host):
    """(rate per second, burst) of each limit_req zone in the deployed nginx configuration."""
    conf = host.file("/etc/nginx/nginx.conf").content_string
    rates = dict(re.findall(r"limit_req_zone \S+ zone=(\w+):\S+ rate=(\d+)r/s;", conf))
    bursts = dict(re.findall(r"limit_req zone=(\w+) burst=(\d+)", conf))
    assert rates and set(rates) == set(bursts), conf
    return [(int(rates[zone]), int(bursts[zone])) for zone in rates]


def test_rate_limit_answers_openai_shaped_429(host, gpu_address, pebble_ca):
    # From this machine (one client address, one key), as fast as it goes: nginx lets through at
    # most burst + 1 + rate * elapsed requests per zone (limit_req ... nodelay), so once more than
    # that were sent, a 429 must have come.
    limits = request_limits(host)
    url = urlsplit(f"https://{NAME}/health")
    started, answers = time.monotonic(), []
    while time.monotonic() - started < 30:
        allowed = min(burst + 1 + rate * (time.monotonic() - started) for rate, burst in limits)
        if len(answers) > allowed:
            break
        conn = connect(url, gpu_address, str(pebble_ca), 10)
        conn.request("GET", url.path, headers={"Authorization": f"Bearer {KEY}"})
        response = conn.getresponse()
        answers.append((response.status, dict(response.getheaders()), response.read()))
        conn.close()
    codes = [status for status, _headers, _body in answers]
    try:
        assert codes[0] == 200 and 429 in codes, (limits, codes)
        _status, headers, body = answers[codes.index(429)]
        error = json.loads(body)["error"]
        assert error["type"] == error["code"] == "rate_limit_exceeded", error
        assert error["message"] and "param" in error
        assert headers["Retry-After"] == "1"
    finally:
        time.sleep(min(max(burst / rate for rate, burst in limits) + 1, 10))  # full burst again for the next tests
