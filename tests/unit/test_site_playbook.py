"""site.yml's plays and tags as ansible-playbook reads them (--list-tasks: no host is contacted)."""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def listed_tasks(*options):
    result = subprocess.run(
        ["ansible-playbook", "site.yml", "-i", "inventories/prod", "--list-tasks", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # One line per task: "      NAME\tTAGS: [...]".
    return [re.sub(r"\tTAGS: .*$", "", line).strip() for line in result.stdout.splitlines() if "\tTAGS: " in line]


@pytest.mark.parametrize(
    ("tag", "include"),
    [("nvidia_driver", "Install the NVIDIA driver"), ("nvidia_container_toolkit", "Install the NVIDIA container toolkit")],
)
def test_an_nvidia_role_tag_also_runs_the_gpu_detection(tag, include):
    # The include is skipped on hosts without a detected GPU, so the detection must run under the tag too.
    tasks = listed_tasks("--tags", tag)
    assert "Find NVIDIA GPUs" in tasks
    assert include in tasks


def test_the_fleet_report_runs_whatever_tags_are_selected():
    assert "Name the hosts that did not finish" in listed_tasks("--tags", "nginx")
