"""Load the collection's plugins straight from the checkout (no install needed)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(relative):
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def gpu_facts():
    return _load("plugins/modules/gpu_facts.py")


@pytest.fixture(scope="session")
def disk_space():
    return _load("plugins/modules/disk_space.py")


@pytest.fixture(scope="session")
def vllm_filters():
    return _load("plugins/filter/vllm.py")


@pytest.fixture(scope="session")
def vllm_status():
    return _load("plugins/modules/vllm_status.py")


@pytest.fixture(scope="session")
def container_keep():
    return _load("plugins/modules/container_keep.py")


@pytest.fixture(scope="session")
def fleet_filters():
    return _load("plugins/filter/fleet.py")


@pytest.fixture(scope="session")
def source_archive():
    return _load("plugins/modules/source_archive.py")


@pytest.fixture(scope="session")
def instance_filters():
    return _load("plugins/filter/instances.py")


@pytest.fixture(scope="session")
def gpu_memory():
    return _load("plugins/modules/gpu_memory.py")


@pytest.fixture(scope="session")
def model_files():
    return _load("plugins/modules/model_files.py")


@pytest.fixture(scope="session")
def model_filters():
    return _load("plugins/filter/models.py")


@pytest.fixture(scope="session")
def debian_nginx():
    """This machine's nginx and set-misc module, from Debian's archive (installed when absent)."""
    packages = ["nginx", "libnginx-mod-http-set-misc"]
    installed = subprocess.run(["dpkg-query", "-W", "-f=${Status}\\n", *packages], capture_output=True, text=True,
                               check=False).stdout.count("ok installed")
    if shutil.which("nginx") is None or installed < len(packages):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-qq", *packages]
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
            subprocess.run(install, env=env, check=True, capture_output=True)
    return shutil.which("nginx")
