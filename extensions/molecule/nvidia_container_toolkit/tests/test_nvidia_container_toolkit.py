"""The nvidia_container_toolkit role against the signed test-fixture repository, with Docker inside the test host.

nct-trixie is the simulated GPU host (two H100 on its PCI bus, a loaded driver 550.163.01); nct-bookworm has no GPU.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
from images import busybox_image  # noqa: E402

testinfra_hosts = ["ansible://all"]

VERSION = "1.17.8-1"
NEWER = "1.18.0-1"  # also in the fixture repository; the pin must hold it back
DRIVER = "550.163.01"
PACKAGES = ["nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools", "libnvidia-container1"]
CDI_SPEC = "/etc/cdi/nvidia.yaml"
DRIVER_VERSION_FILE = "/opt/simulated-gpu/proc-driver/nvidia/version"  # shows as /proc/driver/nvidia/version
HOOK_LOG = "/var/log/nvidia-container-runtime-hook-fixture.log"


@pytest.fixture(scope="module")
def codename(host):
    return host.system_info.codename


@pytest.fixture(scope="module")
def gpu_host(host):
    return "simulated_gpu" in host.ansible.get_variables()["group_names"]


def test_repository_signed_by_its_key(host):
    key = host.file("/etc/apt/keyrings/nvidia-container-toolkit.asc")
    assert key.exists and key.mode == 0o644
    assert "BEGIN PGP PUBLIC KEY BLOCK" in key.content_string
    sources = host.file("/etc/apt/sources.list.d/nvidia-container-toolkit.sources").content_string
    assert "URIs: http://127.0.0.1:8089/stable/deb/$(ARCH)" in sources
    assert "Suites: /" in sources
    assert "Signed-By: /etc/apt/keyrings/nvidia-container-toolkit.asc" in sources
    # apt verifies InRelease against that key: an update must not warn about signatures
    update = host.run("apt-get update 2>&1")
    assert update.rc == 0 and "127.0.0.1:8089" in update.stdout
    assert not re.findall(r"^(?:Err|W|E):.*127\.0\.0\.1:8089", update.stdout, re.M), update.stdout


def test_packages_installed_at_the_pinned_older_version(host):
    for name in PACKAGES:
        package = host.package(name)
        assert package.is_installed, name
        assert package.version == VERSION, name
        # the repository offers the newer release, and the pin keeps apt from choosing it
        assert NEWER in host.check_output(f"apt-cache madison {name}"), name
        policy = host.check_output(f"apt-cache policy {name}")
        assert f"Candidate: {VERSION}" in policy, name
        assert "1001" in policy and "127.0.0.1:8089" in policy
    upgrade = host.check_output("apt-get -s -o Debug::NoLocking=1 dist-upgrade")
    assert not [line for line in upgrade.splitlines() if line.startswith("Inst ") and "nvidia" in line], upgrade
    assert "gpufleet test fixture" in host.check_output("nvidia-ctk --version")


def test_daemon_json_has_the_runtime_and_keeps_the_docker_roles_settings(host, codename):
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["runtimes"]["nvidia"] == {"path": "nvidia-container-runtime", "runtimeArgs": []}
    assert config["log-driver"] == "json-file"
    assert config["log-opts"]["max-size"] == "100m"
    assert config["live-restore"] is True
    if codename == "bookworm":
        assert config["exec-opts"] == ["native.cgroupdriver=cgroupfs"]
        assert "default-runtime" not in config
    else:
        assert "exec-opts" not in config
        assert config["default-runtime"] == "nvidia"


def test_daemon_reload_fix(host, codename):
    rule = host.file("/etc/udev/rules.d/71-nvidia-dev-char.rules")
    if codename == "bookworm":
        assert not rule.exists
    else:
        assert "nvidia-ctk system create-dev-char-symlinks --create-all" in rule.content_string


def test_docker_running_with_the_configuration(host, codename):
    assert host.service("docker").is_running
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert "nvidia" in info["Runtimes"]
    # Docker started with exec-opts native.cgroupdriver=cgroupfs on Debian 12 (it refuses bad options). The
    # test machine has cgroup v1, where cgroupfs is Docker's default anyway, so the driver it reports here
    # does not show the option's effect; on cgroup v2 hosts it is what switches Docker away from systemd.
    assert info["CgroupDriver"] == "cgroupfs"
    assert info["DefaultRuntime"] == ("runc" if codename == "bookworm" else "nvidia")


def test_cdi_specification_only_on_the_gpu_host(host, gpu_host):
    spec = host.file(CDI_SPEC)
    if not gpu_host:
        assert not spec.exists
        return
    assert spec.exists and spec.mode == 0o644  # the fixture's nvidia-ctk writes it 0600; the role opens it up
    content = spec.content_string
    assert f"libcuda.so.{DRIVER}" in content
    assert re.findall(r'- name: "?(\w+)"?', content) == ["0", "1", "all"]  # both simulated H100


@pytest.fixture(scope="module")
def busybox(host):
    return busybox_image(host)


def test_docker_starts_containers_through_the_nvidia_runtime(host, busybox):
    host.run("rm -f /var/log/nvidia-container-runtime-fixture.log")
    out = host.check_output(f"docker run --rm --runtime nvidia {busybox} /busybox echo through-nvidia")
    assert out.strip() == "through-nvidia"
    # the fixture's nvidia-container-runtime recorded Docker's call before handing over to runc
    assert "create" in host.file("/var/log/nvidia-container-runtime-fixture.log").content_string


def test_gpu_request_goes_through_dockerds_nvidia_driver(host, busybox, gpu_host):
    """docker run --gpus (device_requests, driver nvidia): dockerd finds nvidia-container-runtime-hook and runs it."""
    host.run(f"rm -f {HOOK_LOG}")
    run = host.run(f"docker run --rm --gpus all {busybox} /busybox echo with-gpus")
    if gpu_host:
        assert run.rc == 0, run.stderr
        assert run.stdout.strip() == "with-gpus"
        assert re.search(r"^prestart \w+ NVIDIA_VISIBLE_DEVICES=all ", host.file(HOOK_LOG).content_string, re.M)
    else:
        # as on a real host without a loaded driver: the hook refuses, so the container does not start
        assert run.rc != 0
        assert "driver not loaded" in run.stderr


def test_cdi_specification_regenerated_after_a_driver_upgrade(host, gpu_host):
    """The spec names the driver's library files: a new loaded driver makes the next run regenerate it (and only it)."""
    if not gpu_host:
        pytest.skip("only the simulated GPU host has a driver to upgrade")
    upgraded = "550.163.02"
    host.run_expect([0], f"sed -i 's/{DRIVER}/{upgraded}/' {DRIVER_VERSION_FILE}")
    try:
        assert upgraded in host.check_output("cat /proc/driver/nvidia/version")
        hostname = host.ansible.get_variables()["inventory_hostname"]
        converge = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml"
        result = subprocess.run(
            ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--limit", hostname, str(converge)],
            capture_output=True, text=True, timeout=600, check=False,
        )
        assert result.returncode == 0, result.stdout[-3000:]
        task = re.search(r"TASK \[[^\]]*Generate the CDI specification[^\]]*\].*?\n(changed|ok|skipping): \[", result.stdout, re.S)
        assert task and task.group(1) == "changed", result.stdout[-3000:]
        assert re.search(rf"{hostname}\s*:\s*ok=\d+\s+changed=1\s", result.stdout), result.stdout[-3000:]
        content = host.file(CDI_SPEC).content_string
        assert f"libcuda.so.{upgraded}" in content and DRIVER not in content
    finally:
        host.run(f"sed -i 's/{upgraded}/{DRIVER}/' {DRIVER_VERSION_FILE}")
