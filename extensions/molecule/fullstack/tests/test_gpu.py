"""site.yml's GPU branch on the simulated GPU host (tests/fixtures/simulated-gpu): two H100 on the PCI bus and a
simulated loaded driver 550.163.01. Debian's 535 driver and the toolkit (from its test-fixture repository) are
installed, Docker's nvidia device driver serves the vLLM and DCGM exporter containers' GPU requests (through the
toolkit fixture's hook), and vLLM, the CPU build, still serves. Where the simulation stops: docs/testing.md."""

import json
import os
import pathlib
import re

import pytest

testinfra_hosts = ["ansible://gpu_servers"]

HOST = "fullstack-bookworm"
LOADED_DRIVER = "550.163.01"  # extensions/molecule/nvidia_container_toolkit/fixture/proc-driver-nvidia-version
TOOLKIT_VERSION = "1.17.8-1"  # the role's default
TOOLKIT_PACKAGES = ["nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools", "libnvidia-container1"]
DRIVER_PACKAGES = ["nvidia-kernel-dkms", "nvidia-smi", "libcuda1", "nvidia-persistenced"]  # Debian 12, headless
HOOK_LOG = "/var/log/nvidia-container-runtime-hook-fixture.log"
DCGM_IMAGE = "gpufleet-test/dcgm-exporter:fixture"
ANSIBLE_LOG = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ansible.log"


@pytest.fixture(scope="module")
def converge_tasks():
    """{task name: its result lines} of the converge: the first whole site.yml run in the scenario's Ansible log."""
    runs = ANSIBLE_LOG.read_text(errors="replace").split("PLAY RECAP")
    run = next(r for r in runs if "PLAY [NVIDIA driver and container toolkit]" in r and "PLAY [Fleet report]" in r)
    blocks = re.findall(r"TASK \[([^\]]+)\][^\n]*\n(.*?)(?=TASK \[|PLAY \[|\Z)", run, re.S)
    return dict(blocks)


def result(converge_tasks, task):
    lines = converge_tasks[task]
    found = re.search(rf"(ok|changed|skipping|failed|fatal): \[{HOST}\]", lines)
    return found.group(1) if found else None


def test_site_took_the_gpu_branch(converge_tasks):
    assert result(converge_tasks, "Find NVIDIA GPUs") == "ok"
    # the later roles read ansible_facts.gpufleet_gpu from site.yml's first play (and preflight's fresh scan);
    # the roles' tasks/preflight.yml may not run at all where the preflight role already ran it
    own_scan = "gpufleet.vllm.{} : Find NVIDIA GPUs when no earlier play or role did"
    assert result(converge_tasks, own_scan.format("exporters")) == "skipping"
    for role in ("nvidia_driver", "nvidia_container_toolkit", "vllm"):
        assert result(converge_tasks, own_scan.format(role)) in (None, "skipping"), role
    assert result(converge_tasks, "Say that this host gets no NVIDIA software") == "skipping"
    assert result(converge_tasks, "gpufleet.vllm.nvidia_driver : Install the NVIDIA driver packages") == "changed"
    assert result(converge_tasks, "gpufleet.vllm.nvidia_container_toolkit : Install the toolkit packages at the pinned version") == "changed"
    assert result(converge_tasks, "gpufleet.vllm.nvidia_container_toolkit : Generate the CDI specification of this host's GPUs") == "changed"
    # the installed 535 driver is not the loaded one, and a container cannot reboot: left to the operator
    assert result(converge_tasks, "gpufleet.vllm.nvidia_driver : Say that a reboot is needed and left to the operator") == "ok"
    # site.yml's message for hosts without a GPU never appeared for this host, in any run
    assert f"{HOST}: no NVIDIA GPU found" not in ANSIBLE_LOG.read_text(errors="replace")


