"""The docker role installs Docker's packages from Docker's repository (its signed test-fixture stand-in) and
leaves a running engine that runs containers with rotated logs."""

import json
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
from images import busybox_image  # noqa: E402

testinfra_hosts = ["ansible://all"]

PACKAGES = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-compose-plugin"]
NEWER = "29.0.0"  # in the fixture repository too; the pin must hold it back
KEYRING = "/etc/apt/keyrings/docker.asc"
LOG_OPTS = {"max-size": "1m", "max-file": "3", "compress": "true"}  # converge.yml's settings


@pytest.fixture(scope="module", name="pin")
def fixture_pin(host):
    return host.ansible.get_variables()["docker_version"]


def apt_update(host):
    return host.run("apt-get update 2>&1")


def repository_refused(apt_output):
    """apt's error or warning lines about the fixture repository (a signature it could not verify, on any apt version)."""
    return re.findall(r"^(?:Err|W|E):.*127\.0\.0\.1:8090.*$", apt_output, re.M)


def test_repository_signed_by_its_key(host):
    key = host.file(KEYRING)
    assert key.exists and key.mode == 0o644
    assert "BEGIN PGP PUBLIC KEY BLOCK" in key.content_string
    sources = host.file("/etc/apt/sources.list.d/docker.sources").content_string
    assert "URIs: http://127.0.0.1:8090/linux/debian" in sources
    assert f"Suites: {host.system_info.codename}" in sources
    assert "Components: stable" in sources
    assert f"Signed-By: {KEYRING}" in sources
    update = apt_update(host)
    assert update.rc == 0 and "127.0.0.1:8090" in update.stdout
    assert not repository_refused(update.stdout), update.stdout


def test_apt_trusts_the_repository_only_with_that_key(host):
    """With another key in the signed-by file, apt refuses the repository: the signature is really checked."""
    host.run_expect([0], f"cp -p {KEYRING} /root/docker.asc.verify")
    other = host.run(
        "export GNUPGHOME=$(mktemp -d) && gpg --batch --quiet --passphrase '' --quick-gen-key other@gpufleet.invalid "
        f"ed25519 sign 1d && gpg --batch --armor --export >{KEYRING}"
    )
    try:
        assert other.rc == 0, other.stderr
        refused = repository_refused(apt_update(host).stdout)
        assert refused and "signature" in " ".join(refused).lower(), refused
    finally:
        host.run(f"mv /root/docker.asc.verify {KEYRING}")
    update = apt_update(host)
    assert update.rc == 0 and not repository_refused(update.stdout), update.stdout


def test_dockers_packages_installed_and_the_distributions_removed(host):
    for name in PACKAGES:
        assert host.package(name).is_installed, name
    # docker-doc was installed by prepare: Docker's guide removes it (and docker.io, containerd, runc...)
    for name in ["docker.io", "docker-doc", "containerd", "runc"]:
        assert not host.package(name).is_installed, name
    # the role wrote the deb822 source itself: it never needed python3-debian (absent from the start)
    assert not host.package("python3-debian").is_installed


def test_engine_pinned_to_the_older_release(host, pin):
    for name in ["docker-ce", "docker-ce-cli"]:
        assert host.package(name).version.startswith(f"5:{pin}."), name
        assert f"5:{NEWER}-" in host.check_output(f"apt-cache madison {name}"), name
    assert f"Pin: version 5:{pin}*" in host.file("/etc/apt/preferences.d/docker").content_string
    upgrade = host.check_output("apt-get -s -o Debug::NoLocking=1 dist-upgrade")
    assert not [line for line in upgrade.splitlines() if line.startswith("Inst docker-ce")], upgrade
    # the engine answering is the one from those packages
    assert host.check_output("docker version --format '{{.Server.Version}}'").startswith(f"{pin}.")


def test_compose_v2_plugin(host):
    out = host.check_output("docker compose version")
    assert "v2." in out or "version 2." in out


def test_python_sdk_installed(host):
    assert host.package("python3-docker").is_installed


def test_service_running_and_enabled(host):
    for name in ["docker", "containerd"]:
        service = host.service(name)
        assert service.is_running, name
        assert service.is_enabled, name


def test_daemon_json_has_rotation_and_all_fragments(host):
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["log-driver"] == "json-file"
    assert config["log-opts"] == LOG_OPTS
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
    assert host_config["LogConfig"] == {"Type": "json-file", "Config": LOG_OPTS}
    assert host_config["ShmSize"] == 1024**3  # from the fragment another role added
    assert host.check_output("docker logs molecule-echo").strip() == "gpufleet-ok"
    host.run_expect([0], "docker rm -f molecule-echo")


def test_container_logs_rotate_and_compress(host, busybox_image):
    """About 5 MB of output with max-size 1m, max-file 3: the engine keeps three files, the rotated ones gzipped."""
    host.run("docker rm -f molecule-chatty")
    host.run_expect(
        [0],
        f"docker run -d --name molecule-chatty {busybox_image} /busybox sh -c "
        "'/busybox dd if=/dev/zero bs=1k count=4000 2>/dev/null | /busybox tr \"\\0\" x | /busybox fold -w 100'",
    )
    assert host.check_output("docker wait molecule-chatty").strip() == "0"
    log_path = host.check_output("docker inspect -f '{{.LogPath}}' molecule-chatty")
    for _attempt in range(20):  # the engine compresses a rotated file in the background
        files = sorted(host.check_output(f"ls {log_path}*").split())
        if files == [log_path, f"{log_path}.1.gz", f"{log_path}.2.gz"]:
            break
        time.sleep(0.5)
    assert files == [log_path, f"{log_path}.1.gz", f"{log_path}.2.gz"]
    assert host.file(log_path).size <= 1024 * 1024
    host.run_expect([0], "docker rm -f molecule-chatty")
