"""No secret that a scenario deploys shows up in what Ansible printed while deploying it.

A scenario opts in with `verifier: additional_files_or_dirs: [../../shared/test_secrets_in_ansible_log.py]`
and a `secrets` file (one string a line) beside its molecule.yml. The log is the ANSIBLE_LOG_PATH of the
scenario's provisioner (.config/molecule/config.yml): create, prepare, converge, idempotence and check.
Failures name line numbers only, never the secret.
"""

from __future__ import annotations

import os
import pathlib

SCENARIO = pathlib.Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
ANSIBLE_LOG = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ansible.log"


def test_no_deployed_secret_in_the_ansible_log():
    secrets = SCENARIO.joinpath("secrets").read_text().split()
    assert secrets, "%s/secrets lists no secret" % SCENARIO
    lines = ANSIBLE_LOG.read_text(errors="replace").splitlines()
    # An empty or foreign log would pass the search below: it must hold the scenario's playbook runs.
    recaps = sum("PLAY RECAP" in line for line in lines)
    assert recaps >= 2, "%s holds %d playbook runs, expected create, prepare, converge..." % (ANSIBLE_LOG, recaps)
    leaked = [number for number, line in enumerate(lines, 1) if any(secret in line for secret in secrets)]
    assert not leaked, "a deployed secret is in %s, lines %s" % (ANSIBLE_LOG, leaked)
