"""The test host's nginx as a client on the network sees it: requests go from this machine (the
controller) to the host's address, with the server's name as Host header and TLS server name and the
certificate verified against the CA of the host's TLS mode. The hosts get no client tools: only a
request that must come from the host itself (loopback-only /metrics, pebble's loopback listener)
runs there, with its python3 (shared/host_http.py)."""

import json
import pathlib
import sys
import time
from email.message import Message
from typing import NamedTuple
from urllib.parse import urlsplit

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "extensions" / "molecule" / "shared"))
sys.path.insert(0, str(ROOT / "playbooks" / "files"))
from host_http import pebble_root  # noqa: E402
from http_request import connect  # noqa: E402

NAME = "gpu01.fleet.test"
# The CA each TLS mode's certificate verifies against, on the test host.
CA_ON_HOST = {
    "acme": "/tmp/pebble-root.pem",
    "selfsigned": f"/etc/nginx/tls/{NAME}.crt",
    "provided": "/etc/fixture-internal-ca/ca.pem",
}
# A little slower than the per-address rate (10 r/s), so ordinary requests never meet the limit.
PACE = 0.11
# The longest drain of a full bucket: per address burst 20 at 10 r/s, per key burst 5 at 2 r/s.
DRAIN = 3.0


class Answer(NamedTuple):
    status: int
    headers: Message  # names match in any case
    body: str

    def json(self):
        return json.loads(self.body)


class Nginx:
    """One test host's nginx, reached from here (one client address: this machine's on the bridge)."""

    def __init__(self, address, ca_file):
        self.address, self.ca_file = address, ca_file
        self._last = self._filled = 0.0

    def connection(self, scheme="https", timeout=20):
        return connect(urlsplit(f"{scheme}://{NAME}/"), self.address, self.ca_file, timeout)

    @staticmethod
    def send(conn, path, method=None, body=None, headers=None):
        conn.request(method or ("GET" if body is None else "POST"), path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read().decode("utf-8", "replace"))

    def request(self, path, method=None, body=None, headers=None, scheme="https"):
        """One request on its own connection, paced under the per-address rate."""
        time.sleep(max(0.0, self._last + PACE - time.monotonic()))
        conn = self.connection(scheme)
        try:
            return self.send(conn, path, method, body, headers)
        finally:
            conn.close()
            self._last = time.monotonic()

    def burst(self, count, path="/v1/models", headers=None):
        """COUNT requests as fast as one keepalive connection takes them, so a burst is a burst."""
        conn, answers = self.connection(), []
        try:
            for _request in range(count):
                if conn.sock is None:  # nginx closed the connection: carry on with a new one
                    conn = self.connection()
                answers.append(self.send(conn, path, headers=headers))
        finally:
            conn.close()
            self.filled()
        return answers

    def filled(self):
        """A test just sent more than the paced rate: the buckets may be full."""
        self._filled = time.monotonic()

    def refill(self):
        """Wait until every bucket a burst may have filled is empty again."""
        time.sleep(max(0.0, self._filled + DRAIN - time.monotonic()))


def inventory_name(host):
    return host.ansible.get_variables()["inventory_hostname"]


@pytest.fixture(scope="module")
def mode(host):
    """TLS mode of this test host, as converge.yml sets it."""
    return {"nginx-selfsigned": "selfsigned", "nginx-provided": "provided"}.get(inventory_name(host), "acme")


@pytest.fixture(scope="module")
def key_hash(host):
    """What keys the per-key zones on this test host, as molecule.yml sets it."""
    return {"nginx-provided": "none"}.get(inventory_name(host), "sha1")


@pytest.fixture(scope="module")
def ca_on_host(host, mode):
    """The CA of the host's TLS mode, as a file on the host. Pebble makes a new root at each start and
    serves it on its loopback management port only, so it is fetched from the host itself."""
    if mode == "acme":
        pebble_root(host, CA_ON_HOST["acme"])
    return CA_ON_HOST[mode]


@pytest.fixture(scope="module")
def nginx(host, ca_on_host, tmp_path_factory):
    facts = host.ansible("setup", "filter=ansible_default_ipv4", check=False)["ansible_facts"]
    ca_file = tmp_path_factory.mktemp(inventory_name(host)) / "ca.pem"
    ca_file.write_text(host.file(ca_on_host).content_string)
    return Nginx(facts["ansible_default_ipv4"]["address"], str(ca_file))


@pytest.fixture()
def acme(mode):
    if mode != "acme":
        pytest.skip("acme mode only")
