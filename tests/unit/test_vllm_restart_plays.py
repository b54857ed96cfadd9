"""The order in which site.yml changes a serving vLLM, as ansible-playbook reads it (--list-tasks)."""

from __future__ import annotations

from test_site_playbook import listed_tasks

CHECK = "gpufleet.vllm.vllm : Check the engine settings against the model's config.json"
DRAIN = "gpufleet.vllm.loadbalancer : Mark this host on its load balancers as {{ loadbalancer_backend_state }}"
KEEP = "gpufleet.vllm.vllm : Stop the serving vLLM container and keep it for a rollback (<name>-previous)"
PLAN = "gpufleet.vllm.vllm : Look at the vLLM container serving now"


def test_settings_are_checked_on_every_host_before_any_host_is_drained():
    tasks = listed_tasks("--tags", "vllm")
    assert tasks.index(CHECK) < tasks.index(PLAN) < tasks.index(DRAIN)
    assert "Group the hosts that restart behind a load balancer" in tasks[: tasks.index(DRAIN)]


def test_a_host_is_drained_before_its_serving_vllm_is_stopped():
    # (--list-tasks shows no always: section; putting it back is checked by the fleet scenario.)
    tasks = listed_tasks("--tags", "vllm")
    drain = tasks.index(DRAIN)
    assert drain < tasks.index("Wait for the requests in flight to finish", drain) < tasks.index(KEEP, drain)
