"""Configuration parsing and start-up failures (no vLLM needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vllm_wrapper.config import ConfigError, Settings, UpstreamSpec

from .conftest import WRAPPER_DIR


def test_defaults_follow_the_guide() -> None:
    s = Settings.from_env({})
    assert s.default_max_tokens == 2048
    assert s.default_temperature == 0.7
    assert s.upstream_url == "http://127.0.0.1:8000"
    assert s.port == 8001
    assert not s.auth_configured


def test_values_are_read() -> None:
    s = Settings.from_env({
        "VLLM_DEFAULT_MAX_TOKENS": "100",
        "VLLM_DEFAULT_TEMPERATURE": "0.2",
        "VLLM_UPSTREAM_URL": "http://vllm-server:8000/",
        "VLLM_UPSTREAM_TIMEOUT": "30",
        "VLLM_WRAPPER_API_KEY": "k1",
        "VLLM_WRAPPER_API_KEYS": "a:k2, b:k3",
        "VLLM_WRAPPER_ACCESS_LOG": "off",
    })
    assert s.default_max_tokens == 100
    assert s.default_temperature == 0.2
    assert s.upstream_url == "http://vllm-server:8000"
    assert s.upstream_timeout == 30.0
    assert s.api_keys == (("default", "k1"), ("a", "k2"), ("b", "k3"))
    assert s.access_log is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VLLM_DEFAULT_MAX_TOKENS", "lots"),
        ("VLLM_DEFAULT_MAX_TOKENS", "0"),
        ("VLLM_DEFAULT_TEMPERATURE", "3"),
        ("VLLM_DEFAULT_TEMPERATURE", "nan"),
        ("VLLM_UPSTREAM_URL", "vllm-server:8000"),
        ("VLLM_UPSTREAM_TIMEOUT", "-1"),
        ("VLLM_WRAPPER_MAX_BODY_BYTES", "1e6"),
        ("VLLM_WRAPPER_WORKERS", "0"),
        ("VLLM_WRAPPER_ACCESS_LOG", "maybe"),
        ("VLLM_WRAPPER_API_KEYS", "no-colon-here"),
        ("VLLM_WRAPPER_API_KEYS_FILE", "/nonexistent/keys"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        from vllm_wrapper.auth import KeyStore

        KeyStore(Settings.from_env({name: value}))


def _run_launcher(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    return subprocess.run(
        [sys.executable, "-m", "vllm_wrapper"], env={**clean, "PYTHONPATH": str(WRAPPER_DIR), **env},
        cwd=WRAPPER_DIR, capture_output=True, text=True, timeout=60,
    )


def test_launcher_refuses_bad_value_with_message() -> None:
    result = _run_launcher({"VLLM_DEFAULT_TEMPERATURE": "hot"})
    assert result.returncode == 2
    assert "VLLM_DEFAULT_TEMPERATURE" in result.stderr
    assert "Traceback" not in result.stderr


def test_uvicorn_import_path_refuses_bad_value() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "vllm_wrapper:app", "--port", "0"],
        env={**clean, "PYTHONPATH": str(WRAPPER_DIR), "VLLM_DEFAULT_MAX_TOKENS": "-5"},
        cwd=WRAPPER_DIR, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "VLLM_DEFAULT_MAX_TOKENS" in result.stderr


def test_hash_key_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vllm_wrapper", "hash-key"], input="secret\n",
        cwd=WRAPPER_DIR, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == (
        "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
    )


def test_upstreams_are_read() -> None:
    s = Settings.from_env({"VLLM_UPSTREAMS": json.dumps([
        {"name": "big", "url": "http://127.0.0.1:8002/", "models": ["llama-70b"]},
        {"name": "small", "url": "https://gpu3:8003", "models": ["llama-8b", "chat", "chat"]},
    ])})
    assert s.upstreams == (
        UpstreamSpec("big", "http://127.0.0.1:8002", ("llama-70b",)),
        UpstreamSpec("small", "https://gpu3:8003", ("llama-8b", "chat")),
    )


@pytest.mark.parametrize("value", ["", "  ", "[]"])
def test_empty_upstreams_mean_the_single_upstream(value: str) -> None:
    assert Settings.from_env({"VLLM_UPSTREAMS": value}).upstreams == ()


_A = {"name": "a", "url": "http://127.0.0.1:8002", "models": ["m"]}


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("[{", "not valid JSON"),
        ('{"name": "a"}', "JSON list"),
        ('["a"]', "entry 1 must be an object"),
        (json.dumps([_A, {"name": "b", "url": "http://x:1"}]), "entry 2 ('b'): missing models"),
        (json.dumps([{"url": "http://x:1", "models": ["m"]}]), "entry 1: missing name"),
        (json.dumps([{**_A, "model": "m"}]), "entry 1 ('a'): unknown field(s) model"),
        (json.dumps([{**_A, "name": " "}]), "name must be a non-empty string"),
        (json.dumps([{**_A, "url": "127.0.0.1:8002"}]), "entry 1 ('a') url='127.0.0.1:8002'"),
        (json.dumps([{**_A, "url": 8002}]), "url must be a string"),
        (json.dumps([{**_A, "models": []}]), "entry 1 ('a'): models must be a non-empty list"),
        (json.dumps([{**_A, "models": "m"}]), "models must be a non-empty list"),
        (json.dumps([{**_A, "models": [""]}]), "models must be a non-empty list"),
        (json.dumps([_A, {**_A, "url": "http://x:1"}]), "duplicate instance name(s) ['a']"),
    ],
)
def test_bad_upstreams_name_the_variable_and_entry(value: str, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"VLLM_UPSTREAMS": value})
    assert str(err.value).startswith("VLLM_UPSTREAMS")
    assert named in str(err.value)


def test_launcher_refuses_bad_upstreams() -> None:
    result = _run_launcher({"VLLM_UPSTREAMS": '[{"name": "a"}]'})
    assert result.returncode == 2
    assert "VLLM_UPSTREAMS entry 1 ('a'): missing url, models" in result.stderr


def test_fleet_models_are_a_sorted_unique_list() -> None:
    assert Settings.from_env({"VLLM_FLEET_MODELS": '["b", "a", "b"]'}).fleet_models == ("a", "b")
    assert Settings.from_env({"VLLM_FLEET_MODELS": ""}).fleet_models == ()
    for value in ('{"a": 1}', '["a", ""]', "not json", "[1]"):
        with pytest.raises(ConfigError, match="VLLM_FLEET_MODELS"):
            Settings.from_env({"VLLM_FLEET_MODELS": value})
