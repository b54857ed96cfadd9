"""The nginx role on Ubuntu 22.04 and 24.04, without Ubuntu's archive or an Ubuntu host.

Ansible renders the role's package lists and nginx.conf for recorded Ubuntu facts
(tests/nginx_render/render.yml, tests/fixtures/ubuntu/facts); the packages are checked against
Ubuntu's recorded package names (tests/fixtures/ubuntu/packages.yml), every rendered directive
against the nginx version the release ships, and each file goes through this machine's real
`nginx -t` (Debian's nginx, installed here when absent).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "ubuntu"
HOSTS = {"ubuntu-jammy": "jammy", "ubuntu-noble": "noble"}
# The nginx each release ships (packages.yml has the pages).
NGINX_VERSION = {"jammy": (1, 18, 0), "noble": (1, 24, 0)}
SET_MISC = "/usr/share/nginx/modules-available/mod-http-set-misc.conf"

# Version each directive appeared in, from nginx.org's documentation sources (xml/en/docs/ in
# https://github.com/nginx/nginx.org, the "This directive appeared in version" lines); None where
# the directive predates the documented versions. "upstream/NAME" is a directive inside upstream {}.
DIRECTIVES = {
    "user": None, "worker_processes": None, "pid": None, "error_log": None, "include": None,
    "events": None, "worker_connections": None, "http": None, "default_type": None, "sendfile": None,
    "tcp_nopush": None, "server_tokens": None, "keepalive_timeout": None, "log_format": None,
    "access_log": None, "ssl_protocols": None, "ssl_ciphers": None, "ssl_prefer_server_ciphers": None,
    "ssl_session_cache": None, "ssl_session_timeout": None, "ssl_session_tickets": (1, 5, 9),
    "client_max_body_size": None, "map": None, "limit_req_zone": None, "limit_conn_zone": None,
    "limit_req": None, "limit_conn": None, "limit_req_status": (1, 3, 15), "limit_conn_status": (1, 3, 15),
    "set_real_ip_from": None, "real_ip_header": None, "upstream": None, "upstream/server": None,
    "upstream/include": None, "upstream/keepalive": (1, 1, 4), "upstream/least_conn": (1, 3, 1), "upstream/ip_hash": None,
    "upstream/random": (1, 15, 1), "server": None, "listen": None, "server_name": None, "location": None,
    "root": None, "try_files": None, "return": None, "ssl_certificate": None, "ssl_certificate_key": None,
    "add_header": None, "error_page": None, "allow": None, "deny": None, "proxy_pass": None,
    "proxy_http_version": (1, 1, 4), "proxy_set_header": None, "proxy_buffering": None,
    "proxy_request_buffering": (1, 7, 11), "proxy_connect_timeout": None, "proxy_read_timeout": None,
    "proxy_send_timeout": None, "proxy_next_upstream": None, "proxy_next_upstream_tries": (1, 7, 5),
    "proxy_ssl_server_name": (1, 7, 0), "proxy_ssl_session_reuse": None, "proxy_ssl_protocols": (1, 5, 6),
    "proxy_ssl_verify": (1, 7, 0), "proxy_ssl_trusted_certificate": (1, 7, 0), "proxy_ssl_name": (1, 7, 0),
    "ssl_reject_handshake": (1, 19, 4), "http2": (1, 25, 1), "keepalive_time": (1, 19, 10),
}
# Parameters newer than their directive, from the same pages.
PARAMETERS = {
    ("add_header", "always"): (1, 7, 5),
    ("ssl_protocols", "TLSv1.3"): (1, 13, 0),
    ("proxy_next_upstream", "non_idempotent"): (1, 9, 13),
    ("proxy_next_upstream", "http_429"): (1, 11, 13),
    ("return", "308"): (1, 13, 0),  # a redirect only since then
}
# Directives of modules outside nginx's source, and the package that brings each.
MODULE_DIRECTIVES = {"set_sha1": "libnginx-mod-http-set-misc"}


def ansible_render(out, tls, *extra):
    """Run the render playbook; its facts stay in memory (ansible.cfg would cache them on disk)."""
    env = dict(os.environ, ANSIBLE_CACHE_PLUGIN="ansible.builtin.memory", ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        ["ansible-playbook", "-i", "tests/nginx_render/inventory.yml", "tests/nginx_render/render.yml",
         "-e", f"facts_dir={FIXTURES / 'facts'}", "-e", f"out_dir={out}", "-e", f"tls_dir={tls}", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )


def make_certificates(tls):
    """Files the rendered configurations point at; nginx -t loads them."""
    (tls / "live").mkdir(parents=True)
    (tls / "backends").mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=gpu01.example.com", "-keyout", str(tls / "gpu01.example.com.key"),
         "-out", str(tls / "gpu01.example.com.crt")],
        check=True, capture_output=True,
    )
    shutil.copy(tls / "gpu01.example.com.crt", tls / "live" / "fullchain.pem")
    shutil.copy(tls / "gpu01.example.com.key", tls / "live" / "privkey.pem")
    (tls / "backends" / "gpu01.conf").write_text("server 127.0.0.1:8443 max_fails=2 fail_timeout=10s;\n")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("nginx-render")
    tls = tmp_path_factory.mktemp("nginx-tls")
    make_certificates(tls)
    result = ansible_render(out, tls)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def ubuntu_packages():
    return yaml.safe_load((FIXTURES / "packages.yml").read_text())


def nginx_t(conf, modules):
    """`nginx -t` on a rendered file, with /etc/nginx/modules-enabled holding only `modules`.

    A private mount namespace puts an empty directory over modules-enabled for this one command.
    """
    links = " ".join(f"&& ln -s {m} /etc/nginx/modules-enabled/" for m in modules)
    script = f"mount -t tmpfs gpufleet-test /etc/nginx/modules-enabled {links} && exec nginx -t -q -c {conf}"
    return subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, check=False)


def statements(conf):
    """(block path, directive, arguments) of every simple or block directive of an nginx config."""
    text = re.sub(r"(?m)^\s*#.*$", "", conf)
    tokens = re.findall(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[{};]|[^\s{};]+", text)
    stack, current = [], []
    for token in tokens:
        if token in ("{", ";"):
            if current and "map" not in stack:
                yield list(stack), current[0], current[1:]
            if token == "{":
                stack.append(current[0] if current else "")
            current = []
        elif token == "}":
            stack.pop()
        else:
            current.append(token.strip("'\""))


def directive_names(conf):
    return [statement[1] for statement in statements(conf.read_text())]


def confs(rendered, release):
    host = next(h for h, r in HOSTS.items() if r == release)
    return sorted(rendered.glob(f"{host}.*.conf"))


def packages(rendered, host, mode):
    return json.loads((rendered / f"{host}.{mode}.packages.json").read_text())


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("mode", ["acme", "selfsigned", "provided"])
def test_every_package_exists_in_the_release(rendered, ubuntu_packages, host, mode):
    release = HOSTS[host]
    names = packages(rendered, host, mode)
    assert "nginx" in names
    available = set(ubuntu_packages[release]) - {"absent"}
    assert set(names) <= available, f"not in Ubuntu {release}: {set(names) - available}"
    assert not set(names) & set(ubuntu_packages[release]["absent"])


def test_acme_mode_installs_certbot_on_both(rendered):
    for host in HOSTS:
        assert "certbot" in packages(rendered, host, "acme")


def test_jammy_keys_the_zones_on_the_header_without_set_misc(rendered):
    assert "libnginx-mod-http-set-misc" not in packages(rendered, "ubuntu-jammy", "acme")
    for conf in confs(rendered, "jammy"):
        assert "set_sha1" not in directive_names(conf)
        assert "default $http_authorization;" in conf.read_text()


def test_noble_keeps_the_sha1_key(rendered):
    assert "libnginx-mod-http-set-misc" in packages(rendered, "ubuntu-noble", "acme")
    for conf in confs(rendered, "noble"):
        found = [statement[2] for statement in statements(conf.read_text()) if statement[1] == "set_sha1"]
        assert found == [["$gpufleet_api_key_sha1", "$http_authorization"]]


def test_sha1_on_jammy_fails_the_role_preflight(tmp_path):
    tls = tmp_path / "tls"
    make_certificates(tls)
    result = ansible_render(tmp_path, tls, "--limit", "ubuntu-jammy", "-e", "nginx_rate_limit_key_hash=sha1")
    assert result.returncode != 0
    assert "nginx_rate_limit_key_hash sha1 needs libnginx-mod-http-set-misc" in result.stdout
    assert "Ubuntu 22.04" in result.stdout


@pytest.mark.parametrize("release", NGINX_VERSION)
def test_rendered_directives_exist_in_the_release_nginx(rendered, release):
    shipped = NGINX_VERSION[release]
    files = confs(rendered, release)
    assert len(files) == 2
    too_new, unknown = [], []
    for conf in files:
        for stack, name, args in statements(conf.read_text()):
            if name in MODULE_DIRECTIVES:
                continue
            key = f"upstream/{name}" if stack and stack[-1] == "upstream" else name
            if key not in DIRECTIVES:
                unknown.append(key)
            elif (DIRECTIVES[key] or (0,)) > shipped:
                too_new.append(f"{key} {DIRECTIVES[key]}")
            too_new += [f"{name} {arg}" for arg in args if PARAMETERS.get((name, arg), (0,)) > shipped]
    assert not unknown, f"look up the version these appeared in and add them to DIRECTIVES: {unknown}"
    assert not too_new, f"nginx {shipped} lacks: {too_new}"


@pytest.mark.parametrize("release", NGINX_VERSION)
def test_module_directives_come_with_their_package(rendered, release):
    host = next(h for h, r in HOSTS.items() if r == release)
    installed = packages(rendered, host, "acme")
    for conf in confs(rendered, release):
        for name in directive_names(conf):
            if name in MODULE_DIRECTIVES:
                assert MODULE_DIRECTIVES[name] in installed, name


def test_jammy_configuration_passes_nginx_t_without_any_module(rendered, debian_nginx):
    for conf in confs(rendered, "jammy"):
        result = nginx_t(conf, [])
        assert result.returncode == 0, f"{conf.name}: {result.stderr}"


def test_noble_configuration_passes_nginx_t_with_set_misc(rendered, debian_nginx):
    ndk = "/usr/share/nginx/modules-available/mod-http-ndk.conf"
    for conf in confs(rendered, "noble"):
        result = nginx_t(conf, [ndk, SET_MISC])
        assert result.returncode == 0, f"{conf.name}: {result.stderr}"
        # the same file needs the module: the check above really ran without the machine's modules
        assert 'unknown directive "set_sha1"' in nginx_t(conf, []).stderr
