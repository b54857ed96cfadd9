"""Fixtures for tests that reach the GPU host from this machine (the controller), as a client would."""

import os
import pathlib
import sys

import pytest
import testinfra

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
from host_http import pebble_root  # noqa: E402

GPU_HOST = "fullstack-bookworm"


@pytest.fixture(scope="session")
def gpu():
    return testinfra.get_host(f"ansible://{GPU_HOST}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


@pytest.fixture(scope="session")
def gpu_address(gpu):
    """The GPU host's address on the Docker network, which this machine reaches."""
    facts = gpu.ansible("setup", "filter=ansible_default_ipv4", check=False)
    return facts["ansible_facts"]["ansible_default_ipv4"]["address"]


@pytest.fixture(scope="session")
def pebble_ca(gpu, tmp_path_factory):
    """The ACME test server's root certificate (it signed nginx's certificate), as a file here."""
    path = tmp_path_factory.mktemp("pebble") / "root.pem"
    path.write_text(pebble_root(gpu))
    return path
