"""Prometheus on mon01 scrapes the GPU host through its nginx, each of its two vLLM instances (host_vars: a
serving tiny-llama, b serving tiny-llama-b) as its own target; dashboards and alert rules work on it."""

import json
import pathlib
import re
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
from host_http import get_json, put, request  # noqa: E402

testinfra_hosts = ["ansible://monitoring"]

HERE = pathlib.Path(__file__).resolve().parent
DASHBOARDS = HERE.parents[3] / "roles" / "monitoring" / "files" / "dashboards"
GPU_HOST = "fullstack-bookworm"
NAME = "gpu01.fleet.test"
ROOT_CA = "/tmp/pebble-root.pem"
PROM = "http://127.0.0.1:9090"
KEY = "sk-FULLSTACKfakeKEYdoNotPrint4567"
ALERTS = {"HostDown", "VLLMNotReady", "KVCacheSaturated", "GPUXidError", "GpufleetModelNoHealthyBackend"}
MODELS = {"a": "tiny-llama", "b": "tiny-llama-b"}


@pytest.fixture(scope="module")
def root_ca(host, gpu, pebble_ca):
    """pebble's root on both hosts, to check nginx's certificate."""
    put(host, ROOT_CA, pebble_ca.read_text())
    put(gpu, ROOT_CA, pebble_ca.read_text())
    return ROOT_CA


def nginx(host, address, path, root_ca, body=None, key=None):
    """Status of a request to the GPU host's nginx at ADDRESS, its certificate checked."""
    return request(host, f"https://{NAME}{path}", body=body, key=key, ca_file=root_ca, connect_to=address)[0]


