#!/usr/bin/python
# Copyright: gpufleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vllm_status
short_description: Tell whether a vLLM server container is ready, still starting or has failed
version_added: 0.1.0
description:
  - Looks at the container (C(docker inspect)) and at vLLM's C(/health) endpoint once.
  - Meant for an C(until) loop that stops as soon as the server is ready or the container has
    exited or restarted, instead of waiting out the whole start timeout.
options:
  container:
    description: Container name.
    type: str
    required: true
  url:
    description: Health URL of the server.
    type: str
    required: true
  timeout:
    description: Seconds to wait for the health answer.
    type: int
    default: 5
author:
  - gpufleet maintainers (@gpufleet)
attributes:
  check_mode:
    support: full
    description: Only reads.
"""

EXAMPLES = r"""
- name: Wait for vLLM
  gpufleet.vllm.vllm_status:
    container: vllm-server
    url: http://127.0.0.1:8000/health
  register: vllm
  until: vllm.status != 'starting'
  retries: 180
  delay: 10
"""

RETURN = r"""
status:
  description: C(ready) (health answers 200), C(starting), or C(failed) (container missing, exited or restarted).
  returned: always
  type: str
container_state:
  description: Docker's state of the container (running, restarting, exited, missing).
  returned: always
  type: str
restart_count:
  description: How often Docker restarted the container.
  returned: always
  type: int
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url


def health_ok(url, timeout):
    try:
        response = open_url(url, timeout=timeout, validate_certs=False)
        return response.getcode() == 200
    except Exception:  # pylint: disable=broad-exception-caught
        # Refused, reset, timed out or an HTTP error status: not ready yet.
        return False


def classify(state, restart_count, healthy):
    if healthy and state == "running":
        return "ready"
    if state in ("missing", "exited", "dead") or restart_count > 0 or state == "restarting":
        return "failed"
    return "starting"


def main():
    module = AnsibleModule(
        argument_spec={
            "container": {"type": "str", "required": True},
            "url": {"type": "str", "required": True},
            "timeout": {"type": "int", "default": 5},
        },
        supports_check_mode=True,
    )
    rc, out, err = module.run_command(["docker", "inspect", "--format", "{{json .State}} {{.RestartCount}}", module.params["container"]])
    if rc != 0:
        state, restart_count = "missing", 0
    else:
        state_json, dummy, count = out.strip().rpartition(" ")
        state = json.loads(state_json).get("Status", "unknown")
        restart_count = int(count or 0)
    healthy = state == "running" and health_ok(module.params["url"], module.params["timeout"])
    module.exit_json(
        changed=False,
        status=classify(state, restart_count, healthy),
        container_state=state,
        restart_count=restart_count,
    )


if __name__ == "__main__":
    main()
