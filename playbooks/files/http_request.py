"""One HTTP request from a managed host, made with the Python that Ansible already needs there
(so nothing has to install curl). playbooks/tasks/smoke.yml runs it with `python3 -c`.

Reads a JSON object on stdin (stdin keeps the API key out of the process list):
  url         http:// or https:// URL; its host name is the Host header, the TLS server name and
              the name checked in the certificate
  connect_to  address to connect to instead of the URL's host (as curl --resolve does); optional
  method, headers (object), body (string), ca_file (CA bundle; default: the system's), timeout (s)
Prints a JSON object: status (null when no answer came), body, seconds, and error: null or
{"cause": "connection refused" | "timeout" | "TLS" | "name resolution" | "connection", "message": ...}.
"""

import http.client
import json
import socket
import ssl
import sys
import time
from urllib.parse import urlsplit


def connect(url, address, ca_file, timeout):
    port = url.port or (443 if url.scheme == "https" else 80)
    sock = socket.create_connection((address, port), timeout=timeout)
    if url.scheme != "https":
        conn = http.client.HTTPConnection(url.hostname, port, timeout=timeout)
    else:
        context = ssl.create_default_context(cafile=ca_file or None)
        conn = http.client.HTTPSConnection(url.hostname, port, timeout=timeout, context=context)
        sock = context.wrap_socket(sock, server_hostname=url.hostname)
    conn.sock = sock
    return conn


def failure(cause, message):
    return {"cause": cause, "message": message}


def send(request):
    url = urlsplit(request["url"])
    address = request.get("connect_to") or url.hostname
    timeout = float(request.get("timeout", 30))
    where = "%s:%s" % (address, url.port or (443 if url.scheme == "https" else 80))
    body = request.get("body")
    try:
        conn = connect(url, address, request.get("ca_file"), timeout)
        conn.request(
            request.get("method", "POST" if body is not None else "GET"),
            (url.path or "/") + ("?" + url.query if url.query else ""),
            body=body.encode() if body is not None else None,
            headers=request.get("headers") or {},
        )
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace"), None
    except ConnectionRefusedError:
        return None, "", failure("connection refused", "connection refused by %s" % where)
    except socket.timeout:
        return None, "", failure("timeout", "timeout: no answer from %s within %s s" % (where, timeout))
    except ssl.SSLError as exc:  # certificate verification failures are SSLErrors too
        ca = request.get("ca_file") or "the system's CA bundle"
        return None, "", failure("TLS", "TLS with %s (%s, CA %s): %s" % (where, url.hostname, ca, exc))
    except socket.gaierror as exc:
        return None, "", failure("name resolution", "cannot resolve %s: %s" % (address, exc))
    except (OSError, http.client.HTTPException) as exc:
        return None, "", failure("connection", "%s: %s: %s" % (where, type(exc).__name__, exc))


def main():
    started = time.monotonic()
    status, body, error = send(json.load(sys.stdin))
    seconds = round(time.monotonic() - started, 3)
    json.dump({"status": status, "body": body, "seconds": seconds, "error": error}, sys.stdout)


if __name__ == "__main__":
    main()
