#!/usr/bin/python
# Copyright: gpufleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: disk_space
short_description: Report the space a directory can use, whether it exists yet or not
version_added: 0.1.0
description:
  - Finds the filesystem that holds O(path) (or would hold it, through its nearest existing parent)
    and reports its free bytes, and the bytes already used under O(path).
  - Free plus used is the space a cache at O(path) can grow to, so a check stays true after the
    cache has been filled.
options:
  path:
    description: Directory to measure.
    type: path
    required: true
author:
  - gpufleet maintainers (@gpufleet)
attributes:
  check_mode:
    support: full
    description: Only reads; check mode returns the same facts.
"""

EXAMPLES = r"""
- name: Measure the model cache disk
  gpufleet.vllm.disk_space:
    path: /data/vllm-models
  register: cache_disk
"""

RETURN = r"""
existing_path:
  description: O(path) or its nearest existing parent, whose filesystem was measured.
  returned: always
  type: str
free_bytes:
  description: Bytes available to unprivileged users on that filesystem.
  returned: always
  type: int
used_bytes:
  description: Disk bytes used by files under O(path) (0 when it does not exist).
  returned: always
  type: int
usable_bytes:
  description: RV(free_bytes) plus RV(used_bytes).
  returned: always
  type: int
"""

import os

from ansible.module_utils.basic import AnsibleModule


def nearest_existing(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def used_bytes(path):
    total = 0
    if not os.path.isdir(path):
        return 0
    device = os.stat(path).st_dev
    for directory, subdirs, files in os.walk(path):
        # Stay on this filesystem, as the free space is that filesystem's.
        subdirs[:] = [d for d in subdirs if os.lstat(os.path.join(directory, d)).st_dev == device]
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except OSError:
                pass
    return total


def measure(path):
    existing = nearest_existing(path)
    stats = os.statvfs(existing)
    free = stats.f_bavail * stats.f_frsize
    used = used_bytes(path) if existing == os.path.abspath(path) else 0
    return {"existing_path": existing, "free_bytes": free, "used_bytes": used, "usable_bytes": free + used}


def main():
    module = AnsibleModule(argument_spec={"path": {"type": "path", "required": True}}, supports_check_mode=True)
    module.exit_json(changed=False, **measure(module.params["path"]))


if __name__ == "__main__":
    main()
