"""What the converge ran on each host, in order, from its junit record (molecule.yml enables the callback).

On the simulated GPU host the role takes its GPU path: the kernel step, the kernel module, the reboot step
(left to the operator there), then Fabric Manager (skipped: no NVSwitch) and nvidia-persistenced, which is
not started because the installed driver is not loaded. Runs on the controller, once per host.
"""

from __future__ import annotations

import os
import pathlib
import xml.etree.ElementTree as ET

import pytest
import yaml

testinfra_hosts = ["ansible://all"]

JUNIT = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "junit"
ROLE = "gpufleet.vllm.nvidia_driver : "
KERNEL = ROLE + "Install a kernel the distribution has NVIDIA modules for"
KERNEL_SKIPPED = ROLE + "Say that the kernel step is skipped"
MODULE = ROLE + "Install the NVIDIA kernel module"
REBOOT = ROLE + "Reboot to load the installed driver"
REBOOT_LEFT = ROLE + "Say that a reboot is needed and left to the operator"
INITRAMFS = ROLE + "Rebuild the initramfs"
FABRIC_MANAGER = ROLE + "Enable Fabric Manager, and start it once the installed driver is loaded"
PERSISTENCED = ROLE + "Enable nvidia-persistenced, and start it once the installed driver is loaded"
NVIDIA_SMI = ROLE + "Read the driver version from nvidia-smi"
OWN_SCAN = ROLE + "Find NVIDIA GPUs when no earlier play or role did"
LOAD_SCAN = ROLE + "Read the loaded kernel module version"


def tasks_of(path, name):
    """[(task, status, result)] of one host in one playbook run, in the order they ran."""
    ran = []
    for case in ET.parse(path).getroot().iter("testcase"):
        prefix = f"[{name}] "
        if not case.get("name", "").startswith(prefix):
            continue
        task = case.get("name")[len(prefix):].split(": ", 1)[1]
        status = "skipped" if case.find("skipped") is not None else "ok"
        if case.find("failure") is not None or case.find("error") is not None:
            status = "failed"
        # the task's result as the callback printed it (JSON or YAML, both load as YAML)
        result = yaml.safe_load(case.findtext("system-out") or "{}") or {}
        if status == "ok" and result.get("changed"):
            status = "changed"
        ran.append((task, status, result))
    return ran


@pytest.fixture(scope="module")
def converge(host):
    """The first converge that installed the driver on this host (not the check runs, not idempotence)."""
    name = host.backend.get_hostname()
    for path in sorted(JUNIT.glob("converge-*.xml"), key=lambda p: float(p.stem.split("-", 1)[1])):
        ran = tasks_of(path, name)
        if (MODULE, "changed") in [(task, result) for task, result, _message in ran]:
            return ran
    pytest.fail(f"no converge in {JUNIT} installed the kernel module on {name}")


def position(ran, task):
    names = [entry[0] for entry in ran]
    assert task in names, f"{task} did not run"
    return names.index(task)


def status(ran, task):
    return ran[position(ran, task)][1]


def test_nothing_failed(converge):
    assert [task for task, result, _message in converge if result == "failed"] == []


def test_kernel_module_reboot_fabric_manager_persistenced_in_that_order(host, converge):
    if host.system_info.codename != "bookworm":
        pytest.skip("the reboot step runs on GPU hosts only; the simulated GPU host is Debian 12")
    order = [KERNEL, MODULE, REBOOT_LEFT, INITRAMFS, FABRIC_MANAGER, PERSISTENCED, NVIDIA_SMI]
    positions = [position(converge, task) for task in order]
    assert positions == sorted(positions), list(zip(order, positions))


def test_gpu_host_leaves_the_reboot_to_the_operator_and_starts_nothing(host, converge):
    if host.system_info.codename != "bookworm":
        pytest.skip("the simulated GPU host is Debian 12")
    message = " ".join(converge[position(converge, REBOOT_LEFT)][2]["msg"].split())
    assert status(converge, REBOOT_LEFT) == "ok"
    assert "has no NVIDIA module" in message
    assert "loaded NVIDIA kernel module: none" in message
    assert "nvidia_driver_reboot is false" in message
    assert status(converge, REBOOT) == "skipped"
    # nvidia_driver_kernel_headers is false there (molecule.yml)
    assert "no kernel headers are installed" in converge[position(converge, KERNEL_SKIPPED)][2]["msg"]
    assert status(converge, FABRIC_MANAGER) == "skipped"  # no NVSwitch on this board
    assert status(converge, NVIDIA_SMI) == "skipped"


def test_host_without_gpu_skips_the_reboot_step(host, converge):
    if host.system_info.codename == "bookworm":
        pytest.skip("Debian 13 is the host without a GPU")
    assert status(converge, REBOOT_LEFT) == "skipped"
    assert status(converge, REBOOT) == "skipped"


def test_used_alone_the_role_finds_the_gpus_in_one_step(host, converge):
    """converge.yml applies the role alone: nothing set ansible_facts.gpufleet_gpu before, so its first GPU task
    runs gpu_facts, once, and everything after reads the fact it set (the GPU host took its GPU path above)."""
    scans = [(result, message) for task, result, message in converge if task == OWN_SCAN]
    assert [result for result, _message in scans] == ["ok"]
    gpus = 2 if host.system_info.codename == "bookworm" else 0
    assert scans[0][1]["ansible_facts"]["gpufleet_gpu"]["gpu_count"] == gpus
    # the load step scans again on the GPU host only, which updates the fact (nothing loaded here)
    assert status(converge, LOAD_SCAN) == ("ok" if gpus else "skipped")
