#!/usr/bin/python
# Copyright: gpufleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_memory
short_description: GPU memory that other processes use, per GPU, from nvidia-smi
version_added: 0.1.0
description:
  - Runs C(nvidia-smi) for each GPU's total and used memory and for the compute processes on it.
  - Memory used by processes of the containers named in O(exclude_containers) or labelled O(exclude_label)
    (the host's own vLLM instances, which a new run replaces or removes) is not counted as used by others; a process belongs to a
    container when its cgroup names the container's id.
  - Without C(nvidia-smi) or a loaded driver it returns RV(available=false) and no GPUs, so a first run
    before the driver is installed is not refused.
options:
  exclude_containers:
    description: Docker containers whose GPU processes are not counted.
    type: list
    elements: str
    default: []
  exclude_label:
    description:
      - Docker containers carrying this label are not counted either (all of the host's vLLM instances,
        those a run is about to remove included).
    type: str
    default: ""
author:
  - gpufleet maintainers (@gpufleet)
attributes:
  check_mode:
    support: full
    description: Only reads.
"""

EXAMPLES = r"""
- name: Read GPU memory in use
  gpufleet.vllm.gpu_memory:
    exclude_containers: [vllm-server]
  register: gpu_memory
"""

RETURN = r"""
available:
  description: Whether nvidia-smi answered.
  returned: always
  type: bool
gpus:
  description: GPU index (as a string) to its memory in MiB.
  returned: always
  type: dict
  sample: {"0": {"total_mib": 81559, "used_mib": 40000, "used_by_others_mib": 0}}
"""

import os

from ansible.module_utils.basic import AnsibleModule

GPU_QUERY = ["nvidia-smi", "--query-gpu=index,pci.bus_id,memory.total,memory.used", "--format=csv,noheader,nounits"]
APP_QUERY = ["nvidia-smi", "--query-compute-apps=gpu_bus_id,pid,used_memory", "--format=csv,noheader,nounits"]


def _rows(text):
    return [[cell.strip() for cell in line.split(",")] for line in text.splitlines() if line.strip()]


def _mib(value):
    try:
        return int(float(value))
    except ValueError:
        # "[N/A]" (no per-process accounting, e.g. MIG or some vGPU setups).
        return 0


def parse(gpu_csv, apps_csv, excluded_pids):
    """{index: {total_mib, used_mib, used_by_others_mib}} from nvidia-smi's two CSV answers, not counting
    the processes in EXCLUDED_PIDS."""
    gpus, by_bus = {}, {}
    for index, bus_id, total, used in _rows(gpu_csv):
        gpus[index] = {"total_mib": _mib(total), "used_mib": _mib(used), "used_by_others_mib": _mib(used)}
        by_bus[bus_id.lower()] = index
    for bus_id, pid, used in _rows(apps_csv):
        index = by_bus.get(bus_id.lower())
        if index is not None and pid in excluded_pids:
            gpu = gpus[index]
            gpu["used_by_others_mib"] = max(0, gpu["used_by_others_mib"] - _mib(used))
    return gpus


def container_pids(container_ids, proc="/proc"):
    """PIDs (as strings) whose cgroup path names one of CONTAINER_IDS."""
    pids = set()
    if not container_ids:
        return pids
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            with open(os.path.join(proc, pid, "cgroup")) as handle:
                cgroup = handle.read()
        except OSError:
            continue
        if any(cid in cgroup for cid in container_ids):
            pids.add(pid)
    return pids


def main():
    module = AnsibleModule(
        argument_spec={
            "exclude_containers": {"type": "list", "elements": "str", "default": []},
            "exclude_label": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    smi = module.get_bin_path("nvidia-smi")
    if smi is None:
        module.exit_json(changed=False, available=False, gpus={})
    rc, gpu_csv, dummy = module.run_command([smi] + GPU_QUERY[1:])
    if rc != 0:
        module.exit_json(changed=False, available=False, gpus={})
    rc, apps_csv, dummy = module.run_command([smi] + APP_QUERY[1:])
    apps_csv = apps_csv if rc == 0 else ""
    ids = []
    docker = module.get_bin_path("docker")
    for name in module.params["exclude_containers"] if docker else []:
        rc, out, dummy = module.run_command([docker, "inspect", "--format", "{{.Id}}", name])
        if rc == 0 and out.strip():
            ids.append(out.strip())
    if docker and module.params["exclude_label"]:
        rc, out, dummy = module.run_command(
            [docker, "ps", "--all", "--quiet", "--no-trunc", "--filter", "label=" + module.params["exclude_label"]])
        ids.extend(out.split() if rc == 0 else [])
    module.exit_json(changed=False, available=True, gpus=parse(gpu_csv, apps_csv, container_pids(ids)))


if __name__ == "__main__":
    main()
