"""The nginx role puts an ACME certificate, a path allowlist, rate limits and unbuffered streaming
in front of the upstream (here fixture-upstream, standing in for vllm-wrapper)."""

import base64
import json
import textwrap
import time

import pytest

testinfra_hosts = ["ansible://all"]

NAME = "gpu01.fleet.test"
LIVE = f"/etc/letsencrypt/live/{NAME}"
# curl to the real name, resolved to the test host's loopback, checked against pebble's root.
CURL = f"curl -sS --max-time 20 --resolve {NAME}:443:127.0.0.1 --resolve {NAME}:80:127.0.0.1"


def py(host, code):
    """Run a Python snippet on the test host and return its JSON output."""
    script = base64.b64encode(textwrap.dedent(code).encode()).decode()
    return json.loads(host.check_output(f"echo {script} | base64 -d | python3 -"))


# Sends requests over one TLS keepalive connection as fast as it can, so a burst is a burst.
REQUESTS = """
import http.client, json, ssl
def burst(n, path="/v1/models", headers=None):
    ctx = ssl._create_unverified_context()
    conn = http.client.HTTPSConnection("127.0.0.1", 443, context=ctx, timeout=20)
    out = []
    for _ in range(n):
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        out.append([resp.status, resp.read().decode(), resp.getheader("Content-Type"),
                    resp.getheader("Strict-Transport-Security"), resp.getheader("Retry-After")])
    return out
"""


@pytest.fixture(scope="module")
def pebble_root(host):
    """Pebble makes a new root at each start; fetch the one that signed this run's certificate."""
    path = "/tmp/pebble-root.pem"
    host.run_expect([0], f"curl -sSf --cacert /etc/pebble/ca.pem https://127.0.0.1:15000/roots/0 -o {path}")
    return path


@pytest.fixture(scope="module")
def mode(host):
    """TLS mode of this test host, as converge.yml sets it."""
    modes = {"nginx-selfsigned": "selfsigned", "nginx-provided": "provided"}
    return modes.get(host.ansible.get_variables()["inventory_hostname"], "acme")


@pytest.fixture(scope="module")
def key_hash(host):
    """What keys the per-key zones on this test host, as molecule.yml sets it."""
    return {"nginx-provided": "none"}.get(host.ansible.get_variables()["inventory_hostname"], "sha1")


@pytest.fixture()
def acme(mode):
    if mode != "acme":
        pytest.skip("acme mode only")


def refill():
    """Let the per-address bucket (10 r/s, burst 20) fill again before a rate test."""
    time.sleep(3)


def test_packages_installed(host, mode, key_hash):
    extra = {"acme": ["certbot"], "selfsigned": ["python3-cryptography"], "provided": []}
    wanted = ["nginx"] + extra[mode]
    for name in wanted:
        assert host.package(name).is_installed, name
    # the fallback host never gets the module (Ubuntu 22.04 has none to install)
    assert host.package("libnginx-mod-http-set-misc").is_installed == (key_hash == "sha1")


def test_api_key_zone_key_in_the_running_config(host, key_hash):
    running = host.check_output("nginx -T 2>/dev/null")
    assert ("set_sha1 $gpufleet_api_key_sha1 $http_authorization;" in running) == (key_hash == "sha1")
    assert ("default $http_authorization;" in running) == (key_hash == "none")


def test_nginx_running_and_enabled(host):
    service = host.service("nginx")
    assert service.is_running
    assert service.is_enabled


def test_certbot_timer_enabled(host, acme):
    timer = host.service("certbot.timer")
    assert timer.is_enabled
    assert timer.is_running


@pytest.mark.parametrize("port", [80, 443])
def test_ports_listening(host, port):
    assert host.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_configuration_passes_nginx_t(host):
    host.run_expect([0], "nginx -t -q")


def test_broken_config_was_not_installed(host):
    # converge.yml ran the role with a directive nginx rejects; the running config kept its place.
    assert "gpufleet_no_such_directive" not in host.file("/etc/nginx/nginx.conf").content_string


