"""HTTP requests made on a test host with its own python3, for tests that must ask from the host itself
(loopback-only ports, nginx's view of 127.0.0.1). The hosts get no curl: they have only what the shipped
roles install, and the request is made by the same script the smoke test runs (playbooks/files).

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
    from host_http import request
"""

from __future__ import annotations

import json
import pathlib
import shlex

SCRIPT = pathlib.Path(__file__).resolve().parents[3] / "playbooks" / "files" / "http_request.py"
ON_HOST = "/tmp/gpufleet-http-request.py"
COPIED = set()


def script(host):
    """The request script's path on HOST, copied there on first use."""
    name = host.backend.get_hostname()
    if name not in COPIED:
        host.ansible("copy", "src=%s dest=%s mode=0644" % (SCRIPT, ON_HOST), check=False)
        COPIED.add(name)
    return ON_HOST


def request(host, url, body=None, key=None, ca_file=None, connect_to=None, timeout=120, method=None):
    """(status, body) of one request from HOST; BODY is JSON-encoded unless it is a string. A request that
    got no answer fails the test with its cause (connection refused, TLS, timeout)."""
    headers = {"Authorization": "Bearer " + key} if key else {}
    if body is not None and not isinstance(body, str):
        body, headers["Content-Type"] = json.dumps(body), "application/json"
    spec = {"url": url, "headers": headers, "body": body, "ca_file": ca_file, "timeout": timeout}
    spec.update({"connect_to": connect_to} if connect_to else {})
    spec.update({"method": method} if method else {})
    result = host.run("printf %%s %s | python3 %s" % (shlex.quote(json.dumps(spec)), script(host)))
    assert result.rc == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["error"] is None, answer["error"]["message"]
    return answer["status"], answer["body"]


def get_json(host, url, **kwargs):
    code, body = request(host, url, **kwargs)
    assert code == 200, body
    return json.loads(body)


def put(host, path, text):
    host.run_expect([0], "printf %%s %s > %s" % (shlex.quote(text), shlex.quote(path)))


def pebble_root(host, path="/tmp/pebble-root.pem"):
    """The root certificate of the ACME test server on HOST (it signed nginx's certificate), also
    written to PATH there."""
    code, pem = request(host, "https://127.0.0.1:15000/roots/0", ca_file="/etc/pebble/ca.pem", timeout=30)
    assert code == 200 and "BEGIN CERTIFICATE" in pem, pem
    put(host, path, pem)
    return pem
