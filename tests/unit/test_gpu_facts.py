"""gpu_facts reads a sysfs tree laid out like the kernel's (built here per test case)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml
from ansible.module_utils import basic

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _device(root, slot, vendor, pci_class, device):
    path = root / slot
    path.mkdir(parents=True)
    (path / "vendor").write_text(vendor + "\n")
    (path / "class").write_text(pci_class + "\n")
    (path / "device").write_text(device + "\n")


def test_hgx_board_with_gpus_and_nvswitches(tmp_path, gpu_facts):
    sysfs = tmp_path / "devices"
    for i in range(8):
        _device(sysfs, f"0000:{0x18 + i:02x}:00.0", "0x10de", "0x030200", "0x2330")
    for i in range(4):
        _device(sysfs, f"0000:{0x80 + i:02x}:00.0", "0x10de", "0x068000", "0x22a3")
    _device(sysfs, "0000:00:1f.0", "0x8086", "0x060100", "0xa1c1")  # Intel ISA bridge, not counted
    version = tmp_path / "version"
    version.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build  (dvs-builder@U16)\n"
        "GCC version:  gcc version 12.2.0\n"
    )
    facts = gpu_facts.scan(str(sysfs), str(version))
    assert facts["gpu_count"] == 8
    assert facts["gpus"][0] == {"pci_slot": "0000:18:00.0", "device_id": "2330", "name": "H100-SXM5-80GB"}
    assert facts["nvswitch_count"] == 4
    assert facts["driver_version"] == "550.54.15"


def test_proprietary_module_version_and_vga_class(tmp_path, gpu_facts):
    sysfs = tmp_path / "devices"
    _device(sysfs, "0000:01:00.0", "0x10de", "0x030000", "0x9999")
    _device(sysfs, "0000:01:00.1", "0x10de", "0x040300", "0x10fa")  # HDMI audio function, not a GPU
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.216.01  Wed Oct 30 2024\n")
    facts = gpu_facts.scan(str(sysfs), str(version))
    assert facts["gpu_count"] == 1
    assert facts["gpus"][0]["name"] == "9999"
    assert facts["nvswitch_count"] == 0
    assert facts["driver_version"] == "535.216.01"


def test_host_without_gpu_or_driver(tmp_path, gpu_facts):
    facts = gpu_facts.scan(str(tmp_path / "missing"), str(tmp_path / "no-version"))
    assert facts == {"gpu_count": 0, "gpus": [], "nvswitch_count": 0, "driver_version": None}


def test_module_returns_the_scan_as_the_host_fact_gpufleet_gpu(tmp_path, gpu_facts, monkeypatch, capsys):
    """What Ansible gets from the module: the plain values and ansible_facts.gpufleet_gpu with the same scan."""
    sysfs = tmp_path / "devices"
    _device(sysfs, "0000:18:00.0", "0x10de", "0x030200", "0x2330")
    _device(sysfs, "0000:80:00.0", "0x10de", "0x068000", "0x22a3")
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.163.01  Release Build\n")
    args = {"ANSIBLE_MODULE_ARGS": {"sysfs_pci_path": str(sysfs), "proc_driver_version": str(version)}}
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", json.dumps(args).encode())
    monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy")  # what ansible-core's controller sends a Python module
    with pytest.raises(SystemExit) as exited:
        gpu_facts.main()
    assert exited.value.code == 0
    returned = json.loads(capsys.readouterr().out)
    expected = {
        "gpu_count": 1,
        "gpus": [{"pci_slot": "0000:18:00.0", "device_id": "2330", "name": "H100-SXM5-80GB"}],
        "nvswitch_count": 1,
        "driver_version": "550.163.01",
    }
    assert returned["ansible_facts"] == {"gpufleet_gpu": expected}
    assert {key: returned[key] for key in expected} == expected
    assert returned["changed"] is False


def test_site_first_play_puts_the_gpu_fact_into_the_fact_cache(tmp_path):
    """site.yml under a tag no play has: only its `always` plays run (facts, fleet report); the host's cache entry
    then holds gpufleet_gpu for the later plays and the next run. This machine's real sysfs: no NVIDIA GPU."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"gpu_servers": {"hosts": {"gpu-local": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    env = dict(os.environ, ANSIBLE_CACHE_PLUGIN="ansible.builtin.jsonfile",
               ANSIBLE_CACHE_PLUGIN_CONNECTION=str(tmp_path / "facts"), ANSIBLE_NOCOLOR="1")
    run = subprocess.run(["ansible-playbook", "-i", str(inventory), "site.yml", "--tags", "gpufleet-no-such-tag"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    # ansible-core 2.19's jsonfile cache: file s1_<host>, holding {"__payload__": "<facts as JSON>"}
    (entry,) = (tmp_path / "facts").glob("*gpu-local")
    stored = json.loads(entry.read_text())
    cached = json.loads(stored["__payload__"]) if "__payload__" in stored else stored
    assert cached["gpufleet_gpu"] == {"gpu_count": 0, "gpus": [], "nvswitch_count": 0, "driver_version": None}


def test_a_new_scan_replaces_the_fact(tmp_path):
    """What the nvidia_driver role's load step relies on: scanning again after the driver was loaded updates
    ansible_facts.gpufleet_gpu for every later task and role."""
    version = tmp_path / "version"
    playbook = tmp_path / "rescan.yml"
    playbook.write_text(yaml.safe_dump([{
        "hosts": "localhost", "gather_facts": False, "connection": "local",
        "vars": {"ansible_python_interpreter": sys.executable},
        "tasks": [
            {"gpufleet.vllm.gpu_facts": {"proc_driver_version": str(version)}},
            {"ansible.builtin.copy": {"dest": str(version), "mode": "0644",
                                      "content": "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.216.01  Wed Oct 30 2024\n"}},
            {"gpufleet.vllm.gpu_facts": {"proc_driver_version": str(version)}},
            {"ansible.builtin.copy": {"dest": str(tmp_path / "fact.json"), "mode": "0644",
                                      "content": "{{ ansible_facts.gpufleet_gpu | to_json }}"}},
        ],
    }]))
    run = subprocess.run(["ansible-playbook", "-i", "localhost,", str(playbook)], cwd=ROOT,
                         env=dict(os.environ, ANSIBLE_CACHE_PLUGIN="ansible.builtin.memory"),
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads((tmp_path / "fact.json").read_text())["driver_version"] == "535.216.01"
