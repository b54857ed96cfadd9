#!/usr/bin/python
# Copyright: gpufleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_facts
short_description: Find NVIDIA GPUs and NVSwitches on the PCI bus
version_added: 0.1.0
description:
  - Reads the PCI devices the kernel lists in sysfs (the data C(lspci) shows), so it needs neither
    C(pciutils) nor a loaded NVIDIA driver, and works before the driver is installed.
  - Counts NVIDIA display/3D controllers as GPUs and NVIDIA bridge devices as NVSwitches
    (HGX/DGX baseboards, which need Fabric Manager).
  - Reports the loaded kernel driver version from C(/proc/driver/nvidia/version) when there is one.
  - Also returns all of it as the host fact C(gpufleet_gpu), so later plays, roles and the fact cache read
    C(ansible_facts.gpufleet_gpu) without scanning again; a new run of the module replaces the fact.
options:
  sysfs_pci_path:
    description: Directory holding one entry per PCI device.
    type: path
    default: /sys/bus/pci/devices
  proc_driver_version:
    description: File the NVIDIA kernel module writes its version to.
    type: path
    default: /proc/driver/nvidia/version
author:
  - gpufleet maintainers (@gpufleet)
attributes:
  check_mode:
    support: full
    description: Only reads; check mode returns the same facts.
"""

EXAMPLES = r"""
- name: Find GPUs
  gpufleet.vllm.gpu_facts:
  register: gpu

- name: Show them
  ansible.builtin.debug:
    msg: "{{ gpu.gpu_count }} GPUs, NVSwitch: {{ gpu.nvswitch_count > 0 }}"

- name: Or read the host fact it sets, in this play or a later one
  ansible.builtin.debug:
    msg: "Loaded driver: {{ ansible_facts.gpufleet_gpu.driver_version | default('none', true) }}"
"""

RETURN = r"""
gpu_count:
  description: Number of NVIDIA GPUs.
  returned: always
  type: int
gpus:
  description: One entry per GPU.
  returned: always
  type: list
  elements: dict
  contains:
    pci_slot:
      description: PCI address.
      type: str
    device_id:
      description: PCI device id (hex, without 0x).
      type: str
    name:
      description: Readable name (the device id when unknown).
      type: str
nvswitch_count:
  description: Number of NVIDIA NVSwitch bridge devices.
  returned: always
  type: int
driver_version:
  description: Version of the loaded NVIDIA kernel module, or null when none is loaded.
  returned: always
  type: str
ansible_facts:
  description: Host facts set by the module.
  returned: always
  type: dict
  contains:
    gpufleet_gpu:
      description: The same RV(gpu_count), RV(gpus), RV(nvswitch_count) and RV(driver_version) as above, as one fact.
      returned: always
      type: dict
      sample:
        gpu_count: 2
        gpus:
          - {pci_slot: "0000:18:00.0", device_id: "2330", name: H100-SXM5-80GB}
          - {pci_slot: "0000:2a:00.0", device_id: "2330", name: H100-SXM5-80GB}
        nvswitch_count: 0
        driver_version: 550.163.01
"""

import os
import re

from ansible.module_utils.basic import AnsibleModule

NVIDIA_VENDOR = "0x10de"
# PCI class codes: 0x0300 VGA controller, 0x0302 3D controller (data-center GPUs), 0x0680 other bridge.
GPU_CLASSES = ("0x0300", "0x0302")
BRIDGE_CLASS = "0x0680"
# A few common data-center parts, for a readable report; unknown ids show as the id.
KNOWN_DEVICES = {
    "20b0": "A100-SXM4-40GB",
    "20b2": "A100-SXM4-80GB",
    "20b5": "A100-PCIE-80GB",
    "20f1": "A100-PCIE-40GB",
    "2330": "H100-SXM5-80GB",
    "2331": "H100-PCIE",
    "2335": "H200",
    "26b5": "L40",
    "26b9": "L40S",
    "27b8": "L4",
    "2236": "A10",
    "1eb8": "T4",
}


def _read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def scan(sysfs_pci_path, proc_driver_version):
    gpus = []
    nvswitch_count = 0
    entries = sorted(os.listdir(sysfs_pci_path)) if os.path.isdir(sysfs_pci_path) else []
    for slot in entries:
        device_dir = os.path.join(sysfs_pci_path, slot)
        if _read(os.path.join(device_dir, "vendor")).lower() != NVIDIA_VENDOR:
            continue
        pci_class = _read(os.path.join(device_dir, "class")).lower()[:6]
        device_id = _read(os.path.join(device_dir, "device")).lower().replace("0x", "")
        if pci_class in GPU_CLASSES:
            gpus.append({"pci_slot": slot, "device_id": device_id, "name": KNOWN_DEVICES.get(device_id, device_id)})
        elif pci_class == BRIDGE_CLASS:
            nvswitch_count += 1
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", _read(proc_driver_version))
    return {
        "gpu_count": len(gpus),
        "gpus": gpus,
        "nvswitch_count": nvswitch_count,
        "driver_version": match.group(1) if match else None,
    }


def result(facts):
    """The module's return: the scan as plain values and as the host fact gpufleet_gpu."""
    return dict(facts, changed=False, ansible_facts={"gpufleet_gpu": facts})


def main():
    module = AnsibleModule(
        argument_spec={
            "sysfs_pci_path": {"type": "path", "default": "/sys/bus/pci/devices"},
            "proc_driver_version": {"type": "path", "default": "/proc/driver/nvidia/version"},
        },
        supports_check_mode=True,
    )
    module.exit_json(**result(scan(module.params["sysfs_pci_path"], module.params["proc_driver_version"])))


if __name__ == "__main__":
    main()
