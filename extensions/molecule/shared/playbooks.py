"""Run the collection's playbooks from the controller against a scenario's inventory, the way an
operator would, and make sure no deployed secret shows up in what they print."""

from __future__ import annotations

import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[3]


def run_playbook(name, secrets, *extra, timeout=1800):
    """ansible-playbook playbooks/NAME with EXTRA options; returns (exit code, stdout + stderr)."""
    result = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(ROOT / "playbooks" / name), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = result.stdout + result.stderr
    for secret in secrets:
        assert secret not in output, "%s printed a secret" % name
    return result.returncode, output
