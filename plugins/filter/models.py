# Copyright: gpufleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A model of the model store (issue #17) as the roles use it: its Hugging Face id, the revision, and its
folder in a Hugging Face cache."""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$")
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


def model_ref(entry):
    """ENTRY ("org/name", "org/name@revision" or {repo, revision}) as {repo, revision, folder}; folder is the
    model's directory under a cache's hub/ (models--org--name, as huggingface_hub names it)."""
    if isinstance(entry, dict):
        repo, revision = entry.get("repo", ""), entry.get("revision") or "main"
    else:
        repo, at, revision = str(entry).partition("@")
        revision = revision if at else "main"
    repo, revision = str(repo), str(revision)
    if not HUB_ID.match(repo) or not REVISION.match(revision) or ".." in revision:
        raise AnsibleFilterError(
            "model %r: use a Hugging Face id (org/name), optionally with @revision, or {repo: org/name, revision: ...}"
            % (entry,))
    return {"repo": repo, "revision": revision, "folder": "models--" + repo.replace("/", "--")}


def model_ref_problems(entries, variable):
    """One message per entry of ENTRIES (the list in VARIABLE) that model_ref refuses."""
    if not isinstance(entries, list):
        return ["%s must be a list of Hugging Face ids (org/name)" % variable]
    problems = []
    for entry in entries:
        try:
            model_ref(entry)
        except AnsibleFilterError as error:
            problems.append("%s: %s" % (variable, error))
    return problems


class FilterModule:
    def filters(self):
        return {"model_ref": model_ref, "model_ref_problems": model_ref_problems}
