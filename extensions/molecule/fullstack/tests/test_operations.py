"""The operations playbooks, run from the controller against the deployed test host."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
from host_http import pebble_root  # noqa: E402
from playbooks import run_playbook  # noqa: E402

testinfra_hosts = ["ansible://gpu_servers"]

SECRETS = pathlib.Path(__file__).resolve().parents[1].joinpath("secrets").read_text().split()


def playbook(name, *extra):
    return run_playbook(name, SECRETS, *extra, timeout=900)


def test_health_check_reports_the_host_healthy():
    rc, out = playbook("health_check.yml")
    assert rc == 0, out
    assert "fullstack-bookworm" in out and " OK " in out
    assert "All 1 host(s) healthy" in out


def test_smoke_test_through_the_wrapper():
    rc, out = playbook("smoke_test.yml", "-e", "smoke_test_via=wrapper")
    assert rc == 0, out
    assert "fullstack-bookworm: PASS in" in out


@pytest.mark.parametrize("service", ["vllm", "wrapper"])
def test_logs_of_one_service(service):
    rc, out = playbook("logs.yml", "-e", f"logs_service={service}", "-e", "logs_lines=5")
    assert rc == 0, out
    assert f"(item={service})" in out


def test_logs_rejects_an_unknown_service():
    rc, out = playbook("logs.yml", "-e", "logs_service=postgres")
    assert rc != 0
    assert "logs_service=postgres is not allowed" in out


def test_stop_then_health_check_fails_then_start_recovers(host):
    before = container_ids(host)
    rc, out = playbook("stop.yml")
    assert rc == 0, out
    rc, out = playbook("health_check.yml")
    assert rc != 0
    assert "Unhealthy: fullstack-bookworm" in out
    rc, out = playbook("start.yml")
    assert rc == 0, out
    assert container_ids(host) == before
    rc, out = playbook("health_check.yml")
    assert rc == 0, out


def container_ids(host):
    return host.check_output("docker ps -aq --no-trunc --filter name=vllm- | sort")


def test_restart_comes_back_ready_with_the_same_containers(host):
    before = container_ids(host)
    rc, out = playbook("restart.yml")
    assert rc == 0, out
    assert container_ids(host) == before  # restarted, not re-created with other settings
    assert host.socket("tcp://127.0.0.1:8001").is_listening
    assert not host.socket("tcp://0.0.0.0:8001").is_listening


def test_smoke_test_through_nginx_with_verified_tls(host):
    pebble_root(host, "/tmp/pebble-root.pem")
    rc, out = playbook("smoke_test.yml", "-e", "smoke_test_ca_file=/tmp/pebble-root.pem")
    assert rc == 0, out
    assert "fullstack-bookworm: PASS in" in out


# Each failure names its cause. (Extra vars only steer the smoke test here: it deploys nothing.)
@pytest.mark.parametrize(
    "extra, cause",
    [
        (["smoke_test_ca_file=/tmp/pebble-root.pem", "nginx_https_port=8443"], "connection refused by 127.0.0.1:8443"),
        (["smoke_test_ca_file=/etc/ssl/certs/ca-certificates.crt"], "TLS with 127.0.0.1:443 (gpu01.fleet.test"),
        (
            ["smoke_test_ca_file=/tmp/pebble-root.pem", "smoke_test_api_key=sk-wrong"],
            "HTTP 401 from https://gpu01.fleet.test:443/v1/chat/completions: authentication_error: ",
        ),
    ],
    ids=["refused", "tls", "http-401"],
)
def test_smoke_test_failure_names_its_cause(host, extra, cause):
    pebble_root(host, "/tmp/pebble-root.pem")
    rc, out = playbook("smoke_test.yml", *[arg for pair in extra for arg in ("-e", pair)])
    assert rc != 0
    assert "fullstack-bookworm: smoke test failed: " + cause in out, out[-2000:]


def test_smoke_test_names_a_timeout_when_the_engine_hangs(host):
    pid = host.check_output("docker inspect -f '{{.State.Pid}}' vllm-server")
    host.run_expect([0], f"kill -STOP {pid}")  # vLLM stops answering; the wrapper waits for it
    try:
        rc, out = playbook("smoke_test.yml", "-e", "smoke_test_via=wrapper", "-e", "smoke_test_timeout=3")
    finally:
        host.run_expect([0], f"kill -CONT {pid}")
    assert rc != 0
    assert "fullstack-bookworm: smoke test failed: timeout: no answer from 127.0.0.1:8001 within 3.0 s" in out, out[-2000:]