def test_certificate_issued_by_pebble(host, acme):
    out = host.check_output(f"openssl x509 -in {LIVE}/fullchain.pem -noout -issuer -subject -ext subjectAltName")
    assert "Pebble Intermediate CA" in out
    assert f"DNS:{NAME}" in out
    # nginx serves the lineage's current certificate (reloaded after certbot replaced it)
    on_disk = host.check_output(f"openssl x509 -in {LIVE}/cert.pem -noout -serial")
    served = host.check_output(
        f"echo | openssl s_client -connect 127.0.0.1:443 -servername {NAME} 2>/dev/null | openssl x509 -noout -serial"
    )
    assert served == on_disk


def test_pebble_really_validated_over_http(host, acme):
    # Real http-01: pebble fetched the token certbot put in the webroot, through nginx on port 80.
    log = host.file("/var/log/nginx/access.log").content_string
    fetched = [line for line in log.splitlines() if '"GET /.well-known/acme-challenge/' in line]
    assert any(" 200 " in line and "molecule-probe-token" not in line for line in fetched), fetched


def test_lineage_renews_from_the_configured_server_with_webroot(host, acme):
    # On nginx-trixie prepare.yml made the lineage with another server URL and --standalone.
    conf = host.file(f"/etc/letsencrypt/renewal/{NAME}.conf").content_string
    assert "server = https://127.0.0.1:14000/dir" in conf.splitlines()
    assert "authenticator = webroot" in conf.splitlines()


def test_private_key_mode(host, mode):
    key = f"{LIVE}/privkey.pem" if mode == "acme" else f"/etc/nginx/tls/{NAME}.key"
    assert host.check_output(f"stat -L -c %a {key}") == "600"


def test_selfsigned_certificate(host, mode):
    if mode != "selfsigned":
        pytest.skip("selfsigned mode only")
    served = host.check_output(
        f"echo | openssl s_client -connect 127.0.0.1:443 -servername {NAME} 2>/dev/null"
        " | openssl x509 -noout -subject -issuer -ext subjectAltName"
    )
    lines = served.splitlines()
    assert lines[0].replace("subject=", "") == lines[1].replace("issuer=", "")
    assert f"DNS:{NAME}" in served
    out = host.check_output(f"{CURL} --cacert /etc/nginx/tls/{NAME}.crt https://{NAME}/health")
    assert json.loads(out)["status"] == "ok"


def test_provided_certificate(host, mode):
    if mode != "provided":
        pytest.skip("provided mode only")
    assert host.file(f"/etc/nginx/tls/{NAME}.crt").content == host.file("/etc/fixture-internal-ca/site.crt").content
    # the chain served verifies against the internal CA that signed the provided certificate
    out = host.check_output(f"{CURL} --cacert /etc/fixture-internal-ca/ca.pem https://{NAME}/health")
    assert json.loads(out)["status"] == "ok"


def test_https_chain_verifies_and_proxies_health(host, acme, pebble_root):
    out = host.check_output(f"{CURL} --cacert {pebble_root} https://{NAME}/health")
    body = json.loads(out)
    assert body["status"] == "ok"
    assert body["fixture"] == "fixture-upstream"
    assert body["x_forwarded_proto"] == "https"
    assert body["x_forwarded_for"] == "127.0.0.1"


def test_tls_versions(host):
    host.run_expect([0], f"echo | openssl s_client -connect 127.0.0.1:443 -servername {NAME} -tls1_3")
    host.run_expect([0], f"echo | openssl s_client -connect 127.0.0.1:443 -servername {NAME} -tls1_2")
    assert host.run(f"echo | openssl s_client -connect 127.0.0.1:443 -servername {NAME} -tls1_1").rc != 0