def test_driver_from_debian_installed_and_held(host):
    held = host.check_output("apt-mark showhold").split()
    for name in DRIVER_PACKAGES:
        assert host.package(name).is_installed, name
        assert name in held, name
    assert host.package("nvidia-smi").version.startswith("535."), host.package("nvidia-smi").version
    assert "blacklist nouveau" in host.file("/etc/modprobe.d/gpufleet-blacklist-nouveau.conf").content_string


def test_toolkit_installed_at_the_pinned_version(host):
    held = host.check_output("apt-mark showhold").split()
    for name in TOOLKIT_PACKAGES:
        assert host.package(name).version == TOOLKIT_VERSION, name
        # pinned by its own role, not held by the driver's (a hold would fail the next version change)
        assert name not in held, name
    assert f"Candidate: {TOOLKIT_VERSION}" in host.check_output("apt-cache policy nvidia-container-toolkit")
    assert "Pin: version" in host.file("/etc/apt/preferences.d/nvidia-container-toolkit").content_string


def test_cdi_specification_for_both_gpus_and_the_loaded_driver(host):
    spec = host.file("/etc/cdi/nvidia.yaml")
    assert spec.exists and spec.mode == 0o644
    assert f"libcuda.so.{LOADED_DRIVER}" in spec.content_string
    assert re.findall(r'- name: "?(\w+)"?', spec.content_string) == ["0", "1", "all"]


def test_docker_has_the_nvidia_runtime(host):
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert "nvidia" in info["Runtimes"]


def inspect(host, name):
    return json.loads(host.check_output(f"docker inspect {name}"))[0]


def hook_calls(host, container):
    """NVIDIA_VISIBLE_DEVICES of each start of CONTAINER that went through dockerd's nvidia device driver."""
    log = host.file(HOOK_LOG).content_string if host.file(HOOK_LOG).exists else ""
    return re.findall(rf"^prestart {container['Id']} NVIDIA_VISIBLE_DEVICES=(\S*) ", log, re.M)


@pytest.mark.parametrize("container, gpu", [("vllm-a", "1"), ("vllm-b", "0")])
def test_each_vllm_instance_asks_docker_for_its_own_gpu(host, container, gpu):
    """vllm_instances' gpus: [1] and [0] become device requests for those GPUs that dockerd's nvidia driver hands
    to the toolkit's hook, one GPU per instance."""
    vllm = inspect(host, container)
    assert vllm["State"]["Running"]
    requests = vllm["HostConfig"]["DeviceRequests"]
    assert [(r["Driver"], r["Count"], r["DeviceIDs"], r["Capabilities"]) for r in requests] == [("nvidia", 0, [gpu], [["gpu"]])]
    calls = hook_calls(host, vllm)
    assert calls and set(calls) == {gpu}, calls
    assert "--gpu-memory-utilization" in vllm["Args"]
    # and vLLM (the CPU build) serves on it: test_https.py and test_openai_sdk.py go through nginx


def test_dcgm_exporter_runs_with_all_gpus(host):
    dcgm = inspect(host, "dcgm-exporter")
    assert dcgm["State"]["Running"] and dcgm["RestartCount"] == 0
    assert dcgm["Config"]["Image"] == DCGM_IMAGE
    requests = dcgm["HostConfig"]["DeviceRequests"]
    assert [(r["Driver"], r["Count"], r["Capabilities"]) for r in requests] == [("nvidia", -1, [["gpu"]])]
    assert set(hook_calls(host, dcgm)) == {"all"}
    assert host.socket("tcp://127.0.0.1:9400").is_listening
    assert not host.socket("tcp://0.0.0.0:9400").is_listening
    fact = json.loads(host.file("/etc/ansible/facts.d/gpufleet_exporters.fact").content_string)
    assert fact == {"node": True, "dcgm": True}


def test_dcgm_fixture_refuses_to_start_without_a_gpu_request(host):
    """Like the real exporter without a GPU: so the running one above proves the role's GPU request."""
    run = host.run(f"docker run --rm --network none {DCGM_IMAGE}")
    assert run.rc != 0
    assert "Failed to initialize NVML" in run.stderr
