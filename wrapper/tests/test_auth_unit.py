"""KeyStore: hashed keys, file format, reload on change (no vLLM needed)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vllm_wrapper.auth import KeyStore, hash_key, parse_keys_file
from vllm_wrapper.config import ConfigError, Settings


def _store(tmp_path: Path, content: str, **env: str) -> tuple[KeyStore, Path]:
    path = tmp_path / "keys"
    path.write_text(content)
    path.chmod(0o600)
    return KeyStore(Settings.from_env({"VLLM_WRAPPER_API_KEYS_FILE": str(path), **env})), path


def test_keys_are_kept_only_as_digests(tmp_path: Path) -> None:
    store, _ = _store(tmp_path, "", VLLM_WRAPPER_API_KEY="plain-secret")
    dump = repr(vars(store))
    assert "plain-secret" not in dump
    assert store.authenticate(b"Bearer plain-secret") == "default"


def test_file_keys_and_bad_headers(tmp_path: Path) -> None:
    store, _ = _store(tmp_path, f"# comment\n\nops:{hash_key('k-ops')}\nci:sha256:{hash_key('k-ci')}\n")
    assert store.authenticate(b"Bearer k-ops") == "ops"
    assert store.authenticate(b"bearer k-ci") == "ci"
    for header in (None, b"", b"Bearer", b"Bearer ", b"Basic k-ops", b"Bearer k-opsX", b"k-ops"):
        assert store.authenticate(header) is None


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("ops\n", "line 1"),
        ("ops:1234\n", "64 hex"),
        (f"a:{'0' * 64}\na:{'1' * 64}\n", "duplicate"),
        (f"bad name:{'0' * 64}\n", "line 1"),
    ],
)
def test_bad_keys_file_names_variable_and_line(content: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="VLLM_WRAPPER_API_KEYS_FILE") as err:
        parse_keys_file(content, "/etc/keys")
    assert fragment in str(err.value)


def test_reload_on_change_keeps_old_keys_on_bad_file(tmp_path: Path) -> None:
    store, path = _store(tmp_path, f"a:{hash_key('key-a')}\n")
    assert store.authenticate(b"Bearer key-a") == "a"
    path.write_text(f"b:{hash_key('key-b')}\n")
    future = time.time() + 5
    os.utime(path, (future, future))
    store.maybe_reload(now=time.monotonic() + 10)
    assert store.authenticate(b"Bearer key-a") is None
    assert store.authenticate(b"Bearer key-b") == "b"
    path.write_text("garbage\n")
    os.utime(path, (future + 5, future + 5))
    store.maybe_reload(now=time.monotonic() + 20)
    assert store.authenticate(b"Bearer key-b") == "b"


def test_key_settings_scope_expiry_and_disabled(tmp_path: Path) -> None:
    store, _ = _store(tmp_path, (
        f'a:{hash_key("key-a")} {{"models": ["m1", "org/m2"], "expires": "2999-12-31"}}\n'
        f'b:{hash_key("key-b")} {{"expires": "2020-01-31T12:00:00+01:00"}}\n'
        f'c:{hash_key("key-c")} {{"disabled": true}}\n'
        f'd:{hash_key("key-d")}\n'))
    a = store.identify(b"Bearer key-a")
    assert a is not None and a.models == frozenset({"m1", "org/m2"}) and a.refusal() is None
    assert a.allows("org/m2") and not a.allows("m3")
    b = store.identify(b"Bearer key-b")
    assert b is not None and b.expires == 1580468400.0
    assert b.refusal() == ("API key 'b' expired at 2020-01-31T11:00:00+00:00", "api_key_expired")
    assert b.refusal(now=1580468399.0) is None
    c = store.identify(b"Bearer key-c")
    assert c is not None and c.refusal() == ("API key 'c' is disabled", "api_key_disabled")
    d = store.identify(b"Bearer key-d")
    assert d is not None and d.models is None and d.allows("anything") and d.refusal() is None


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ("{models: 1}", "JSON object"),
        ('["m1"]', "JSON object"),
        ('{"model": ["m1"]}', "unknown key setting(s) ['model']"),
        ('{"models": "m1"}', "models must be a list"),
        ('{"models": [""]}', "models must be a list"),
        ('{"expires": "next week"}', "expires must be an ISO 8601"),
        ('{"expires": 1700000000}', "expires must be an ISO 8601"),
        ('{"disabled": "yes"}', "disabled must be true or false"),
    ],
)
def test_bad_key_settings_name_the_line(settings: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_keys_file(f"ok:{'0' * 64}\nbad:{'1' * 64} {settings}\n", "/etc/keys")
    assert "line 2" in str(err.value) and fragment in str(err.value), str(err.value)
