"""A host's vLLM instances (plugins/filter/instances.py) and the GPU memory others use
(plugins/modules/gpu_memory.py): complete entries, the checks preflight runs, the wiring to the
wrapper and nginx."""

from __future__ import annotations

import pathlib

import pytest
import yaml
from ansible.errors import AnsibleFilterError

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "nvidia_smi"
ROLE = {"vllm_model": "org/big", "vllm_served_model_name": "big", "vllm_extra_args": ["--enforce-eager"],
        "vllm_env": {"A": "1"}, "vllm_max_model_len": 4096}


def test_no_list_is_the_guides_single_server(instance_filters):
    [single] = instance_filters.vllm_instances([], ROLE)
    assert (single["name"], single["container"], single["port"], single["model_name"]) == (
        "server", "vllm-server", 8000, "big")
    assert single["setting_prefix"] == "vllm_" and not single["listed"]


def test_entries_take_the_role_values_they_do_not_set(instance_filters):
    a, b = instance_filters.vllm_instances([
        {"name": "a", "model": "org/x", "gpus": [0, 1, 2, 3], "port": "8000"},
        {"name": "b", "model": "org/y", "served_model_name": "y", "gpus": [4], "port": 8002, "env": {"B": "2"},
         "max_model_len": 1024}], ROLE)
    assert a["container"] == "vllm-a" and a["port"] == 8000 and a["tensor_parallel_size"] == 4
    # Not the role-wide served name: a serves its model's own name.
    assert a["model_name"] == "org/x" and b["model_name"] == "y"
    assert a["extra_args"] == ["--enforce-eager"] and a["max_model_len"] == 4096 and b["max_model_len"] == 1024
    assert b["env"] == {"A": "1", "B": "2"} and b["tensor_parallel_size"] == 1


@pytest.mark.parametrize("instances, message", [
    ("a", "must be a list"),
    ([["a"]], "entry 1 must be a dict"),
    ([{"name": "a", "model": "m"}], r"vllm_instances\[a\]: missing port"),
    ([{"name": "A_1", "model": "m", "port": 1}], "name='A_1' is not allowed"),
    ([{"name": "a", "model": "m", "port": 1, "tp": 2}], "unknown key.s. tp"),
])
def test_malformed_lists_name_the_entry(instance_filters, instances, message):
    with pytest.raises(AnsibleFilterError, match=message):
        instance_filters.vllm_instances(instances, ROLE)


def problems(instance_filters, instances, **kwargs):
    return instance_filters.vllm_instance_problems(instance_filters.vllm_instances(instances, ROLE), **kwargs)


def test_the_prod_layout_passes(instance_filters):
    assert problems(instance_filters, [
        {"name": "llama70b", "model": "m70", "gpus": [0, 1, 2, 3], "port": 8000},
        {"name": "chat-a", "model": "m8", "gpus": [4], "port": 8002},
        {"name": "chat-b", "model": "m8", "gpus": [5], "port": 8003},
        {"name": "embed", "model": "e5", "gpus": [6], "port": 8004}], gpu_count=8) == []


def test_each_mistake_is_named(instance_filters):
    found = problems(instance_filters, [
        {"name": "a", "model": "m", "gpus": [0, 1], "port": 8000, "tensor_parallel_size": 1},
        {"name": "a", "model": "m", "gpus": [1, 8], "port": 8000, "tensor_parallel_size": 3},
        {"name": "c", "model": "m", "gpus": "all", "port": 8001}], gpu_count=8,
        reserved_ports={8001: "the wrapper (wrapper_port)"})
    text = " | ".join(found)
    for fragment in ("vllm_instances[a].tensor_parallel_size=1 x pipeline_parallel_size=1 = 1 GPUs, but the "
                     "instance owns 2", "tensor_parallel_size=3 is not allowed", "GPU(s) [8] do not exist",
                     "name a is used by a and a", "port 8000 is used by a and a", "GPU 1 is given to a and a",
                     "vllm_instances[c].gpus=all takes every GPU", "port=8001 is taken by the wrapper"):
        assert fragment in text


def test_pipeline_stages_count_towards_the_gpus(instance_filters):
    assert problems(instance_filters, [{"name": "a", "model": "m", "gpus": [0, 1, 2, 3], "port": 8000,
                                        "pipeline_parallel_size": 2}], gpu_count=4) == []


def test_gpu_memory_others_use_is_measured_without_our_instances(gpu_memory):
    gpus = gpu_memory.parse((FIXTURES / "gpus.csv").read_text(), (FIXTURES / "apps.csv").read_text(),
                            {"41021", "41187", "41188", "41189"})
    assert gpus["0"] == {"total_mib": 81559, "used_mib": 73421, "used_by_others_mib": 7}
    assert gpus["6"]["used_by_others_mib"] == 30721


def test_memory_other_processes_hold_refuses_the_instance(instance_filters, gpu_memory):
    memory = gpu_memory.parse((FIXTURES / "gpus.csv").read_text(), (FIXTURES / "apps.csv").read_text(),
                              {"41021", "41187", "41188", "41189"})
    layout = [{"name": "big", "model": "m", "gpus": [0, 1, 2, 3], "port": 8000},
              {"name": "embed", "model": "e", "gpus": [6], "port": 8004, "gpu_memory_utilization": 0.5}]
    assert problems(instance_filters, layout, gpu_count=8, memory=memory) == []
    layout[1]["gpu_memory_utilization"] = 0.9
    [found] = problems(instance_filters, layout, gpu_count=8, memory=memory)
    assert "vllm_instances[embed].gpu_memory_utilization=0.9 needs 73403 MiB on GPU 6" in found
    assert "other processes use 30721 of its 81559 MiB" in found and "lower it to 0.62 or less" in found


