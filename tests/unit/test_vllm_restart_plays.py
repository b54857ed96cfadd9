"""The order in which site.yml changes a serving vLLM, as ansible-playbook reads it (--list-tasks)."""

from __future__ import annotations

from test_site_playbook import listed_tasks

# The per-instance tasks are included for each instance (roles/vllm/tasks/instances.yml), so --list-tasks
# shows the includes: restart_check_instance.yml (config.json check, then Docker's plan) and
# instance.yml (service.yml: keep the serving container, start the new one).
CHECK = "gpufleet.vllm.vllm : Look at each instance"
DRAIN = "gpufleet.vllm.loadbalancer : Mark this host on its load balancers as {{ loadbalancer_backend_state }}"
KEEP = "gpufleet.vllm.vllm : Bring each vLLM instance to its settings"


def test_settings_are_checked_on_every_host_before_any_host_is_drained():
    tasks = listed_tasks("--tags", "vllm")
    assert tasks.index(CHECK) < tasks.index(DRAIN)
    assert "Group the hosts that restart behind a load balancer" in tasks[: tasks.index(DRAIN)]


def test_a_host_is_drained_before_its_serving_vllm_is_stopped():
    # (--list-tasks shows no always: section; putting it back is checked by the fleet scenario.)
    tasks = listed_tasks("--tags", "vllm")
    drain = tasks.index(DRAIN)
    assert drain < tasks.index("Wait for the requests in flight to finish", drain) < tasks.index(KEEP, drain)
