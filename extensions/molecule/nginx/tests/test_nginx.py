"""The nginx role puts an ACME certificate, a path allowlist, rate limits and unbuffered streaming
in front of the upstream (here fixture-upstream, standing in for vllm-wrapper). Requests come from
this machine as a client's would (conftest.py); the host itself is asked only where nginx treats
its loopback address differently."""

import json
import socket
import ssl
import threading
import time
import warnings

import pytest
from conftest import NAME
from cryptography import x509
from host_http import request as request_on_host

testinfra_hosts = ["ansible://all"]

LIVE = f"/etc/letsencrypt/live/{NAME}"
JSON = {"Content-Type": "application/json"}


def certificate(pem):
    return x509.load_pem_x509_certificate(pem.encode())


def dns_names(cert):
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def served_certificate(nginx):
    """The certificate nginx serves for NAME; the handshake verifies it against the mode's CA."""
    conn = nginx.connection()
    try:
        return x509.load_der_x509_certificate(conn.sock.getpeercert(binary_form=True))
    finally:
        conn.close()


def handshake(nginx, version):
    """The TLS version negotiated when the client offers only VERSION."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(nginx.ca_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1 is deprecated: that is the point
        context.minimum_version = context.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS 1.1 only at security level 0
    with socket.create_connection((nginx.address, 443), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=NAME) as tls:
            return tls.version()


def test_packages_installed(host, mode, key_hash):
    extra = {"acme": ["certbot"], "selfsigned": ["python3-cryptography"], "provided": []}
    wanted = ["nginx"] + extra[mode]
    for name in wanted:
        assert host.package(name).is_installed, name
    # the fallback host never gets the module (Ubuntu 22.04 has none to install)
    assert host.package("libnginx-mod-http-set-misc").is_installed == (key_hash == "sha1")


def test_no_client_tools_on_the_host(host):
    # Test hosts get only what the roles install: a shipped playbook that needed curl would fail here.
    for tool in ("curl", "wget"):
        assert not host.exists(tool), tool


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


def test_certificate_issued_by_pebble(host, acme, nginx):
    cert = certificate(host.file(f"{LIVE}/fullchain.pem").content_string)
    assert "Pebble Intermediate CA" in cert.issuer.rfc4514_string()
    assert NAME in dns_names(cert)
    # nginx serves the lineage's current certificate (reloaded after certbot replaced it)
    on_disk = certificate(host.file(f"{LIVE}/cert.pem").content_string)
    assert served_certificate(nginx).serial_number == on_disk.serial_number


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


def test_selfsigned_certificate(mode, nginx):
    if mode != "selfsigned":
        pytest.skip("selfsigned mode only")
    # verified against itself as the only trusted CA
    served = served_certificate(nginx)
    assert served.subject == served.issuer
    assert NAME in dns_names(served)


def test_provided_certificate(host, mode):
    if mode != "provided":
        pytest.skip("provided mode only")
    # the chain served verifies against the internal CA that signed it (test_https_..._health)
    assert host.file(f"/etc/nginx/tls/{NAME}.crt").content == host.file("/etc/fixture-internal-ca/site.crt").content


def test_https_chain_verifies_and_proxies_health(nginx):
    # Verified against the mode's CA: pebble's root, the self-signed certificate or the internal CA.
    conn = nginx.connection()
    try:
        client = conn.sock.getsockname()[0]
        answer = nginx.send(conn, "/health")
    finally:
        conn.close()
    body = answer.json()
    assert body["status"] == "ok"
    assert body["fixture"] == "fixture-upstream"
    assert body["x_forwarded_proto"] == "https"
    assert body["x_forwarded_for"] == client  # the client's address, as nginx saw it


def test_tls_versions(nginx):
    assert handshake(nginx, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    assert handshake(nginx, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    # the client offers TLS 1.1 and nginx answers that the version is not allowed
    with pytest.raises(ssl.SSLError, match="TLSV1_ALERT_PROTOCOL_VERSION"):
        handshake(nginx, ssl.TLSVersion.TLSv1_1)


def test_http_redirects_to_https(nginx):
    # 308 keeps the method and body: a POST sent to http:// is repeated as a POST, as clients do.
    first = nginx.request("/v1/chat/completions", body="{}", headers=JSON, scheme="http")
    assert (first.status, first.headers["Location"]) == (308, f"https://{NAME}/v1/chat/completions")
    again = nginx.request("/v1/chat/completions", body="{}", headers=JSON)
    assert again.status == 200
    assert again.json()["object"] == "chat.completion"
    answer = nginx.request("/v1/models?limit=1", scheme="http")
    assert (answer.status, answer.headers["Location"]) == (308, f"https://{NAME}/v1/models?limit=1")


def test_acme_challenge_served_on_port_80(host, acme, nginx):
    token = "molecule-probe-token"
    path = f"/var/www/acme/.well-known/acme-challenge/{token}"
    host.run_expect([0], f"echo challenge-ok > {path}")
    try:
        answer = nginx.request(f"/.well-known/acme-challenge/{token}", scheme="http")
    finally:
        host.run(f"rm -f {path}")
    assert (answer.status, answer.body) == (200, "challenge-ok\n")


@pytest.mark.parametrize("path", ["/admin", "/v1/models/extra", "/healthz", "/v1/audio/speech"])
def test_paths_outside_the_allowlist_get_404_json(nginx, path):
    answer = nginx.request(path)
    assert (answer.status, answer.headers["Content-Type"]) == (404, "application/json")
    assert answer.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("path", ["/v1/models", "/ready", "/docs", "/openapi.json"])
def test_allowlisted_paths_reach_the_upstream(nginx, path):
    assert nginx.request(path).status == 200


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/v1/responses"), ("GET", "/v1/responses/resp_0a1b2c"),
        ("GET", "/v1/responses/resp_0a1b2c?stream=true&starting_after=2"),
        ("POST", "/v1/responses/resp_0a1b2c/cancel"), ("POST", "/v1/embeddings"),
        ("POST", "/tokenize"), ("POST", "/detokenize"), ("POST", "/v1/messages"),
        ("POST", "/v1/messages/count_tokens"), ("POST", "/v1/chat/completions/render"),
        ("POST", "/v1/completions/render"),
    ],
)
def test_vllm_client_api_reaches_the_upstream(nginx, method, path):
    # vLLM's client routes (Responses API with ids, embeddings, tokenizer, Messages API, render) as the
    # wrapper serves them; the upstream echoes the path (with the query) it was sent.
    answer = nginx.request(path, method, body=None if method == "GET" else "{}", headers=JSON)
    assert answer.status == 200, answer
    assert answer.json()["path"] == path


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/v1/load_lora_adapter"), ("POST", "/sleep"), ("POST", "/wake_up"),
        ("POST", "/start_profile"), ("POST", "/scale_elastic_ep"), ("POST", "/reset_prefix_cache"),
        ("GET", "/version"), ("POST", "/inference/v1/generate"), ("GET", "/v1/responses/"),
        ("GET", "/v1/responses/resp_1/input_items"), ("POST", "/v1/responses/a/b/cancel"),
        ("POST", "/v1/responses/%2e%2e/%2e%2e/start_profile"), ("POST", "/tokenize/x"),
        ("POST", "/v1/messages/batches"),
    ],
)
def test_vllm_admin_and_unknown_paths_get_404_json(nginx, method, path):
    # vLLM's admin routes and shapes next to the passed ones stop at nginx; dot segments (also
    # percent-encoded) are resolved before the locations match.
    answer = nginx.request(path, method, body=None if method == "GET" else "{}", headers=JSON)
    assert answer.status == 404, answer
    error = answer.json()["error"]
    assert error["type"] == "not_found_error"
    assert error["message"].startswith("Unknown path")  # nginx's, not the upstream's


def test_authorization_reaches_the_upstream(nginx):
    answer = nginx.request("/v1/models", headers={"Authorization": "Bearer sk-molecule-secret"})
    assert answer.json()["authorization_seen"] is True


def test_api_key_never_logged(host, nginx):
    nginx.request("/chat", headers={"Authorization": "Bearer sk-molecule-secret"})
    logs = host.run("cat /var/log/nginx/access.log /var/log/nginx/error.log").stdout
    assert "/chat" in logs
    assert "sk-molecule-secret" not in logs


def test_metrics_allowed_from_loopback(host, ca_on_host):
    # nginx_metrics_allow is 127.0.0.1: only a request from the host itself comes from there
    # (NAME is 127.0.0.1 in its /etc/hosts).
    status, body = request_on_host(host, f"https://{NAME}/metrics", ca_file=ca_on_host, timeout=20)
    assert status == 200
    assert "fixture_up 1" in body


def test_metrics_blocked_for_other_sources(nginx):
    answer = nginx.request("/metrics")
    assert answer.status == 403
    assert answer.json()["error"]["type"] == "permission_error"


def test_body_size_limit_answers_413_json(nginx):
    answer = nginx.request("/v1/chat/completions", body=b"\0" * 2_000_000, headers=JSON)
    assert answer.status == 413
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_streaming_is_not_buffered(nginx):
    # The fixture sends six SSE chunks 0.5 s apart; buffered, they would all arrive at the end.
    conn = nginx.connection()
    try:
        start = time.monotonic()
        conn.request("POST", "/v1/chat/completions", body=json.dumps({"stream": True}), headers=JSON)
        response = conn.getresponse()
        arrivals = [time.monotonic() - start for line in iter(response.readline, b"") if line.startswith(b"data:")]
    finally:
        conn.close()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    assert len(arrivals) == 7  # six events and [DONE]
    assert arrivals[0] < 1.0
    assert arrivals[-1] - arrivals[0] > 2.0


def test_upstream_down_answers_503_json(host, nginx):
    host.run_expect([0], "systemctl stop fixture-upstream")
    try:
        answer = nginx.request("/health")
    finally:
        host.run_expect([0], "systemctl start fixture-upstream")
        started = host.ansible("wait_for", "host=127.0.0.1 port=8001 timeout=10", check=False)
        assert not started.get("failed"), started
    assert answer.status == 503
    assert answer.json()["error"]["type"] == "service_unavailable"


def test_renewal_deploy_hook_reloads_nginx(host, acme, nginx):
    # nginx reads certificates only at (re)load: a new serial on the wire means the hook reloaded it.
    env = host.check_output("systemctl show certbot.service -p Environment")
    assert env == "Environment=REQUESTS_CA_BUNDLE=/etc/pebble/ca.pem"
    before = served_certificate(nginx).serial_number
    out = host.check_output(
        "REQUESTS_CA_BUNDLE=/etc/pebble/ca.pem certbot renew --force-renewal --no-random-sleep-on-renew 2>&1"
    )
    assert "all renewals succeeded" in out
    after = before
    for _attempt in range(20):
        after = served_certificate(nginx).serial_number
        if after != before:
            break
        time.sleep(0.5)
    assert after != before


def test_concurrent_streams_limited_per_address(nginx):
    # converge sets nginx_limit_conn 4: of six streams opened at once, two are refused.
    statuses = []

    def stream():
        conn = nginx.connection()
        try:
            statuses.append(nginx.send(conn, "/chat", body=json.dumps({"stream": True}), headers=JSON).status)
        finally:
            conn.close()

    threads = [threading.Thread(target=stream) for _stream in range(6)]
    nginx.filled()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 200, 200, 200, 429, 429]


@pytest.fixture(scope="module")
def address_burst(nginx):
    """40 requests in a burst, then a path outside the allowlist (404 before any limit applies)."""
    nginx.refill()
    return nginx.burst(40) + nginx.burst(1, path="/nope")


def test_rate_limit_per_address_answers_429_json(address_burst):
    statuses = [answer.status for answer in address_burst[:40]]
    assert statuses[:21] == [200] * 21  # the first request and a burst of 20
    assert 21 <= statuses.count(200) <= 30
    assert statuses.count(429) >= 10
    limited = next(answer for answer in address_burst if answer.status == 429)
    assert limited.headers["Content-Type"] == "application/json"
    assert limited.headers["Retry-After"] == "1"
    error = limited.json()["error"]
    assert error["type"] == "rate_limit_exceeded"
    assert error["param"] is None


def test_hsts_only_when_enabled(address_burst, mode):
    # converge enables HSTS on nginx-selfsigned only; the 429 location repeats it (own add_header).
    assert {answer.status for answer in address_burst} == {200, 404, 429}
    expected = "max-age=31536000" if mode == "selfsigned" else None
    assert {answer.headers.get("Strict-Transport-Security") for answer in address_burst} == {expected}


def key_bursts(nginx, first, second):
    """Statuses of 12 requests with key FIRST, then 3 with key SECOND, after the buckets drained. 15 in
    all, under the per-address burst (20): only the per-key limits (2 r/s, burst 5 in converge) answer."""
    nginx.refill()
    return [[answer.status for answer in nginx.burst(count, headers={"Authorization": f"Bearer {key}"})]
            for key, count in ((first, 12), (second, 3))]


def test_rate_limit_per_api_key(nginx):
    # key A runs out while key B and the address still have room
    a, b = key_bursts(nginx, "key-a", "key-b")
    assert a[:6] == [200] * 6
    assert a.count(429) >= 4
    assert b == [200, 200, 200]


def test_api_keys_over_255_bytes(host, nginx, key_hash):
    # sha1: each long key has its own digest bucket. none: limit_conn would skip such keys and log
    # them, so they share one bucket instead, and the error log never holds them.
    a, b = key_bursts(nginx, "a" * 300, "b" * 300)
    assert a[:6] == [200] * 6
    assert a.count(429) >= 4
    if key_hash == "sha1":
        assert b == [200, 200, 200]
    else:
        assert b.count(429) >= 2
    assert "a" * 300 not in host.file("/var/log/nginx/error.log").content_string
