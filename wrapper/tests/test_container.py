"""The container image: build from wrapper/Dockerfile, run non-root, health check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from .conftest import WRAPPER_DIR, free_port

BASE_IMAGE = os.environ.get("WRAPPER_TEST_BASE_IMAGE", "gpufleet-base:bookworm")
CA_BUNDLE = Path(os.environ.get("WRAPPER_TEST_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
TAG = "gpufleet/vllm-wrapper:test"


def _docker_ok() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI installed"
    probe = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"no Docker engine answers: {probe.stderr.strip()[:200]}"
    return None


pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    reason = _docker_ok()
    if reason:
        pytest.skip(reason)
    present = subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True)
    assert present.returncode == 0, (
        f"base image {BASE_IMAGE} is not in the local Docker engine and no registry is reachable: "
        "build it first (the repo's test harness does) or set WRAPPER_TEST_BASE_IMAGE"
    )
    context = tmp_path_factory.mktemp("ctx")
    for name in ("Dockerfile", "requirements.txt", ".dockerignore"):
        shutil.copy(WRAPPER_DIR / name, context / name)
    shutil.copytree(WRAPPER_DIR / "vllm_wrapper", context / "vllm_wrapper",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(WRAPPER_DIR / "ca-certificates", context / "ca-certificates")
    if CA_BUNDLE.is_file():  # TLS-intercepting proxies (this sandbox) need the host CAs
        shutil.copy(CA_BUNDLE, context / "ca-certificates" / "host-bundle.crt")
    build = subprocess.run(
        ["docker", "build", "-t", TAG, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", str(context)],
        capture_output=True, text=True, timeout=900,
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    return TAG


def _inspect(name: str) -> dict:
    out = subprocess.run(["docker", "inspect", name], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]


def test_image_runs_non_root_and_becomes_healthy(image: str) -> None:
    config = _inspect(image)["Config"]
    assert config["User"] not in ("", "0", "root", "0:0")
    assert config["Healthcheck"]["Test"]
    port = free_port()
    name = f"vllm-wrapper-test-{port}"
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8001",
         "-e", "VLLM_UPSTREAM_URL=http://127.0.0.1:9", "-e", "VLLM_WRAPPER_API_KEY=k",
         "--health-interval", "1s", "--health-start-period", "1s", image],
        check=True, capture_output=True, timeout=60,
    )
    try:
        deadline = time.monotonic() + 60
        status = ""
        while time.monotonic() < deadline:
            status = _inspect(name)["State"].get("Health", {}).get("Status", "")
            if status == "healthy":
                break
            time.sleep(1)
        assert status == "healthy"
        assert httpx.get(f"http://127.0.0.1:{port}/health").json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer k"})
        assert r.status_code == 503  # no vLLM behind it
        uid = subprocess.run(["docker", "exec", name, "id", "-u"], capture_output=True,
                             text=True, check=True).stdout.strip()
        assert uid != "0"
        t0 = time.monotonic()
        subprocess.run(["docker", "stop", "-t", "20", name], check=True, capture_output=True)
        assert time.monotonic() - t0 < 15, "SIGTERM was not handled (docker had to SIGKILL)"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_bad_configuration_stops_container(image: str) -> None:
    run = subprocess.run(
        ["docker", "run", "--rm", "-e", "VLLM_DEFAULT_MAX_TOKENS=many", image],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 2
    assert "VLLM_DEFAULT_MAX_TOKENS" in run.stderr
