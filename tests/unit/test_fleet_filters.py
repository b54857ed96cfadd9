"""How fleet hosts find each other's addresses."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

HOSTVARS = {
    "mon01": {"fleet_address": "10.0.0.9", "ansible_facts": {"default_ipv4": {"address": "172.17.0.5"}}},
    "lb01": {"ansible_facts": {"default_ipv4": {"address": "172.17.0.6"}}},
    "gpu01": {"ansible_host": "192.0.2.10"},
    "gpu02": {"ansible_host": "gpu02.example.com", "ansible_facts": {}},
}


def test_explicit_address_wins(fleet_filters):
    assert fleet_filters.fleet_address("mon01", HOSTVARS) == "10.0.0.9"


def test_default_ipv4_fact(fleet_filters):
    assert fleet_filters.fleet_address("lb01", HOSTVARS) == "172.17.0.6"


def test_ansible_host_ip(fleet_filters):
    assert fleet_filters.fleet_address("gpu01", HOSTVARS) == "192.0.2.10"


def test_unknown_address_names_the_host(fleet_filters):
    with pytest.raises(AnsibleFilterError, match="gpu02.*fleet_address"):
        fleet_filters.fleet_address("gpu02", HOSTVARS)


def test_missing_host(fleet_filters):
    with pytest.raises(AnsibleFilterError, match="not in the inventory"):
        fleet_filters.fleet_address("nope", HOSTVARS)


def test_list_keeps_order_and_drops_duplicates(fleet_filters):
    hostvars = dict(HOSTVARS, lb02={"fleet_address": "172.17.0.6"})
    assert fleet_filters.fleet_addresses(["lb01", "mon01", "lb02"], hostvars) == ["172.17.0.6", "10.0.0.9"]
    assert fleet_filters.fleet_addresses([], hostvars) == []


def test_list_leaves_out_unknown_hosts_unless_strict(fleet_filters):
    assert fleet_filters.fleet_addresses(["gpu02", "lb01"], HOSTVARS) == ["172.17.0.6"]
    with pytest.raises(AnsibleFilterError, match="gpu02"):
        fleet_filters.fleet_addresses(["gpu02", "lb01"], HOSTVARS, strict=True)


def test_backends_skip_unknown_and_read_the_port(fleet_filters):
    hostvars = dict(HOSTVARS, gpu01=dict(HOSTVARS["gpu01"], nginx_https_port=8443))
    assert fleet_filters.fleet_backends(["gpu01", "gpu02", "lb01"], hostvars) == [
        {"host": "gpu01", "address": "192.0.2.10", "port": 8443},
        {"host": "lb01", "address": "172.17.0.6", "port": 443},
    ]


def test_served_model_name_else_model(fleet_filters):
    hostvars = {
        "a": {"vllm_model": "org/big", "vllm_served_model_name": "big"},
        "b": {"vllm_model": "org/big", "vllm_served_model_name": ""},
        "c": {"vllm_model": "org/big"},
        "d": {},
    }
    assert [fleet_filters.fleet_served_model(h, hostvars) for h in "abcd"] == ["big", "org/big", "org/big", ""]
    with pytest.raises(AnsibleFilterError, match="not in the inventory"):
        fleet_filters.fleet_served_model("nope", hostvars)


FRONTING_VARS = {
    "lb-a": {"loadbalancer_backend_group": "model_a"},
    "edge": {},
    "edge-b": {"router_backend_group": "model_b"},
    "gpu01": {},
}
FRONTING_GROUPS = {"gpu_servers": ["gpu01", "gpu02"], "model_a": ["gpu01"], "model_b": ["gpu02"]}


def test_fronting_load_balancers_by_mode(fleet_filters):
    lbs = ["lb-a", "edge", "edge-b"]
    fronting = fleet_filters.fleet_fronting
    assert fronting("gpu01", lbs, FRONTING_VARS, FRONTING_GROUPS, "any", "gpu_servers") == ["lb-a", "edge"]
    assert fronting("gpu01", lbs, FRONTING_VARS, FRONTING_GROUPS, "group", "gpu_servers") == ["lb-a"]
    assert fronting("gpu01", lbs, FRONTING_VARS, FRONTING_GROUPS, "router", "gpu_servers") == ["edge"]
    assert fronting("gpu02", lbs, FRONTING_VARS, FRONTING_GROUPS, "router", "gpu_servers") == ["edge", "edge-b"]
    assert fronting("gpu02", lbs, FRONTING_VARS, FRONTING_GROUPS, "group", "gpu_servers") == []
    with pytest.raises(AnsibleFilterError, match="mode must be"):
        fronting("gpu01", lbs, FRONTING_VARS, FRONTING_GROUPS, "nginx", "gpu_servers")

    assert fronting("gpu02", ["edge"], FRONTING_VARS, FRONTING_GROUPS, "router", "model_b") == ["edge"]
    assert fronting("gpu01", ["edge"], FRONTING_VARS, FRONTING_GROUPS, "router", "model_b") == []
