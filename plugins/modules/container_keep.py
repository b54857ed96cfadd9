#!/usr/bin/python
# Copyright: gpufleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: container_keep
short_description: Keep a serving container aside while its replacement starts, and put it back
version_added: 0.1.0
description:
  - Lets a role replace a container without losing the one that served before. O(state=kept) stops
    the container and renames it C(<name>-previous), so a new container can take the name (and,
    with host networking, the port). O(state=restored) removes the new container and starts the
    kept one again under its name, as it was (same id, image and settings).
    O(state=dropped) removes the kept one once the new container serves.
  - Uses the C(docker) command line of the host.
options:
  name:
    description: Name of the serving container.
    type: str
    required: true
  state:
    description: C(kept), C(restored) or C(dropped) (see above).
    type: str
    required: true
    choices: [kept, restored, dropped]
  stop_timeout:
    description: Seconds the container gets to stop before it is killed (O(state=kept)).
    type: int
    default: 30
author:
  - gpufleet maintainers (@gpufleet)
attributes:
  check_mode:
    support: full
    description: Reports what it would do and changes nothing.
"""

EXAMPLES = r"""
- name: Keep the serving vLLM container aside
  gpufleet.vllm.container_keep:
    name: vllm-server
    state: kept

- name: Put it back when the new one does not become ready
  gpufleet.vllm.container_keep:
    name: vllm-server
    state: restored
"""

RETURN = r"""
commands:
  description: The docker commands run (or, in check mode, that would run).
  returned: always
  type: list
  elements: list
"""

from ansible.module_utils.basic import AnsibleModule

SUFFIX = "-previous"


def plan(state, name, current_exists, previous_exists, stop_timeout=30):
    """The docker commands for STATE, or a message saying why it cannot be done."""
    previous = name + SUFFIX
    if state == "kept":
        if not current_exists:
            return None, "there is no container %s to keep" % name
        commands = [["docker", "rm", "-f", previous]] if previous_exists else []
        return commands + [
            ["docker", "stop", "-t", str(stop_timeout), name],
            ["docker", "rename", name, previous],
        ], None
    if state == "restored":
        if not previous_exists:
            return None, "there is no kept container %s to put back" % previous
        commands = [["docker", "rm", "-f", name]] if current_exists else []
        return commands + [["docker", "rename", previous, name], ["docker", "start", name]], None
    return ([["docker", "rm", "-f", previous]] if previous_exists else []), None


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "required": True, "choices": ["kept", "restored", "dropped"]},
            "stop_timeout": {"type": "int", "default": 30},
        },
        supports_check_mode=True,
    )
    name = module.params["name"]

    def exists(container):
        return module.run_command(["docker", "inspect", "--type", "container", container])[0] == 0

    commands, error = plan(module.params["state"], name, exists(name), exists(name + SUFFIX), module.params["stop_timeout"])
    if error:
        module.fail_json(msg=error)
    if not module.check_mode:
        for command in commands:
            rc, out, err = module.run_command(command)
            if rc != 0:
                module.fail_json(msg="%s failed: %s" % (" ".join(command), (err or out).strip()), commands=commands)
    module.exit_json(changed=bool(commands), commands=commands)


if __name__ == "__main__":
    main()
