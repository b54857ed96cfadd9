"""The nvidia_container_toolkit role against the signed test-fixture repository, with Docker inside the test host."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
from images import busybox_image  # noqa: E402

testinfra_hosts = ["ansible://all"]

VERSION = "1.17.8-1"
PACKAGES = ["nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools", "libnvidia-container1"]


@pytest.fixture(scope="module")
def codename(host):
    return host.system_info.codename


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
    assert update.rc == 0
    assert "NO_PUBKEY" not in update.stdout and "not signed" not in update.stdout


def test_packages_installed_and_pinned(host):
    for name in PACKAGES:
        package = host.package(name)
        assert package.is_installed, name
        assert package.version == VERSION, name
    policy = host.check_output("apt-cache policy nvidia-container-toolkit")
    assert "1001" in policy
    assert "127.0.0.1:8089" in policy
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


def test_no_cdi_specification_without_a_gpu(host):
    assert not host.file("/etc/cdi/nvidia.yaml").exists


@pytest.fixture(scope="module")
def busybox(host):
    return busybox_image(host)


def test_docker_starts_containers_through_the_nvidia_runtime(host, busybox):
    host.run("rm -f /var/log/nvidia-container-runtime-fixture.log")
    out = host.check_output(f"docker run --rm --runtime nvidia {busybox} /busybox echo through-nvidia")
    assert out.strip() == "through-nvidia"
    # the fixture's nvidia-container-runtime recorded Docker's call before handing over to runc
    assert "create" in host.file("/var/log/nvidia-container-runtime-fixture.log").content_string
