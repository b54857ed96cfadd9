"""Through nginx over HTTPS with a certificate from the ACME test server: the public path."""

import json

testinfra_hosts = ["ansible://gpu_servers"]

KEY = "sk-FULLSTACKfakeKEYdoNotPrint4567"
NAME = "gpu01.fleet.test"
ROOT_CA = "/tmp/pebble-root.pem"


def https(host, path, *args, key=KEY):
    host.run_expect([0], f"test -s {ROOT_CA} || curl -sk https://127.0.0.1:15000/roots/0 -o {ROOT_CA}")
    auth = f"-H 'Authorization: Bearer {key}'" if key else ""
    result = host.run(f"curl -sS --cacert {ROOT_CA} -w '\\n%{{http_code}}' {auth} {' '.join(args)} https://{NAME}{path}")
    assert result.rc == 0, result.stderr
    body, status = result.stdout.rsplit("\n", 1)
    return body, int(status)


def test_certificate_issued_by_the_acme_server(host):
    issuer = host.check_output(
        f"echo | openssl s_client -connect 127.0.0.1:443 -servername {NAME} 2>/dev/null | openssl x509 -noout -issuer"
    )
    assert "Pebble" in issuer


def test_chat_over_https_with_verified_tls(host):
    payload = json.dumps({"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
    body, status = https(host, "/v1/chat/completions", "-H 'Content-Type: application/json'", f"-d '{payload}'")
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["role"] == "assistant"


def test_streaming_over_https(host):
    payload = json.dumps(
        {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
    )
    body, status = https(host, "/v1/chat/completions", "-N -H 'Content-Type: application/json'", f"-d '{payload}'")
    assert status == 200, body
    events = [line for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) > 2


def test_models_over_https(host):
    body, status = https(host, "/v1/models")
    assert status == 200
    assert json.loads(body)["data"][0]["id"] == "tiny-llama"


def test_missing_key_is_401_over_https(host):
    body, status = https(host, "/v1/models", key=None)
    assert status == 401
    assert json.loads(body)["error"]["type"] == "authentication_error"


def test_http_redirects_to_https(host):
    status = host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' http://{NAME}/v1/models")
    assert status in ("301", "308")


def test_rate_limit_answers_openai_shaped_429(host):
    # 60 requests as fast as curl sends them, to this host only; the guide's limit is 10 r/s, burst 20.
    out = host.check_output(
        f"curl -s --cacert {ROOT_CA} -H 'Authorization: Bearer {KEY}' -w '%{{http_code}}\\n' "
        + " ".join([f"-o /dev/null https://{NAME}/health"] * 60)
    )
    codes = out.split()
    assert "429" in codes and "200" in codes, codes
    body, status = https(host, "/health")
    if status == 429:
        assert json.loads(body)["error"]["code"] in (429, "rate_limit_exceeded", "429")