def query(host, expr):
    return get_json(host, f"{PROM}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


def targets(host):
    return get_json(host, f"{PROM}/api/v1/targets?state=active")["data"]["activeTargets"]


def dashboard_queries():
    """(dashboard, panel, expr) of every panel target and template variable, Grafana variables filled in."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for var in board["templating"]["list"]:
            inner = re.fullmatch(r"label_values\((.*), *\w+\)", var["query"]["query"]).group(1)
            found.append((path.name, f"variable {var['name']}", inner))
        for panel in board["panels"]:
            for target in panel["targets"]:
                found.append((path.name, panel["title"], target["expr"]))
    # $__rate_interval is Grafana's; every other variable (host, vLLM instance) is "All".
    return [(b, p, re.sub(r"\$(?!__)\w+", ".*", e.replace("$__rate_interval", "5m"))) for b, p, e in found]


def test_prometheus_running_on_port_9090(host):
    service = host.service("prometheus")
    assert service.is_running and service.is_enabled
    assert host.socket("tcp://0.0.0.0:9090").is_listening
    assert request(host, f"{PROM}/-/ready")[0] == 200


def test_configuration_passes_promtool(host):
    host.run_expect([0], "promtool check config /etc/prometheus/prometheus.yml")


def test_gpu_host_targets_are_up(host):
    # The host's jobs, and one vllm target per instance.
    wanted = {("wrapper", None), ("node", None)} | {("vllm", name) for name in MODELS}
    deadline = time.monotonic() + 90
    while True:
        mine = [t for t in targets(host) if t["labels"].get("instance") == GPU_HOST and t["labels"]["job"] != "dcgm"]
        health = {(t["labels"]["job"], t["labels"].get("vllm_instance")): t["health"] for t in mine}
        if (set(health) == wanted and set(health.values()) == {"up"}) or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert health == dict.fromkeys(wanted, "up"), mine
    for target in mine:
        assert target["scrapeUrl"].startswith("https://"), target
        name = target["labels"].get("vllm_instance")
        if name:
            assert target["scrapeUrl"].endswith(f"/metrics/vllm/{name}"), target
            assert target["labels"]["model"] == MODELS[name], target
        else:
            assert target["labels"]["model"] == "tiny-llama,tiny-llama-b", target
    # The query API agrees.
    result = query(host, f'up{{instance="{GPU_HOST}"}} == 1')["data"]["result"]
    assert {(r["metric"]["job"], r["metric"].get("vllm_instance")) for r in result} >= wanted


def test_dcgm_target_up_with_a_metric_per_simulated_gpu(host, gpu):
    """The GPU host runs the DCGM exporter (test fixture), so Prometheus scrapes /metrics/dcgm through its nginx."""
    # the GPUs the host's PCI bus shows (the simulated host's two H100), as DCGM names their bus ids
    slots = sorted("0000" + g["pci_slot"].upper() for g in gpu.ansible("gpufleet.vllm.gpu_facts", check=False)["gpus"])
    assert len(slots) == 2
    deadline = time.monotonic() + 60
    while True:
        dcgm = [t for t in targets(host) if t["labels"]["job"] == "dcgm"]
        series = query(host, f'DCGM_FI_DEV_GPU_TEMP{{instance="{GPU_HOST}"}}')["data"]["result"]
        if (dcgm and dcgm[0]["health"] == "up" and series) or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert [(t["labels"]["instance"], t["health"]) for t in dcgm] == [(GPU_HOST, "up")], dcgm
    assert dcgm[0]["scrapeUrl"].endswith("/metrics/dcgm")
    assert sorted(s["metric"]["pci_bus_id"] for s in series) == slots
    labels = sorted((s["metric"]["gpu"], s["metric"]["device"], s["metric"]["modelName"]) for s in series)
    assert labels == [("0", "nvidia0", "NVIDIA H100 80GB HBM3"), ("1", "nvidia1", "NVIDIA H100 80GB HBM3")]
    assert len({s["metric"]["UUID"] for s in series}) == 2
    assert {s["metric"]["Hostname"] for s in series} == {gpu.check_output("cat /proc/sys/kernel/hostname")}


def test_gpu_panels_return_data(host):
    empty = [(panel, expr) for _board, panel, expr in dashboard_queries()
             if "DCGM_" in expr and not query(host, expr)["data"]["result"]]
    assert empty == []


def test_usage_per_key_and_model_reaches_prometheus(host, gpu_address, root_ca):
    body = {"model": MODELS["a"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    assert nginx(host, gpu_address, "/v1/chat/completions", root_ca, body=body, key=KEY) == 200
    expr = f'vllm_wrapper_usage_tokens_total{{instance="{GPU_HOST}", key="molecule", model_name="{MODELS["a"]}"}}'
    deadline = time.monotonic() + 60
    while not (series := query(host, expr)["data"]["result"]) and time.monotonic() < deadline:
        time.sleep(3)
    assert {s["metric"]["type"] for s in series} == {"prompt", "completion"}, series
    assert all(float(s["value"][1]) > 0 for s in series), series


def test_node_exporter_on_loopback_only(gpu):
    assert gpu.service("prometheus-node-exporter").is_running
    assert gpu.socket("tcp://127.0.0.1:9100").is_listening
    assert not gpu.socket("tcp://0.0.0.0:9100").is_listening


@pytest.mark.parametrize("path", ["/metrics", "/metrics/vllm", "/metrics/vllm/a", "/metrics/vllm/b", "/metrics/node", "/metrics/dcgm"])
def test_metrics_through_nginx_from_the_monitoring_host(host, gpu_address, root_ca, path):
    assert nginx(host, gpu_address, path, root_ca) == 200


@pytest.mark.parametrize("path", ["/metrics/vllm", "/metrics/dcgm"])
def test_metrics_forbidden_from_other_addresses(gpu, gpu_address, root_ca, path):
    # The GPU host itself through its non-loopback address: not in nginx_metrics_allow.
    assert nginx(gpu, gpu_address, path, root_ca) == 403
    # This test machine (the Docker bridge address).
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"https://{gpu_address}{path}", context=context, timeout=10)
    assert denied.value.code == 403
    assert json.loads(denied.value.read())["error"]["type"] == "permission_error"


def test_alert_rules_loaded(host):
    groups = get_json(host, f"{PROM}/api/v1/rules")["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) >= ALERTS
    for name, rule in rules.items():
        assert rule["health"] == "ok", rule
    # Healthy stack: no alert fires (recording rules have no state).
    assert [name for name, rule in rules.items() if rule["type"] == "alerting" and rule["state"] == "firing"] == []


def test_promtool_rule_unit_tests(host):
    host.ansible("copy", f"src={HERE / 'rules_test.yml'} dest=/tmp/gpufleet-rules-test.yml mode=0644", check=False)
    result = host.run("promtool test rules /tmp/gpufleet-rules-test.yml")
    assert result.rc == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_both_dashboards_found():
    assert {board for board, _panel, _expr in dashboard_queries()} == {"gpus.json", "vllm.json"}


@pytest.mark.parametrize("board, panel, expr", dashboard_queries(), ids=lambda v: str(v)[:60])
def test_dashboard_query_accepted_by_prometheus(host, board, panel, expr):
    answer = query(host, expr)
    assert answer["status"] == "success", (board, panel, answer)


def test_vllm_panels_return_data(host, gpu, root_ca):
    # Some traffic through nginx to both instances so the counters and histograms move, then two scrapes.
    for model in MODELS.values():
        for prompt in ("hi", "hello", "how are you"):
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8}
            assert nginx(gpu, "127.0.0.1", "/v1/chat/completions", root_ca, body=body, key=KEY) == 200
    time.sleep(12)
    empty = []
    for board, panel, expr in dashboard_queries():
        if "vllm:" in expr:
            answer = query(host, expr)
            if not answer["data"]["result"]:
                empty.append((panel, expr))
    assert empty == []
    # Every vLLM series carries its instance and that instance's model; each instance generated tokens.
    tokens = query(host, f'sum by (vllm_instance, model) (vllm:generation_tokens_total{{instance="{GPU_HOST}"}})')
    generated = {(r["metric"]["vllm_instance"], r["metric"]["model"]): float(r["value"][1]) for r in tokens["data"]["result"]}
    assert set(generated) == set(MODELS.items()) and min(generated.values()) > 0, generated
    unlabelled = query(host, f'count(vllm:num_requests_running{{instance="{GPU_HOST}", vllm_instance=""}})')
    assert unlabelled["data"]["result"] == []


def test_dashboard_instance_selector_lists_both_instances(host):
    board = json.loads((DASHBOARDS / "vllm.json").read_text())
    selector = next(v for v in board["templating"]["list"] if v["name"] == "vllm_instance")
    inner = re.fullmatch(r"label_values\((.*), *vllm_instance\)", selector["query"]["query"]).group(1)
    result = query(host, inner.replace("$instance", GPU_HOST))["data"]["result"]
    assert sorted(r["metric"]["vllm_instance"] for r in result) == sorted(MODELS)


def test_alert_expressions_accepted(host):
    groups = get_json(host, f"{PROM}/api/v1/rules")["data"]["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        assert query(host, rule["query"])["status"] == "success", rule["query"]
