from __future__ import annotations

import pathlib

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = yaml.safe_load((ROOT / "roles/preflight/defaults/main.yml").read_text())["preflight_variable_rules"]


@pytest.mark.parametrize(
    "name, value",
    [
        ("vllm_gpu_memory_utilization", 0.9),
        ("vllm_gpu_memory_utilization", "0.85"),
        ("vllm_gpu_memory_utilization", 1),
        ("vllm_tensor_parallel_size", 1),
        ("vllm_tensor_parallel_size", "8"),
        ("vllm_max_model_len", 8192),
        ("vllm_port", 9000),
        ("wrapper_port", "9001"),
        ("wrapper_default_temperature", 0),
        ("docker_package_source", "distro"),
    ],
)
def test_good_values_pass(preflight_filters, name, value):
    assert preflight_filters.setting_violations({name: value}, RULES) == []


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("vllm_gpu_memory_utilization", 0, "(0, 1]"),
        ("vllm_gpu_memory_utilization", 1.01, "(0, 1]"),
        ("vllm_gpu_memory_utilization", "lots", "(0, 1]"),
        ("vllm_gpu_memory_utilization", True, "(0, 1]"),
        ("vllm_tensor_parallel_size", 3, "power of two"),
        ("vllm_tensor_parallel_size", 0, "power of two"),
        ("vllm_tensor_parallel_size", 2.5, "power of two"),
        ("vllm_port", 0, "TCP port from 1 to 65535"),
        ("vllm_port", 70000, "TCP port from 1 to 65535"),
        ("wrapper_workers", 65, "from 1 to 64"),
        ("docker_package_source", "snap", "one of docker, distro"),
    ],
)
def test_bad_values_name_the_variable_and_what_is_allowed(preflight_filters, name, value, allowed):
    (message,) = preflight_filters.setting_violations({name: value}, RULES)
    assert message.startswith(f"{name}={value!r} is not allowed")
    assert allowed in message


def test_every_violation_is_reported_at_once(preflight_filters):
    messages = preflight_filters.setting_violations(
        {"vllm_port": -1, "wrapper_port": 8001, "vllm_tensor_parallel_size": 6}, RULES
    )
    assert [m.split("=")[0] for m in messages] == ["vllm_port", "vllm_tensor_parallel_size"]


def test_required_missing_or_empty(preflight_filters):
    messages = preflight_filters.setting_violations({"vllm_model": ""}, RULES, required=["vllm_model", "x"])
    assert messages == ["vllm_model is required but not set", "x is required but not set"]


def test_generated_description_without_allowed_text(preflight_filters):
    assert preflight_filters.check_value(5, {"type": "int", "min": 1, "max": 4}) == "an integer >= 1 <= 4"
    assert preflight_filters.check_value(4, {"type": "int", "min": 1, "max": 4}) is None
