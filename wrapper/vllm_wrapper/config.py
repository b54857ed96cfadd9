"""Configuration from environment variables; a bad value stops start-up."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A configuration variable has an invalid value; the message names it."""


@dataclass(frozen=True)
class UpstreamSpec:
    """One vLLM instance of VLLM_UPSTREAMS: its name, base URL and served model names."""

    name: str
    url: str
    models: tuple[str, ...]


@dataclass(frozen=True)
class Settings:
    upstream_url: str = "http://127.0.0.1:8000"
    # Several vLLM instances routed by model; empty: the one VLLM_UPSTREAM_URL.
    upstreams: tuple[UpstreamSpec, ...] = ()
    upstream_api_key: str | None = None
    upstream_timeout: float = 600.0
    upstream_connect_timeout: float = 5.0
    upstream_max_connections: int = 1000
    ready_timeout: float = 2.0
    served_model: str | None = None
    # VLLM_FLEET_MODELS: every model name the fleet serves (the fleet edge's list).
    fleet_models: tuple[str, ...] = ()
    default_max_tokens: int = 2048
    default_temperature: float = 0.7
    api_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    api_keys_file: str | None = None
    # Redis or Valkey that holds the keys' limit counters, shared by every wrapper of the fleet
    # (redis://host:port/db); None: keys with limits are refused at start.
    limits_store: str | None = None
    limits_store_password_file: str | None = None
    # How long a request holds its place in a key's concurrency count at most (a wrapper that dies
    # mid-request frees it then).
    limits_lease: float = 900.0
    max_body_bytes: int = 8 * 1024 * 1024
    retry_after: int = 5
    drain_timeout: float = 30.0
    access_log: bool = True
    log_level: str = "info"
    host: str = "0.0.0.0"
    port: int = 8001
    workers: int = 1

    @property
    def auth_configured(self) -> bool:
        return bool(self.api_keys) or self.api_keys_file is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        r = _Reader(env)
        return cls(
            upstream_url=r.url("VLLM_UPSTREAM_URL", cls.upstream_url),
            upstreams=_parse_upstreams(r.raw("VLLM_UPSTREAMS")),
            upstream_api_key=r.str_or_none("VLLM_UPSTREAM_API_KEY"),
            upstream_timeout=r.number("VLLM_UPSTREAM_TIMEOUT", cls.upstream_timeout, low=0.001),
            upstream_connect_timeout=r.number(
                "VLLM_UPSTREAM_CONNECT_TIMEOUT", cls.upstream_connect_timeout, low=0.001
            ),
            upstream_max_connections=r.integer(
                "VLLM_UPSTREAM_MAX_CONNECTIONS", cls.upstream_max_connections, low=0
            ),
            ready_timeout=r.number("VLLM_WRAPPER_READY_TIMEOUT", cls.ready_timeout, low=0.001),
            served_model=r.str_or_none("VLLM_SERVED_MODEL"),
            fleet_models=_parse_fleet_models(r.raw("VLLM_FLEET_MODELS")),
            default_max_tokens=r.integer("VLLM_DEFAULT_MAX_TOKENS", cls.default_max_tokens, low=1),
            default_temperature=r.number(
                "VLLM_DEFAULT_TEMPERATURE", cls.default_temperature, low=0.0, high=2.0
            ),
            api_keys=_parse_inline_keys(env),
            api_keys_file=r.str_or_none("VLLM_WRAPPER_API_KEYS_FILE"),
            limits_store=_check_store(r.str_or_none("VLLM_WRAPPER_LIMITS_STORE")),
            limits_store_password_file=r.str_or_none("VLLM_WRAPPER_LIMITS_STORE_PASSWORD_FILE"),
            limits_lease=r.number("VLLM_WRAPPER_LIMITS_LEASE", cls.limits_lease, low=1.0),
            max_body_bytes=r.integer("VLLM_WRAPPER_MAX_BODY_BYTES", cls.max_body_bytes, low=1),
            retry_after=r.integer("VLLM_WRAPPER_RETRY_AFTER", cls.retry_after, low=0),
            drain_timeout=r.number("VLLM_WRAPPER_DRAIN_TIMEOUT", cls.drain_timeout, low=0.0),
            access_log=r.boolean("VLLM_WRAPPER_ACCESS_LOG", cls.access_log),
            log_level=r.choice(
                "VLLM_WRAPPER_LOG_LEVEL", cls.log_level, ("debug", "info", "warning", "error")
            ),
            host=r.str_or_none("VLLM_WRAPPER_HOST") or cls.host,
            port=r.integer("VLLM_WRAPPER_PORT", cls.port, low=1, high=65535),
            workers=r.integer("VLLM_WRAPPER_WORKERS", cls.workers, low=1, high=256),
        )


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def str_or_none(self, name: str) -> str | None:
        return self.raw(name)

    def integer(self, name: str, default: int, low: int | None = None, high: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not an integer") from None
        _check_range(name, value, number, low, high)
        return number

    def number(
        self, name: str, default: float, low: float | None = None, high: float | None = None
    ) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not a number") from None
        if not math.isfinite(number):
            raise ConfigError(f"{name}={value!r} must be a finite number")
        _check_range(name, value, number, low, high)
        return number

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={value!r} must be one of true/false/1/0/yes/no/on/off")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() not in choices:
            raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
        return value.lower()

    def url(self, name: str, default: str) -> str:
        value = self.raw(name)
        if value is None:
            return default
        return _check_url(name, value)


def _check_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={value!r} must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ConfigError(f"{name}={value!r} must not have a query or fragment")
    return value.rstrip("/")


def _check_store(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname or parts.password:
        raise ConfigError(f"VLLM_WRAPPER_LIMITS_STORE={value!r} must be redis://host:port/db or "
                          "rediss://host:port/db, its password in VLLM_WRAPPER_LIMITS_STORE_PASSWORD_FILE")
    return value


def _check_range(
    name: str, raw: str, number: float, low: float | None, high: float | None
) -> None:
    if low is not None and number < low:
        raise ConfigError(f"{name}={raw!r} must be >= {low}")
    if high is not None and number > high:
        raise ConfigError(f"{name}={raw!r} must be <= {high}")


def _parse_inline_keys(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Plain-text keys from VLLM_WRAPPER_API_KEY (named "default") and
    VLLM_WRAPPER_API_KEYS (comma-separated "name:key" entries)."""
    keys: list[tuple[str, str]] = []
    single = env.get("VLLM_WRAPPER_API_KEY", "").strip()
    if single:
        keys.append(("default", single))
    many = env.get("VLLM_WRAPPER_API_KEYS", "").strip()
    if many:
        for index, entry in enumerate(many.split(","), start=1):
            entry = entry.strip()
            name, sep, key = entry.partition(":")
            if not entry or not sep or not name.strip() or not key.strip():
                raise ConfigError(
                    f"VLLM_WRAPPER_API_KEYS entry {index} must look like name:key "
                    "(comma-separated list)"
                )
            keys.append((name.strip(), key.strip()))
    names = [name for name, _ in keys]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"VLLM_WRAPPER_API_KEY/VLLM_WRAPPER_API_KEYS: duplicate key name(s) {duplicates}"
        )
    return tuple(keys)


_UPSTREAM_FIELDS = ("name", "url", "models")


def _json_list(name: str, raw: str | None, shape: str) -> list:
    """A JSON list from the variable `name`; unset means []."""
    if raw is None:
        return []
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise ConfigError(f"{name} must be a JSON list of {shape}")
    return data


def _parse_fleet_models(raw: str | None) -> tuple[str, ...]:
    """VLLM_FLEET_MODELS: a JSON list of model names. Unset or empty: none."""
    data = _json_list("VLLM_FLEET_MODELS", raw, "model names")
    if not all(isinstance(m, str) and m for m in data):
        raise ConfigError("VLLM_FLEET_MODELS must be a JSON list of model names")
    return tuple(sorted(set(data)))


def _parse_upstreams(raw: str | None) -> tuple[UpstreamSpec, ...]:
    """VLLM_UPSTREAMS: a JSON list of {"name", "url", "models"} objects. Unset, empty
    or [] means the single VLLM_UPSTREAM_URL."""
    entries = _json_list("VLLM_UPSTREAMS", raw, '{"name", "url", "models"} objects')
    specs: list[UpstreamSpec] = []
    for index, entry in enumerate(entries, start=1):
        specs.append(_parse_upstream(index, entry))
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"VLLM_UPSTREAMS: duplicate instance name(s) {duplicates}")
    return tuple(specs)


def _parse_upstream(index: int, entry: object) -> UpstreamSpec:
    where = f"VLLM_UPSTREAMS entry {index}"
    if not isinstance(entry, dict):
        raise ConfigError(f'{where} must be an object with "name", "url" and "models"')
    name = entry.get("name")
    if isinstance(name, str) and name.strip():
        where += f" ({name!r})"
    missing = [key for key in _UPSTREAM_FIELDS if key not in entry]
    unknown = sorted(str(key) for key in entry if key not in _UPSTREAM_FIELDS)
    if missing or unknown:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown field(s) {', '.join(unknown)}"] if unknown else [])
        raise ConfigError(f"{where}: {'; '.join(problems)} (fields: name, url, models)")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: name must be a non-empty string")
    url = entry["url"]
    if not isinstance(url, str):
        raise ConfigError(f"{where}: url must be a string")
    url = _check_url(f"{where} url", url.strip())
    models = entry["models"]
    if (not isinstance(models, list) or not models
            or not all(isinstance(m, str) and m.strip() for m in models)):
        raise ConfigError(f"{where}: models must be a non-empty list of model names")
    return UpstreamSpec(name=name.strip(), url=url, models=tuple(dict.fromkeys(models)))
