"""The docker commands that keep a serving container aside, put it back or drop it."""

from __future__ import annotations

import pytest


def test_keeping_stops_the_serving_container_and_frees_its_name(container_keep):
    commands, error = container_keep.plan("kept", "vllm-server", True, False)
    assert error is None
    assert commands == [["docker", "stop", "-t", "30", "vllm-server"], ["docker", "rename", "vllm-server", "vllm-server-previous"]]


def test_a_stale_kept_container_is_replaced_by_the_one_serving_now(container_keep):
    commands, _error = container_keep.plan("kept", "vllm-server", True, True)
    assert commands[0] == ["docker", "rm", "-f", "vllm-server-previous"]
    assert commands[-1] == ["docker", "rename", "vllm-server", "vllm-server-previous"]


def test_putting_back_removes_the_new_container_and_starts_the_kept_one_under_its_name(container_keep):
    commands, error = container_keep.plan("restored", "vllm-server", True, True)
    assert error is None
    assert commands == [
        ["docker", "rm", "-f", "vllm-server"],
        ["docker", "rename", "vllm-server-previous", "vllm-server"],
        ["docker", "start", "vllm-server"],
    ]


@pytest.mark.parametrize(
    "state, current, previous, error",
    [
        ("kept", False, False, "there is no container vllm-server to keep"),
        ("restored", True, False, "there is no kept container vllm-server-previous to put back"),
    ],
)
def test_nothing_to_keep_or_put_back_is_an_error(container_keep, state, current, previous, error):
    assert container_keep.plan(state, "vllm-server", current, previous) == (None, error)


@pytest.mark.parametrize("previous, commands", [(True, [["docker", "rm", "-f", "vllm-server-previous"]]), (False, [])])
def test_dropping_removes_only_the_kept_container(container_keep, previous, commands):
    assert container_keep.plan("dropped", "vllm-server", True, previous) == (commands, None)
