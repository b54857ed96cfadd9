"""Each role checks its own inputs: the table of settings the preflight role used to check is now
in the roles' argument specs (types, choices) and their tasks/preflight.yml (ranges, powers of two).

One ansible-playbook run (tests/unit/fixtures/role_checks/check.yml) includes a role's `preflight`
entry point on one local host per case, with the case's settings as inventory variables, after
gpufleet.vllm.gpu_facts has read a PCI tree with GPUS GPUs into ansible_facts.gpufleet_gpu.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / "tests" / "unit" / "fixtures" / "role_checks" / "check.yml"
GPUS = 8

# A wrapper's counter store for the limits cases.
STORE = {"wrapper_limits_store": "redis://10.0.0.5:6379/0", "wrapper_limits_store_password": "sk-secret-store-0123456789"}
# (role, settings, expected fragments of the failure message; None: the checks pass)
CASES = {
    "vllm-good": ("vllm", {"vllm_gpu_memory_utilization": "0.85", "vllm_tensor_parallel_size": "8",
                           "vllm_max_model_len": 16, "vllm_port": 9000}, None),
    "vllm-utilization-1": ("vllm", {"vllm_gpu_memory_utilization": 1}, None),
    "vllm-utilization-0": ("vllm", {"vllm_gpu_memory_utilization": 0},
                           ["vllm_gpu_memory_utilization=0 is not allowed", "in (0, 1]"]),
    "vllm-utilization-1.01": ("vllm", {"vllm_gpu_memory_utilization": 1.01},
                              ["vllm_gpu_memory_utilization=1.01 is not allowed", "in (0, 1]"]),
    "vllm-utilization-true": ("vllm", {"vllm_gpu_memory_utilization": True},
                              ["vllm_gpu_memory_utilization=True is not allowed", "in (0, 1]"]),
    "vllm-utilization-text": ("vllm", {"vllm_gpu_memory_utilization": "lots"},
                              ["argument 'vllm_gpu_memory_utilization' is of type str", "float"]),
    "vllm-tp-3": ("vllm", {"vllm_tensor_parallel_size": 3},
                  ["vllm_tensor_parallel_size=3 is not allowed", "power of two"]),
    "vllm-tp-0": ("vllm", {"vllm_tensor_parallel_size": 0},
                  ["vllm_tensor_parallel_size=0 is not allowed", "power of two"]),
    "vllm-tp-fraction": ("vllm", {"vllm_tensor_parallel_size": 2.5},
                         ["argument 'vllm_tensor_parallel_size' is of type float", "int"]),
    "vllm-max-model-len-15": ("vllm", {"vllm_max_model_len": 15},
                              ["vllm_max_model_len=15 is not allowed", "16 or more"]),
    "vllm-port-0": ("vllm", {"vllm_port": 0}, ["vllm_port=0 is not allowed", "TCP port from 1 to 65535"]),
    "vllm-port-70000": ("vllm", {"vllm_port": 70000}, ["vllm_port=70000 is not allowed", "TCP port from 1 to 65535"]),
    "vllm-two-bad": ("vllm", {"vllm_max_model_len": 0, "vllm_port": -1},
                     ["vllm_max_model_len=0 is not allowed", "vllm_port=-1 is not allowed"]),
    "vllm-tp-16-on-8-gpus": ("vllm", {"vllm_tensor_parallel_size": 16},
                             ["vllm_tensor_parallel_size=16 needs that many GPUs", f"offers {GPUS} (vllm_gpus=all)"]),
    "vllm-tp-4-on-2-listed": ("vllm", {"vllm_tensor_parallel_size": 4, "vllm_gpus": [0, 1]},
                              ["offers 2 (vllm_gpus=[0, 1])"]),
    # Several instances (issue #14): the inventories/prod layout, then one mistake each.
    "vllm-instances-good": ("vllm", {"vllm_instances": [
        {"name": "llama70b", "model": "m/70b", "gpus": [0, 1, 2, 3], "port": 8000},
        {"name": "chat-a", "model": "m/8b", "served_model_name": "llama-8b", "gpus": [4], "port": 8002},
        {"name": "chat-b", "model": "m/8b", "served_model_name": "llama-8b", "gpus": [5], "port": 8003},
        {"name": "embed", "model": "m/e5", "gpus": [6], "port": 8004, "extra_args": ["--task", "embed"]}]}, None),
    "vllm-instances-overlap": ("vllm", {"vllm_instances": [
        {"name": "a", "model": "m", "gpus": [0, 1], "port": 8000},
        {"name": "b", "model": "m", "gpus": [1], "port": 8002}]},
        ["GPU 1 is given to a and b"]),
    "vllm-instances-tp": ("vllm", {"vllm_instances": [
        {"name": "a", "model": "m", "gpus": [0, 1, 2, 3], "tensor_parallel_size": 2, "port": 8000}]},
        ["vllm_instances[a].tensor_parallel_size=2 x pipeline_parallel_size=1 = 2 GPUs, but the instance owns 4"]),
    "vllm-instances-port": ("vllm", {"vllm_instances": [
        {"name": "a", "model": "m", "gpus": [0], "port": 8000},
        {"name": "b", "model": "m", "gpus": [1], "port": 8000}]},
        ["port 8000 is used by a and b"]),
    "vllm-instances-wrapper-port": ("vllm", {"vllm_instances": [{"name": "a", "model": "m", "gpus": [0], "port": 8001}]},
                                    ["vllm_instances[a].port=8001 is taken by the wrapper (wrapper_port)"]),
    "vllm-instances-gpu-9": ("vllm", {"vllm_instances": [{"name": "a", "model": "m", "gpus": [7, 9], "port": 8000}]},
                             ["vllm_instances[a].gpus=[7, 9]: GPU(s) [9] do not exist", "indices 0 to 7"]),
    "vllm-instances-no-port": ("vllm", {"vllm_instances": [{"name": "a", "model": "m", "gpus": [0]}]},
                               ["vllm_instances[a]: missing port"]),
    "vllm-instances-typo": ("vllm", {"vllm_instances": [{"name": "a", "model": "m", "gpu": [0], "port": 8000}]},
                            ["vllm_instances[a]: unknown key(s) gpu", "allowed keys"]),
    "wrapper-good": ("wrapper", {"wrapper_port": "9001", "wrapper_workers": 64, "wrapper_default_max_tokens": 1,
                                 "wrapper_default_temperature": 0}, None),
    "wrapper-port-text": ("wrapper", {"wrapper_port": "eighty"}, ["argument 'wrapper_port' is of type str", "int"]),
    "wrapper-port-65536": ("wrapper", {"wrapper_port": 65536},
                           ["wrapper_port=65536 is not allowed", "TCP port from 1 to 65535"]),
    "wrapper-workers-65": ("wrapper", {"wrapper_workers": 65}, ["wrapper_workers=65 is not allowed", "from 1 to 64"]),
    "wrapper-workers-0": ("wrapper", {"wrapper_workers": 0}, ["wrapper_workers=0 is not allowed", "from 1 to 64"]),
    "wrapper-max-tokens-0": ("wrapper", {"wrapper_default_max_tokens": 0},
                             ["wrapper_default_max_tokens=0 is not allowed", "1 or more"]),
    "wrapper-temperature-2.5": ("wrapper", {"wrapper_default_temperature": 2.5},
                                ["wrapper_default_temperature=2.5 is not allowed", "from 0 to 2"]),
    "wrapper-temperature-negative": ("wrapper", {"wrapper_default_temperature": -0.1},
                                     ["wrapper_default_temperature=-0.1 is not allowed", "from 0 to 2"]),
    "wrapper-keys-good": ("wrapper", {"wrapper_api_keys": [
        {"name": "team-a", "key": "sk-a", "models": ["m1", "org/m2"], "expires": "2027-01-31"},
        {"name": "team-b", "key": "sk-b", "expires": "2027-01-31T12:00:00+01:00", "disabled": True},
        {"name": "ops", "key": "sk-ops"}]}, None),
    "wrapper-keys-expires": ("wrapper", {"wrapper_api_keys": [{"name": "a", "key": "sk-secret-1", "expires": "soon"}]},
                             ["wrapper_api_keys: expires must be an ISO 8601 date or time"]),
    "wrapper-keys-models-string": ("wrapper", {"wrapper_api_keys": [{"name": "a", "key": "sk-secret-1", "models": "m1"}]},
                                   ["wrapper_api_keys: models must be a list of model names"]),
    "wrapper-keys-models-empty-name": ("wrapper", {"wrapper_api_keys": [{"name": "a", "key": "sk-secret-1", "models": [""]}]},
                                       ["wrapper_api_keys: models must be a list of model names"]),
    "wrapper-keys-duplicate": ("wrapper", {"wrapper_api_keys": [{"name": "a", "key": "sk-secret-1"},
                                                                {"name": "a", "key": "sk-secret-2"}]},
                               ["wrapper_api_keys: every name must be unique"]),
    # Limits per key (issue #16): counted in the fleet's counter store, which must exist.
    "wrapper-keys-limits-good": ("wrapper", {"wrapper_api_keys": [
        {"name": "a", "key": "sk-secret-1", "requests_per_minute": 60, "tokens_per_minute": 100000,
         "concurrent_requests": 4}], **STORE}, None),
    "wrapper-keys-limits-zero": ("wrapper", {"wrapper_api_keys": [
        {"name": "a", "key": "sk-secret-1", "tokens_per_minute": 0}], **STORE},
        ["tokens_per_minute and concurrent_requests must be whole numbers of 1 or more"]),
    "wrapper-keys-limits-no-store": ("wrapper", {"wrapper_api_keys": [
        {"name": "a", "key": "sk-secret-1", "requests_per_minute": 10}]},
        ["keys with limits need a counter store", "counter_store group"]),
    "wrapper-limits-store-url": ("wrapper", {**STORE, "wrapper_limits_store": "store:6379"},
                                 ["wrapper_limits_store=store:6379 is not allowed", "redis://host:port/db"]),
    "wrapper-limits-store-no-password": ("wrapper", {"wrapper_limits_store": "redis://store:6379/0"},
                                         ["wrapper_limits_store_password (fleet_counter_store_password) must be set"]),
    "counter-store-good": ("counter_store", {"counter_store_password": "sk-secret-store-0123456789",
                                             "counter_store_bind_addresses": ["127.0.0.1", "10.0.0.5", "::1"]}, None),
    "counter-store-no-password": ("counter_store", {},
                                  ["counter_store_password (fleet_counter_store_password) must be set"]),
    "counter-store-short-password": ("counter_store", {"counter_store_password": "sk-secret-2"},
                                     ["16 or more characters"]),
    "counter-store-bind-name": ("counter_store", {"counter_store_password": "sk-secret-store-0123456789",
                                                  "counter_store_bind_addresses": ["store.example"]},
                                ["counter_store_bind_addresses=['store.example'] is not allowed"]),
    "counter-store-port-0": ("counter_store", {"counter_store_password": "sk-secret-store-0123456789",
                                               "counter_store_port": 0},
                             ["counter_store_port=0 is not allowed"]),
    # The model store and the hosts' copies (issue #17).
    "model-store-good": ("model_store", {"model_store_models": ["org/a", "org/b@v1.0", {"repo": "org/c", "revision": "main"}],
                                         "model_store_allowed_hosts": ["10.0.0.0/8", "10.1.2.3"]}, None),
    "model-store-bad-model": ("model_store", {"model_store_models": ["just-a-name"]},
                              ["model_store_models: model 'just-a-name'", "Hugging Face id (org/name)"]),
    "model-store-endpoint": ("model_store", {"model_store_hf_endpoint": "huggingface.co"},
                             ["model_store_hf_endpoint=huggingface.co is not allowed"]),
    "model-store-hosts-names": ("model_store", {"model_store_allowed_hosts": ["gpu01.example"]},
                                ["model_store_allowed_hosts=['gpu01.example'] is not allowed"]),
    "model-sync-good": ("model_sync", {"model_sync_store": "10.0.0.7", "model_sync_bwlimit": "200M"}, None),
    "model-sync-no-store": ("model_sync", {}, ["model_sync_store is empty", "model_store group"]),
    "model-sync-bwlimit": ("model_sync", {"model_sync_store": "10.0.0.7", "model_sync_bwlimit": "fast"},
                           ["model_sync_bwlimit=fast is not allowed"]),
    "model-sync-parallel-0": ("model_sync", {"model_sync_store": "10.0.0.7", "model_sync_parallel": 0},
                              ["model_sync_parallel=0 is not allowed"]),
    "wrapper-image-from-store-without-one": ("wrapper", {"wrapper_image_from_store": True},
                                             ["wrapper_image_from_store needs a model store", "model_store group"]),
    "vllm-image-from-store-without-one": ("vllm", {"vllm_image_from_store": True},
                                          ["vllm_image_from_store needs a model store", "model_store group"]),
    "vllm-offline-without-a-store": ("vllm", {"fleet_offline": True},
                                     ["vllm_image_from_store needs a model store"]),
    "apt-proxy-url-without-scheme": ("apt_proxy", {"apt_proxy_url": "apt-cacher.internal:3142"},
                                     ["apt_proxy_url=apt-cacher.internal:3142 is not allowed", "http://"]),
    "apt-proxy-url": ("apt_proxy", {"apt_proxy_url": "http://apt-cacher.internal:3142"}, None),
    "model-store-local": ("model_store", {"model_store_models": ["org/a", "local/b"],
                                          "model_store_local_models": {"local/b": "/mnt/models/b"}}, None),
    "model-store-local-relative": ("model_store", {"model_store_local_models": {"local/b": "mnt/models/b"}},
                                   ["model_store_local_models=", "absolute directory on the store"]),
    "model-store-local-revision": ("model_store", {"model_store_models": ["local/b@v2"],
                                                   "model_store_local_models": {"local/b": "/mnt/models/b"}},
                                   ["a model from a directory has one revision, main"]),
    "model-store-apt-proxy-port": ("model_store", {"model_store_apt_proxy_port": 70000},
                                   ["model_store_apt_proxy_port=70000 is not allowed"]),
    "docker-distro": ("docker", {"docker_package_source": "distro"}, None),
    "docker-snap": ("docker", {"docker_package_source": "snap"},
                    ["docker_package_source must be one of: docker, distro, got: snap"]),
}


OUTPUT: list[str] = []


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("role-checks")
    for index in range(GPUS):  # H100 SXM as the kernel lists them under /sys/bus/pci/devices
        device = work / "pci" / f"0000:{0x18 + index:02x}:00.0"
        device.mkdir(parents=True)
        for name, value in (("vendor", "0x10de"), ("class", "0x030200"), ("device", "0x2330")):
            (device / name).write_text(value + "\n")
    hosts = {name: {"case_role": role, **settings} for name, (role, settings, _expected) in CASES.items()}
    inventory = {
        "cases": {
            "hosts": hosts,
            # docker's default repository URL reads the distribution, which this run does not gather.
            "vars": {"docker_repo_url": "https://download.docker.com/linux/debian"},
        }
    }
    (work / "inventory.yml").write_text(yaml.safe_dump(inventory))
    env = dict(os.environ, ANSIBLE_CACHE_PLUGIN="ansible.builtin.memory", ANSIBLE_NOCOLOR="1")
    run = subprocess.run(
        ["ansible-playbook", "-i", str(work / "inventory.yml"), str(PLAYBOOK), "-e", f"out_dir={work}",
         "-e", f"gpu_sysfs={work / 'pci'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    OUTPUT.append(run.stdout + run.stderr)
    return json.loads((work / "results.json").read_text())


@pytest.mark.parametrize("case", [name for name, case in CASES.items() if case[2] is None])
def test_good_settings_pass(results, case):
    assert results[case] == {"failed": False, "msg": ""}


@pytest.mark.parametrize("case", [name for name, case in CASES.items() if case[2] is not None])
def test_bad_settings_fail_naming_the_variable_and_what_is_allowed(results, case):
    outcome = results[case]
    assert outcome["failed"], f"{case}: the checks passed"
    for fragment in CASES[case][2]:
        assert fragment in outcome["msg"], f"{case}: {fragment!r} not in {outcome['msg']!r}"


def test_api_key_checks_never_show_a_key(results):
    assert "sk-secret" not in OUTPUT[0] and "sk-secret" not in json.dumps(results)


def specs(role):
    return yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]


def checked_roles():
    defaults = yaml.safe_load((ROOT / "roles" / "preflight" / "defaults" / "main.yml").read_text())
    listed = [defaults["preflight_role_checks"], defaults["preflight_gpu_role_checks"]]
    # Each a list, or a template choosing quoted role names by the host's groups.
    names = [name for value in listed for name in (value if isinstance(value, list) else re.findall(r"'(\w+)'", value))]
    return sorted({name for name in names if (ROOT / "roles" / name).is_dir()})


@pytest.mark.parametrize("role", checked_roles())
def test_preflight_entry_point_validates_every_option_of_main(role):
    """The preflight role runs tasks_from: preflight, so the spec it validates is the `preflight` entry point."""
    entry_points = specs(role)
    assert "preflight" in entry_points, f"{role} has no preflight entry point: its argument specs would not run"
    assert entry_points["preflight"]["options"] == entry_points["main"]["options"]
    assert (ROOT / "roles" / role / "tasks" / "preflight.yml").is_file()
