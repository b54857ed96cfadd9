#!/usr/bin/python
# Copyright: gpufleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: source_archive
short_description: Pack files into a tar archive whose bytes depend only on their content
version_added: 0.1.0
description:
  - Writes an uncompressed tar of O(items) (files or directories under O(src)) to O(dest), with names
    sorted and times, owners and groups zeroed, leaving out C(__pycache__) and C(*.pyc).
  - The same content always gives the same bytes, so copying the archive to many hosts reports a change
    only when the content changed, and one file travels instead of one transfer per source file.
  - O(dest) is rewritten only when its bytes would differ.
options:
  src:
    description: Directory the items are relative to.
    type: path
    required: true
  items:
    description: Files or directories under O(src) to pack.
    type: list
    elements: str
    required: true
  dest:
    description: Archive to write; missing parent directories are created.
    type: path
    required: true
author:
  - gpufleet maintainers (@gpufleet)
attributes:
  check_mode:
    support: full
    description: Reports whether the archive would change without writing it.
"""

EXAMPLES = r"""
- name: Pack the wrapper source on the controller
  gpufleet.vllm.source_archive:
    src: "{{ playbook_dir }}/../wrapper"
    items: [Dockerfile, requirements.txt, vllm_wrapper]
    dest: /tmp/wrapper-source.tar
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
dest:
  description: The archive.
  returned: always
  type: str
sha256:
  description: SHA-256 of the archive's bytes.
  returned: always
  type: str
files:
  description: Number of files packed.
  returned: always
  type: int
"""

import hashlib
import io
import os
import tarfile

from ansible.module_utils.basic import AnsibleModule

SKIPPED_DIRS = {"__pycache__"}
SKIPPED_SUFFIXES = (".pyc", ".pyo")


def walk(src, item):
    """Relative paths of ITEM (a file, or a directory and everything in it), sorted."""
    top = os.path.join(src, item)
    if not os.path.exists(top):
        raise FileNotFoundError("%s does not exist" % top)
    if not os.path.isdir(top):
        return [item]
    paths = [item]
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        relative_root = os.path.relpath(root, src)
        paths.extend(os.path.join(relative_root, d) for d in dirs)
        paths.extend(os.path.join(relative_root, f) for f in sorted(files) if not f.endswith(SKIPPED_SUFFIXES))
    return sorted(paths)


def pack(src, items):
    """The archive's bytes and the number of files in it."""
    buffer = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for item in sorted(set(items)):
            for relative in walk(src, item):
                info = archive.gettarinfo(os.path.join(src, relative), arcname=relative)
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
                if info.isfile():
                    count += 1
                    with open(os.path.join(src, relative), "rb") as content:
                        archive.addfile(info, content)
                else:
                    archive.addfile(info)
    return buffer.getvalue(), count


def main():
    module = AnsibleModule(
        argument_spec={
            "src": {"type": "path", "required": True},
            "items": {"type": "list", "elements": "str", "required": True},
            "dest": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    src, dest = module.params["src"], module.params["dest"]
    try:
        data, count = pack(src, module.params["items"])
    except (OSError, ValueError) as error:
        module.fail_json(msg="cannot pack %s: %s" % (src, error))
    current = None
    if os.path.isfile(dest):
        with open(dest, "rb") as existing:
            current = existing.read()
    changed = current != data
    if changed and not module.check_mode:
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        partial = dest + ".partial"
        with open(partial, "wb") as out:
            out.write(data)
        os.replace(partial, dest)
    module.exit_json(changed=changed, dest=dest, sha256=hashlib.sha256(data).hexdigest(), files=count)


if __name__ == "__main__":
    main()
