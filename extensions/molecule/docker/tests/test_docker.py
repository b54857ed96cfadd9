"""The docker role leaves a running engine that runs containers with rotated logs."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
from images import busybox_image  # noqa: E402

testinfra_hosts = ["ansible://all"]


def test_engine_package_installed(host):
    assert host.package("docker.io").is_installed


def test_compose_v2_where_the_distribution_ships_it(host):
    codename = host.system_info.codename
    if codename == "bookworm":
        pytest.skip("Debian 12 ships only Compose v1; the role installs no Compose there")
    out = host.check_output("docker compose version")
    assert "v2." in out or "version 2." in out


def test_python_sdk_installed(host):
    assert host.package("python3-docker").is_installed


def test_service_running_and_enabled(host):
    service = host.service("docker")
    assert service.is_running
    assert service.is_enabled


def test_daemon_json_has_rotation_and_all_fragments(host):
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["log-driver"] == "json-file"
    assert config["log-opts"] == {"max-size": "100m", "max-file": "7", "compress": "true"}
    assert config["live-restore"] is True
    # the fragment another role added is merged, not overwriting the role's own keys
    assert config["default-shm-size"] == "1G"
    assert host.file("/etc/docker/daemon.json").mode == 0o644


def test_running_daemon_uses_the_configuration(host):
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert info["LoggingDriver"] == "json-file"
    assert info["LiveRestoreEnabled"] is True
    assert info["Driver"] == "overlay2"


def test_user_in_docker_group(host):
    assert "docker" in host.user("gpuops").groups


@pytest.fixture(scope="module", name="busybox_image")
def fixture_busybox_image(host):
    """An image made inside the test host (no registry here) from the static busybox."""
    return busybox_image(host)


def test_engine_runs_a_container_with_rotated_logs(host, busybox_image):
    host.run("docker rm -f molecule-echo")
    out = host.check_output(f"docker run --name molecule-echo {busybox_image} /busybox echo gpufleet-ok")
    assert out.strip() == "gpufleet-ok"
    host_config = json.loads(host.check_output("docker inspect -f '{{json .HostConfig}}' molecule-echo"))
    assert host_config["LogConfig"]["Type"] == "json-file"
    assert host_config["ShmSize"] == 1024**3  # from the fragment another role added
    assert host.check_output("docker logs molecule-echo").strip() == "gpufleet-ok"
    host.run_expect([0], "docker rm -f molecule-echo")