def test_wiring_for_the_wrapper_and_nginx(instance_filters):
    entries = instance_filters.vllm_instances([{"name": "a", "model": "m", "port": 8000},
                                               {"name": "b", "model": "m", "served_model_name": "m-b",
                                                "port": 8002}], ROLE)
    assert instance_filters.vllm_upstreams(entries) == [
        {"name": "a", "url": "http://127.0.0.1:8000", "models": ["m"]},
        {"name": "b", "url": "http://127.0.0.1:8002", "models": ["m-b"]}]
    assert instance_filters.vllm_metrics_proxies(entries) == {
        "/metrics/vllm/a": "http://127.0.0.1:8000/metrics", "/metrics/vllm/b": "http://127.0.0.1:8002/metrics"}


def test_another_hosts_instances_from_its_inventory(instance_filters):
    hostvars = {"gpu01": {"vllm_port": 9000}, "gpu02": {"vllm_instances": [{"name": "x", "model": "m", "port": 1}]}}
    assert [(e["name"], e["port"]) for e in instance_filters.fleet_instances("gpu01", hostvars)] == [("server", 9000)]
    assert [(e["container"], e["model_name"]) for e in instance_filters.fleet_instances("gpu02", hostvars)] == [
        ("vllm-x", "m")]


@pytest.mark.parametrize("entry, message", [
    ({"name": "wrapper", "model": "m", "port": 1}, "name='wrapper' is not allowed"),
    ({"name": "x-previous", "model": "m", "port": 1}, "name='x-previous' is not allowed"),
    ({"name": "x", "model": "m", "port": 1, "extra_args": "--enforce-eager"}, "extra_args must be a list"),
    ({"name": "x", "model": "m", "port": 1, "env": ["A=1"]}, "env must be a dict"),
])
def test_names_of_other_containers_and_wrong_types_are_refused(instance_filters, entry, message):
    with pytest.raises(AnsibleFilterError, match=message):
        instance_filters.vllm_instances([entry], ROLE)


def test_numbers_written_as_text_count_as_numbers(instance_filters):
    [entry] = instance_filters.vllm_instances(
        [{"name": "a", "model": "m", "port": "8000", "gpus": ["0", "1", "2", "3"], "pipeline_parallel_size": "2"}],
        ROLE)
    assert (entry["gpus"], entry["tensor_parallel_size"], entry["pipeline_parallel_size"]) == ([0, 1, 2, 3], 2, 2)
    assert instance_filters.vllm_instance_problems([entry], gpu_count=4) == []


def test_containers_no_instance_owns_are_found(instance_filters):
    entries = instance_filters.vllm_instances([{"name": "a", "model": "m", "port": 8000}], ROLE)
    labelled = [
        {"Names": ["/vllm-a"], "Labels": {"gpufleet-vllm-instance": "a"}, "State": "running"},
        {"Names": ["/vllm-a-previous"], "Labels": {"gpufleet-vllm-instance": "a"}, "State": "exited"},
        {"Names": ["/vllm-c"], "Labels": {"gpufleet-vllm-instance": "c"}, "State": "running"},
        {"Names": ["/vllm-c-previous"], "Labels": {"gpufleet-vllm-instance": "c"}, "State": "exited"},
    ]
    single = {"exists": True, "container": {"Name": "/vllm-server", "State": {"Running": True}}}
    assert instance_filters.vllm_stale_containers(labelled, single, entries) == [
        {"name": "vllm-c", "running": True}, {"name": "vllm-c-previous", "running": False},
        {"name": "vllm-server", "running": True}]
    # The single server that is the host's instance is never stale.
    [server] = instance_filters.vllm_instances([], ROLE)
    assert instance_filters.vllm_stale_containers(
        [{"Names": ["/vllm-server"], "Labels": {"gpufleet-vllm-instance": "server"}, "State": "running"}],
        {"skipped": True}, [server]) == []


@pytest.mark.parametrize("args, api", [
    ([], "chat"), (["--enforce-eager"], "chat"), (["--runner", "pooling"], "embeddings"),
    (["--runner=pooling"], "embeddings"), (["--convert", "embed"], "embeddings"), (["--task", "embed"], "embeddings"),
    (["--runner", "generate"], "chat"),
])
def test_smoke_tests_ask_pooling_models_for_embeddings(instance_filters, args, api):
    [entry] = instance_filters.vllm_instances([{"name": "e", "model": "m", "port": 1, "extra_args": args}], ROLE)
    assert entry["api"] == api


@pytest.mark.parametrize("limit, names", [
    ([], []), (None, []), ("b", ["b"]), (" a, b ,", ["a", "b"]), (["a", " b"], ["a", "b"]), ("", []),
])
def test_the_limit_as_the_role_and_the_playbooks_read_it(instance_filters, limit, names):
    assert instance_filters.vllm_instance_names(limit) == names


def test_defaults_for_other_hosts_are_the_vllm_roles(instance_filters):
    """fleet_instances fills another host's unset variables with these: they must stay the role's defaults."""
    role = yaml.safe_load((FIXTURES.parents[2].parent / "roles" / "vllm" / "defaults" / "main.yml").read_text())
    assert {name: role[name] for name in instance_filters.DEFAULTS} == instance_filters.DEFAULTS
