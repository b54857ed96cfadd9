"""The operations playbooks, run from the controller against the deployed test host, whose two vLLM
instances (host_vars: `a` on port 8000 serving tiny-llama, `b` on 8002 serving tiny-llama-b) they report,
smoke-test and restart one by one (vllm_instances_limit)."""

import pathlib
import re
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
from host_http import pebble_root  # noqa: E402
from playbooks import run_playbook  # noqa: E402

testinfra_hosts = ["ansible://gpu_servers"]

SECRETS = pathlib.Path(__file__).resolve().parents[1].joinpath("secrets").read_text().split()
HOST = "fullstack-bookworm"
MODELS = {"a": "tiny-llama", "b": "tiny-llama-b"}


def playbook(name, *extra):
    return run_playbook(name, SECRETS, *extra, timeout=900)


def test_health_check_reports_every_instance_and_the_host_healthy():
    rc, out = playbook("health_check.yml")
    assert rc == 0, out
    # The host's report: one line per instance, then the wrapper.
    assert re.search(r'"vllm-a +running :8000  /health PASS  model tiny-llama"', out), out[-3000:]
    assert re.search(r'"vllm-b +running :8002  /health PASS  model tiny-llama-b"', out), out[-3000:]
    # The fleet table: one row for the host with both instances.
    assert re.search(r"%s +OK +vllm\[a\] running :8000 +PASS +vllm\[b\] running :8002 +PASS +wrapper running :8001 +PASS" % HOST,
                     out), out[-3000:]
    assert "All 1 host(s) healthy" in out


def test_smoke_test_through_the_wrapper_asks_every_model():
    rc, out = playbook("smoke_test.yml", "-e", "smoke_test_via=wrapper")
    assert rc == 0, out
    for name, model in MODELS.items():
        assert re.search(r"%s/%s: PASS in \S+ s, \d+ tokens from %s\b" % (HOST, name, model), out), out[-3000:]


@pytest.mark.parametrize(
    "extra, sources",
    [
        (["logs_service=vllm"], ["vllm (vllm-a)", "vllm (vllm-b)"]),
        (["logs_service=vllm", "vllm_instances_limit=b"], ["vllm (vllm-b)"]),
        (["logs_service=wrapper"], ["wrapper (vllm-wrapper)"]),
    ],
    ids=["vllm", "vllm-b", "wrapper"],
)
def test_logs_of_one_service(extra, sources):
    rc, out = playbook("logs.yml", "-e", "logs_lines=5", *[arg for pair in extra for arg in ("-e", pair)])
    assert rc == 0, out
    assert re.findall(r"^ok: \[%s\] => \(item=(.+?)\)$" % HOST, out, re.M) == sources, out[-3000:]


def test_logs_rejects_an_unknown_service():
    rc, out = playbook("logs.yml", "-e", "logs_service=postgres")
    assert rc != 0
    assert "logs_service=postgres is not allowed" in out


def test_an_unknown_instance_name_is_refused():
    rc, out = playbook("restart.yml", "-e", "vllm_instances_limit=b,c")
    assert rc != 0
    assert "vllm_instances_limit=b,c: no host of this play has an instance named c; their instances: a, b" in out, out[-3000:]


def started(host, container):
    return host.check_output("docker inspect -f '{{.State.StartedAt}}' %s" % container)


def container_ids(host):
    return host.check_output("docker ps -aq --no-trunc --filter name=vllm- | sort")


# One vLLM start in all: b is stopped, then brought back by restart.yml; a, the wrapper and nginx keep serving.
def test_stop_and_restart_one_instance_leave_the_other_serving(host):
    ids = container_ids(host)
    others = {name: started(host, name) for name in ("vllm-a", "vllm-wrapper")}
    rc, out = playbook("stop.yml", "-e", "vllm_instances_limit=b")
    assert rc == 0, out
    assert host.check_output("docker inspect -f '{{.State.Status}}' vllm-b") == "exited"
    assert host.service("nginx").is_running
    rc, out = playbook("health_check.yml")
    assert rc != 0
    assert re.search(r"%s +FAIL +vllm\[a\] running :8000 +PASS +vllm\[b\] exited :8002 +FAIL \(no answer\)" % HOST, out), out[-3000:]
    assert "Unhealthy: %s" % HOST in out
    # a still answers through nginx and the wrapper while b is down.
    pebble_root(host, "/tmp/pebble-root.pem")
    rc, out = playbook("smoke_test.yml", "-e", "smoke_test_ca_file=/tmp/pebble-root.pem", "-e", "vllm_instances_limit=a")
    assert rc == 0, out
    assert "%s/a: PASS in" % HOST in out and "%s/b" % HOST not in out
    # Starting a instance that runs changes nothing.
    rc, out = playbook("start.yml", "-e", "vllm_instances_limit=a")
    assert rc == 0, out
    assert re.search(r"%s +: ok=\d+ +changed=0 " % HOST, out), out[-3000:]
    b_before = started(host, "vllm-b")
    rc, out = playbook("restart.yml", "-e", "vllm_instances_limit=b")
    assert rc == 0, out
    assert started(host, "vllm-b") != b_before
    assert {name: started(host, name) for name in others} == others, "restart.yml -e vllm_instances_limit=b touched another container"
    assert container_ids(host) == ids  # restarted, not re-created with other settings
    rc, out = playbook("health_check.yml")
    assert rc == 0, out


def test_smoke_test_through_nginx_with_verified_tls(host):
    pebble_root(host, "/tmp/pebble-root.pem")
    rc, out = playbook("smoke_test.yml", "-e", "smoke_test_ca_file=/tmp/pebble-root.pem")
    assert rc == 0, out
    for name in MODELS:
        assert "%s/%s: PASS in" % (HOST, name) in out, out[-3000:]


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
    for name in MODELS:
        assert "%s/%s: smoke test failed: %s" % (HOST, name, cause) in out, out[-2000:]


def test_smoke_test_names_a_timeout_of_one_instance(host):
    pid = host.check_output("docker inspect -f '{{.State.Pid}}' vllm-b")
    assert pid != "0", "vllm-b is not running"  # kill -STOP 0 would stop the shell itself
    host.run_expect([0], f"kill -STOP {pid}")  # b stops answering; the wrapper waits for it
    try:
        rc, out = playbook("smoke_test.yml", "-e", "smoke_test_via=wrapper", "-e", "smoke_test_timeout=3")
    finally:
        host.run_expect([0], f"kill -CONT {pid}")
    assert rc != 0
    assert "%s/b: smoke test failed: timeout: no answer from 127.0.0.1:8001 within 3.0 s" % HOST in out, out[-2000:]
    assert "%s/a: PASS in" % HOST in out, out[-2000:]


def test_usage_report_prints_a_row_per_key_and_model():
    # Earlier tests (test_monitoring's usage test, the smoke tests) sent requests with the host's key.
    rc, out = playbook("usage_report.yml", "-e", "usage_report_period=2h")
    assert rc == 0, out
    row = re.search(r'"molecule +%s +(\d+) +(\d+) +(\d+)"' % MODELS["a"], out)
    assert row and all(int(value) > 0 for value in row.groups()), out[-3000:]
    assert "Usage over the last 2h" in out
