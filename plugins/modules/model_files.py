#!/usr/bin/python
# Copyright: gpufleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: model_files
short_description: Check a model in a Hugging Face cache against the hub's checksums
version_added: 0.1.0
description:
  - Reads one model's folder of a Hugging Face hub cache (C(<cache>/hub/models--ORG--NAME)), as
    C(huggingface_hub) writes it and the model store copies it to the hosts.
  - The files of a revision are the entries of C(trees/<commit>.json), the hub's listing that
    C(huggingface_hub) saved when it downloaded them. Each file is hashed and compared with the hub's
    checksum there, the sha256 for LFS files (the weights) and the git blob id for the others.
  - With O(remove_bad), a file whose content differs is removed (with its blob), so that the next copy
    brings it again.
options:
  path:
    description: The model's folder in the cache, C(.../hub/models--ORG--NAME).
    type: path
    required: true
  revision:
    description: Branch, tag or commit whose files are checked (its commit is in C(refs/<revision>)).
    type: str
    default: main
  remove_bad:
    description: Remove the files whose content differs from the hub's checksum.
    type: bool
    default: false
author:
  - gpufleet maintainers (@gpufleet)
attributes:
  check_mode:
    support: full
    description: Hashes in check mode too; reports what it would remove without removing it.
"""

EXAMPLES = r"""
- name: Check the copy of a model
  gpufleet.vllm.model_files:
    path: /data/vllm-models/hub/models--meta-llama--Llama-3.1-8B-Instruct
    remove_bad: true
  register: model

- name: Say what is wrong with it
  ansible.builtin.debug:
    msg: "{{ model.bad | length }} damaged and {{ model.missing | length }} missing files"
"""

RETURN = r"""
present:
  description: Whether the revision's listing (C(refs/<revision>) and C(trees/<commit>.json)) is there.
  returned: always
  type: bool
commit:
  description: The revision's commit, '' when not present.
  returned: always
  type: str
files:
  description: Number of files of the revision.
  returned: always
  type: int
size:
  description: Their total size in bytes.
  returned: always
  type: int
bad:
  description: Files whose content differs from the hub's checksum (removed with O(remove_bad)).
  returned: always
  type: list
  elements: str
missing:
  description: Files of the listing that are not in the snapshot.
  returned: always
  type: list
  elements: str
"""

import hashlib
import json
import os

from ansible.module_utils.basic import AnsibleModule

CHUNK = 8 << 20


def file_hash(path, lfs):
    """The file's sha256 (LFS files) or git blob id (sha1 of "blob <size>\\0" and the content)."""
    digest = hashlib.sha256() if lfs else hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check(path, revision):
    """(commit, listing, bad, missing): the revision's files checked against their checksums."""
    try:
        with open(os.path.join(path, "refs", revision)) as ref:
            commit = ref.read().strip()
    except FileNotFoundError:
        commit = revision if os.path.isdir(os.path.join(path, "snapshots", revision)) else ""
    try:
        with open(os.path.join(path, "trees", commit + ".json")) as tree:
            listing = json.load(tree)["files"]
    except (FileNotFoundError, ValueError, KeyError):
        return "", {}, [], []
    snapshot = os.path.join(path, "snapshots", commit)
    bad, missing = [], []
    for name, entry in sorted(listing.items()):
        target = os.path.join(snapshot, name)
        if not os.path.isfile(target):
            missing.append(name)
            continue
        lfs = entry.get("lfs_sha256")
        if os.path.getsize(target) != entry["size"] or file_hash(target, bool(lfs)) != (lfs or entry["blob_id"]):
            bad.append(name)
    return commit, listing, bad, missing


def remove(path, commit, name):
    """Remove the snapshot's NAME and the blob it links to."""
    link = os.path.join(path, "snapshots", commit, name)
    blob = os.path.realpath(link)
    for victim in (link, blob):
        if os.path.lexists(victim):
            os.unlink(victim)


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "revision": {"type": "str", "default": "main"},
            "remove_bad": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    path = module.params["path"]
    commit, listing, bad, missing = check(path, module.params["revision"])
    changed = bool(bad) and module.params["remove_bad"]
    if changed and not module.check_mode:
        for name in bad:
            remove(path, commit, name)
    module.exit_json(changed=changed, present=bool(listing), commit=commit, files=len(listing),
                     size=sum(entry["size"] for entry in listing.values()), bad=bad, missing=missing)


if __name__ == "__main__":
    main()