def test_http_redirects_to_https(host):
    # 308 keeps the method and body: a POST sent to http:// is repeated as a POST.
    out = host.check_output(
        f"{CURL} -k -L -H 'Content-Type: application/json' -d '{{}}' -w '\\n%{{http_code}} %{{num_redirects}} %{{url_effective}}' "
        f"http://{NAME}/v1/chat/completions"
    )
    body, status = out.rsplit("\n", 1)
    assert status == f"200 1 https://{NAME}/v1/chat/completions"
    assert json.loads(body)["object"] == "chat.completion"
    first = host.check_output(f"{CURL} -o /dev/null -w '%{{http_code}} %{{redirect_url}}' http://{NAME}/v1/models")
    assert first == f"308 https://{NAME}/v1/models"


def test_acme_challenge_served_on_port_80(host, acme):
    token = "molecule-probe-token"
    path = f"/var/www/acme/.well-known/acme-challenge/{token}"
    host.run_expect([0], f"echo challenge-ok > {path}")
    try:
        out = host.check_output(f"{CURL} -w ' %{{http_code}}' http://{NAME}/.well-known/acme-challenge/{token}")
    finally:
        host.run(f"rm -f {path}")
    assert out == "challenge-ok\n 200"


@pytest.mark.parametrize("path", ["/admin", "/v1/models/extra", "/healthz", "/v1/audio/speech"])
def test_paths_outside_the_allowlist_get_404_json(host, path):
    out = host.check_output(f"{CURL} -k -w '\\n%{{http_code}} %{{content_type}}' https://{NAME}{path}")
    body, status = out.rsplit("\n", 1)
    assert status == "404 application/json"
    assert json.loads(body)["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("path", ["/v1/models", "/ready", "/docs", "/openapi.json"])
def test_allowlisted_paths_reach_the_upstream(host, path):
    out = host.check_output(f"{CURL} -k -o /dev/null -w '%{{http_code}}' https://{NAME}{path}")
    assert out == "200"


# One request at a time, a little under the per-address rate (10 r/s), each on its own connection.
PACED = """
import http.client, json, ssl, time
def paced(cases):
    out = []
    for method, path in cases:
        conn = http.client.HTTPSConnection("127.0.0.1", 443, context=ssl._create_unverified_context(), timeout=20)
        body = None if method == "GET" else b"{}"
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        out.append([method, path, resp.status, resp.read().decode()])
        conn.close()
        time.sleep(0.15)
    return out
"""


def test_vllm_client_api_reaches_the_upstream(host):
    # vLLM's client routes (Responses API with ids, embeddings, tokenizer, Messages API) as the
    # wrapper serves them; the upstream echoes the path (with the query) it was sent.
    cases = [
        ["POST", "/v1/responses"], ["GET", "/v1/responses/resp_0a1b2c"],
        ["GET", "/v1/responses/resp_0a1b2c?stream=true&starting_after=2"],
        ["POST", "/v1/responses/resp_0a1b2c/cancel"], ["POST", "/v1/embeddings"],
        ["POST", "/tokenize"], ["POST", "/detokenize"], ["POST", "/v1/messages"],
        ["POST", "/v1/messages/count_tokens"],
    ]
    results = py(host, PACED + f"print(json.dumps(paced({cases!r})))")
    for method, path, status, body in results:
        assert status == 200, (method, path, body)
        assert json.loads(body)["path"] == path


def test_vllm_admin_and_unknown_paths_get_404_json(host):
    # vLLM's admin routes and shapes next to the passed ones stop at nginx; dot segments (also
    # percent-encoded) are resolved before the locations match.
    cases = [
        ["POST", "/v1/load_lora_adapter"], ["POST", "/sleep"], ["POST", "/wake_up"],
        ["POST", "/start_profile"], ["POST", "/scale_elastic_ep"], ["POST", "/reset_prefix_cache"],
        ["GET", "/version"], ["POST", "/inference/v1/generate"], ["GET", "/v1/responses/"],
        ["GET", "/v1/responses/resp_1/input_items"], ["POST", "/v1/responses/a/b/cancel"],
        ["POST", "/v1/responses/%2e%2e/%2e%2e/start_profile"], ["POST", "/tokenize/x"],
        ["POST", "/v1/messages/batches"],
    ]
    results = py(host, PACED + f"print(json.dumps(paced({cases!r})))")
    for method, path, status, body in results:
        assert status == 404, (method, path, body)
        error = json.loads(body)["error"]
        assert error["type"] == "not_found_error", (method, path)
        assert error["message"].startswith("Unknown path"), (method, path)  # nginx's, not the upstream's


def test_authorization_reaches_the_upstream(host):
    out = host.check_output(f"{CURL} -k -H 'Authorization: Bearer sk-molecule-secret' https://{NAME}/v1/models")
    assert json.loads(out)["authorization_seen"] is True


def test_api_key_never_logged(host):
    host.run_expect([0], f"{CURL} -k -o /dev/null -H 'Authorization: Bearer sk-molecule-secret' https://{NAME}/chat")
    logs = host.run("cat /var/log/nginx/access.log /var/log/nginx/error.log").stdout
    assert "/chat" in logs
    assert "sk-molecule-secret" not in logs


def test_metrics_allowed_from_loopback(host):
    out = host.check_output(f"{CURL} -k https://{NAME}/metrics")
    assert "fixture_up 1" in out


def test_metrics_blocked_for_other_sources(host):
    # Connecting to the host's own eth0 address makes that address the source, not 127.0.0.1.
    addr = host.check_output("hostname -I").split()[0]
    out = host.check_output(f"curl -sS -k -w '\\n%{{http_code}}' --resolve {NAME}:443:{addr} https://{NAME}/metrics")
    body, status = out.rsplit("\n", 1)
    assert status == "403"
    assert json.loads(body)["error"]["type"] == "permission_error"


def test_body_size_limit_answers_413_json(host):
    out = host.check_output(
        f"head -c 2000000 /dev/zero | {CURL} -k -w '\\n%{{http_code}}' -H 'Content-Type: application/json' "
        f"--data-binary @- https://{NAME}/v1/chat/completions"
    )
    body, status = out.rsplit("\n", 1)
    assert status == "413"
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


def test_streaming_is_not_buffered(host):
    # The fixture sends six SSE chunks 0.5 s apart; buffered, they would all arrive at the end.
    times = py(host, """
        import http.client, json, ssl, time
        conn = http.client.HTTPSConnection("127.0.0.1", 443, context=ssl._create_unverified_context(), timeout=20)
        start = time.monotonic()
        conn.request("POST", "/v1/chat/completions", body=json.dumps({"stream": True}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        arrivals = []
        while True:
            line = resp.readline()
            if not line:
                break
            if line.startswith(b"data:"):
                arrivals.append(time.monotonic() - start)
        print(json.dumps({"status": resp.status, "type": resp.getheader("Content-Type"), "arrivals": arrivals}))
    """)
    assert times["status"] == 200
    assert times["type"].startswith("text/event-stream")
    arrivals = times["arrivals"]
    assert len(arrivals) == 7  # six events and [DONE]
    assert arrivals[0] < 1.0
    assert arrivals[-1] - arrivals[0] > 2.0


def test_upstream_down_answers_503_json(host):
    host.run_expect([0], "systemctl stop fixture-upstream")
    try:
        out = host.check_output(f"{CURL} -k -w '\\n%{{http_code}}' https://{NAME}/health")
    finally:
        host.run_expect([0], "systemctl start fixture-upstream")
        host.run_expect([0], "timeout 10 sh -c 'until curl -sf http://127.0.0.1:8001/health >/dev/null; do sleep 0.2; done'")
    body, status = out.rsplit("\n", 1)
    assert status == "503"
    assert json.loads(body)["error"]["type"] == "service_unavailable"


def test_renewal_deploy_hook_reloads_nginx(host, acme):
    # nginx reads certificates only at (re)load: a new serial on the wire means the hook reloaded it.
    env = host.check_output("systemctl show certbot.service -p Environment")
    assert env == "Environment=REQUESTS_CA_BUNDLE=/etc/pebble/ca.pem"
    serial_cmd = f"echo | openssl s_client -connect 127.0.0.1:443 -servername {NAME} 2>/dev/null | openssl x509 -noout -serial"
    before = host.check_output(serial_cmd)
    out = host.check_output(
        "REQUESTS_CA_BUNDLE=/etc/pebble/ca.pem certbot renew --force-renewal --no-random-sleep-on-renew 2>&1"
    )
    assert "all renewals succeeded" in out
    after = before
    for _attempt in range(20):
        after = host.check_output(serial_cmd)
        if after != before:
            break
        time.sleep(0.5)
    assert after != before


def test_rate_limit_per_address_answers_429_json(host):
    refill()
    results = py(host, REQUESTS + "print(json.dumps(burst(40)))")
    statuses = [r[0] for r in results]
    assert statuses[:21] == [200] * 21  # the first request and a burst of 20
    assert 21 <= statuses.count(200) <= 30
    assert statuses.count(429) >= 10
    limited = next(r for r in results if r[0] == 429)
    assert limited[2] == "application/json"
    assert limited[4] == "1"  # Retry-After
    error = json.loads(limited[1])["error"]
    assert error["type"] == "rate_limit_exceeded"
    assert error["param"] is None


def test_hsts_only_when_enabled(host, mode):
    # converge enables HSTS on nginx-selfsigned only; the 429 location repeats it (own add_header).
    refill()
    results = py(host, REQUESTS + "print(json.dumps(burst(25, path='/health') + burst(1, path='/nope')))")
    assert {r[0] for r in results} == {200, 404, 429}
    expected = "max-age=31536000" if mode == "selfsigned" else None
    assert {r[3] for r in results} == {expected}


def test_rate_limit_per_api_key(host):
    # converge sets 2 r/s, burst 5 per key: key A runs out while key B and the address still have room.
    refill()
    results = py(host, REQUESTS + """
a = burst(12, headers={"Authorization": "Bearer key-a"})
b = burst(3, headers={"Authorization": "Bearer key-b"})
print(json.dumps({"a": [r[0] for r in a], "b": [r[0] for r in b]}))
""")
    assert results["a"][:6] == [200] * 6
    assert results["a"].count(429) >= 4
    assert results["b"] == [200, 200, 200]


def test_api_keys_over_255_bytes(host, key_hash):
    # sha1: each long key has its own digest bucket. none: limit_conn would skip such keys and log
    # them, so they share one bucket instead, and the error log never holds them.
    refill()
    results = py(host, REQUESTS + """
a = burst(12, headers={"Authorization": "Bearer " + "a" * 300})
b = burst(3, headers={"Authorization": "Bearer " + "b" * 300})
print(json.dumps({"a": [r[0] for r in a], "b": [r[0] for r in b]}))
""")
    assert results["a"][:6] == [200] * 6
    assert results["a"].count(429) >= 4
    if key_hash == "sha1":
        assert results["b"] == [200, 200, 200]
    else:
        assert results["b"].count(429) >= 2
    assert "a" * 300 not in host.file("/var/log/nginx/error.log").content_string


def test_concurrent_streams_limited_per_address(host):
    # converge sets nginx_limit_conn 4: of six streams opened at once, two are refused.
    refill()
    statuses = py(host, """
        import http.client, json, ssl, threading
        statuses = []
        def stream():
            conn = http.client.HTTPSConnection("127.0.0.1", 443, context=ssl._create_unverified_context(), timeout=20)
            conn.request("POST", "/chat", body=json.dumps({"stream": True}), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        threads = [threading.Thread(target=stream) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(json.dumps(sorted(statuses)))
    """)
    assert statuses == [200, 200, 200, 200, 429, 429]
