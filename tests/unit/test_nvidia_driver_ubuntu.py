"""The nvidia_driver role on Ubuntu 22.04 and 24.04 (GA and HWE kernels), without Ubuntu's archive.

Ansible renders the role's package lists, holds, apt sources and unit overrides for recorded Ubuntu hosts
(tests/unit/fixtures/nvidia_driver: render.yml through the role's own vars, templates and first tasks);
they are compared with Ubuntu's package names (ubuntu-packages.yml, with the page of each).
"""

from __future__ import annotations

import configparser
import fnmatch
import json
import os
import pathlib
import re
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "unit" / "fixtures" / "nvidia_driver"
# host: (release, kernel flavour of its metapackages, does the running kernel have its module package)
HOSTS = {
    "ubuntu-jammy": ("jammy", "generic", True),
    "ubuntu-jammy-hwe": ("jammy", "generic-hwe-22.04", True),
    "ubuntu-noble": ("noble", "generic", False),
    "ubuntu-noble-hwe": ("noble", "generic-hwe-24.04", True),
}
VERSION = "580.95.05"


def ansible_playbook(*args):
    """ansible-playbook on the recorded hosts; their facts stay in memory (ansible.cfg would cache them)."""
    env = dict(os.environ, ANSIBLE_CACHE_PLUGIN="ansible.builtin.memory", ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        ["ansible-playbook", "-i", str(FIXTURES / "inventory.yml"), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("nvidia-driver-render")
    result = ansible_playbook(str(FIXTURES / "render.yml"), "-e", f"out_dir={out}", "-e", f"nvidia_driver_version={VERSION}")
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def ubuntu():
    return yaml.safe_load((FIXTURES / "ubuntu-packages.yml").read_text())


def lists(rendered, host):
    return json.loads((rendered / f"{host}.json").read_text())


def installed(host):
    return set(json.loads((FIXTURES / "facts" / f"{host}.json").read_text())["ansible_packages"])


@pytest.mark.parametrize("host", HOSTS)
def test_module_metapackage_of_the_kernel_flavour_hwe_included(rendered, ubuntu, host):
    release, flavour = HOSTS[host][:2]
    got = lists(rendered, host)
    assert got["kernel_flavour"] == flavour
    assert got["module_packages"] == [ubuntu["modules"][release][flavour]["name"]]
    # never the module package of the running kernel: Ubuntu builds them only for its current kernels
    assert not [name for name in got["module_packages"] + got["packages"] if re.search(r"-\d+\.\d+\.\d+-\d+-", name)]


@pytest.mark.parametrize("host", HOSTS)
def test_kernel_step_installs_the_flavours_kernel_metapackage(rendered, ubuntu, host):
    release, flavour = HOSTS[host][:2]
    got = lists(rendered, host)
    assert got["kernel_packages"] == [f"linux-image-{flavour}"]
    assert got["kernel_packages"][0] in ubuntu["kernels"][release][flavour]
    assert sorted(got["kernel_metapackages"]) == sorted(ubuntu["kernels"][release][flavour])


@pytest.mark.parametrize("host", HOSTS)
def test_a_running_kernel_without_its_module_package_needs_the_reboot(rendered, host):
    got = lists(rendered, host)
    assert got["running_kernel_has_module"] is HOSTS[host][2]
    kernel = json.loads((FIXTURES / "facts" / f"{host}.json").read_text())["ansible_kernel"]
    reasons = got["reboot_reason"].split("; ")
    assert (f"the running kernel {kernel} has no NVIDIA module" in reasons) is not HOSTS[host][2]
    assert f"loaded NVIDIA kernel module: none, installed driver: {VERSION}" in reasons


@pytest.mark.parametrize("host", HOSTS)
def test_driver_packages_are_ubuntus_and_the_full_driver_has_no_dkms(rendered, ubuntu, host):
    got = lists(rendered, host)
    full = json.loads((rendered / f"{host}.full.json").read_text())
    assert got["packages"] == ["nvidia-headless-no-dkms-580-server-open", "nvidia-utils-580-server"]
    assert set(full) <= set(ubuntu["driver"]["packages"])
    assert {"libnvidia-gl-580-server", "xserver-xorg-video-nvidia-580-server"} <= set(full)
    assert not set(full) & set(ubuntu["driver"]["dkms"])
    assert got["installed_driver"] == VERSION


@pytest.mark.parametrize("host", HOSTS)
def test_fabric_manager_packages_from_multiverse(rendered, ubuntu, host):
    got = lists(rendered, host)
    assert got["install_fabricmanager"] is True
    assert got["fabricmanager_packages"] == ["nvidia-fabricmanager-580", "libnvidia-nscq-580"]
    assert set(got["fabricmanager_packages"]) <= set(ubuntu["fabricmanager"])
    assert ubuntu["fabricmanager"]["component"] in ["multiverse"]


@pytest.mark.parametrize("host", HOSTS)
def test_every_package_of_the_stack_is_held_with_the_kernel_metapackages(rendered, host):
    release, flavour = HOSTS[host][:2]
    got = set(lists(rendered, host)["held_packages"])
    packages = installed(host)
    stack = {name for name in packages if "nvidia" in name}
    assert stack <= got
    assert {f"linux-{flavour}", f"linux-image-{flavour}", f"linux-headers-{flavour}"} <= got
    # the versioned kernel images, and what is not the driver's, stay free
    assert got - stack == {f"linux-{flavour}", f"linux-image-{flavour}", f"linux-headers-{flavour}"}


def unattended_upgrades_blacklist(path):
    return re.findall(r'^\s*"([^"]+)";', path.read_text(), re.MULTILINE)


@pytest.mark.parametrize("host", HOSTS)
def test_unattended_upgrades_blocks_the_stack_and_its_kernel_together(rendered, host):
    flavour = HOSTS[host][1]
    entries = unattended_upgrades_blacklist(rendered / f"{host}.unattended-upgrades")
    assert entries, "no Package-Blacklist entries rendered"

    # unattended-upgrades matches each entry as a regular expression at the start of the package name
    def blocked(name):
        return any(re.match(entry, name) for entry in entries)

    packages = installed(host)
    for name in sorted(name for name in packages if "nvidia" in name):
        assert blocked(name), name
    for name in (f"linux-{flavour}", f"linux-image-{flavour}", f"linux-headers-{flavour}"):
        assert blocked(name), name
    for name in ("openssh-server", "unattended-upgrades", "linux-firmware", "linux-image-6.8.0-90-generic",
                 "linux-generic-hwe-24.04-edge", "linux-libc-dev"):
        assert not blocked(name), name


@pytest.mark.parametrize("host", HOSTS)
def test_pin_survives_a_rebuild_of_the_same_driver(rendered, host):
    text = (rendered / f"{host}.apt-preferences").read_text()
    pin = re.search(r"^Pin: version (\S+)$", text, re.MULTILINE).group(1)
    release = HOSTS[host][0]
    suffix = {"jammy": "22.04", "noble": "24.04"}[release]
    # apt matches a version pin as a glob
    assert fnmatch.fnmatchcase(f"{VERSION}-0ubuntu0.{suffix}.2", pin)
    assert fnmatch.fnmatchcase(f"{VERSION}-0ubuntu0.{suffix}.3", pin)  # the rebuild that replaces it
    assert not fnmatch.fnmatchcase(f"580.105.08-0ubuntu0.{suffix}.1", pin)
    assert not fnmatch.fnmatchcase(f"{VERSION}1-0ubuntu1", pin)
    assert re.search(r"^Pin-Priority: 1001$", text, re.MULTILINE)


@pytest.mark.parametrize("host", HOSTS)
def test_persistenced_dropin_turns_persistence_mode_on_and_starts_at_boot(rendered, host):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    # systemd allows a key twice (the empty ExecStart= resets the vendor unit's); configparser does not
    text = (rendered / f"{host}.persistenced-dropin.conf").read_text()
    exec_lines = re.findall(r"^ExecStart=(.*)$", text, re.MULTILINE)
    assert exec_lines[0] == ""
    assert exec_lines[1].split() == [
        "/usr/bin/nvidia-persistenced", "--user", "nvidia-persistenced", "--persistence-mode", "--verbose"]
    unit.read_string(re.sub(r"^ExecStart=.*\n", "", text, flags=re.MULTILINE))
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("host", HOSTS)
def test_restricted_and_multiverse_added_only_where_missing(rendered, host):
    got = lists(rendered, host)
    release = HOSTS[host][0]
    if host != "ubuntu-noble":
        assert got["missing_components"] == []
        return
    assert got["missing_components"] == ["restricted", "multiverse"]
    sources = (rendered / f"{host}.ubuntu-components.sources").read_text()
    stanzas = [dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith("#"))
               for block in sources.split("\n\n")]
    assert [s["Suites"] for s in stanzas] == [f"{release} {release}-updates", f"{release}-security"]
    assert {s["Components"] for s in stanzas} == {"restricted multiverse"}
    assert {s["URIs"] for s in stanzas} == {"http://archive.ubuntu.com/ubuntu", "http://security.ubuntu.com/ubuntu"}


@pytest.mark.parametrize("version", ["580.95.05-0ubuntu0.24.04.2", "570.172.08", "580.95.05.1", "latest"])
def test_a_version_that_a_rebuild_would_break_or_of_another_branch_is_refused(tmp_path, version):
    result = ansible_playbook(str(FIXTURES / "render.yml"), "-e", f"out_dir={tmp_path}", "-e",
                              f"nvidia_driver_version={version}", "--limit", "ubuntu-noble")
    assert result.returncode != 0
    assert "Check nvidia_driver_version" in result.stdout
    assert f'nvidia_driver_version is "{version}"' in result.stdout


def test_tasks_run_kernel_module_reboot_fabric_manager_persistenced(tmp_path):
    result = ansible_playbook(str(FIXTURES / "order.yml"), "--list-tasks", "--limit", "ubuntu-noble")
    assert result.returncode == 0, result.stdout + result.stderr
    tasks = [line.split("\t")[0].strip() for line in result.stdout.splitlines() if "nvidia_driver : " in line]
    order = [
        "Install a kernel the distribution has NVIDIA modules for",
        "Install the NVIDIA kernel module",
        "Reboot to load the installed driver",
        "Apply a pending initramfs rebuild and reboot now",
        "Check that the reboot loaded the installed driver",
        "Enable Fabric Manager, and start it once the installed driver is loaded",
        "Enable nvidia-persistenced, and start it once the installed driver is loaded",
        "Read the driver version from nvidia-smi",
    ]
    positions = [tasks.index("gpufleet.vllm.nvidia_driver : " + name) for name in order]
    assert positions == sorted(positions), list(zip(order, positions))
