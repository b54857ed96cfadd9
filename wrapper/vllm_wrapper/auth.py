"""Bearer-key authentication: keys kept only as SHA-256 digests, compared in
constant time, and the keys file re-read when it changes (works across workers
because every worker watches the file's mtime itself). A key may be limited to
some models, expire, or be disabled (the keys file's optional JSON after the
digest)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from .config import ConfigError, Settings
from .limits import Limits

log = logging.getLogger("vllm_wrapper.auth")

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
# How often (seconds) a worker stats the keys file at most.
RELOAD_CHECK_INTERVAL = 1.0


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyEntry:
    name: str
    digest: bytes
    # The models the key may use (None: every model).
    models: frozenset[str] | None = None
    # Epoch seconds from which the key is refused (None: never).
    expires: float | None = None
    disabled: bool = False
    # Requests and tokens per minute and concurrent requests, fleet-wide (None: unlimited).
    limits: Limits | None = None

    def refusal(self, now: float | None = None) -> tuple[str, str] | None:
        """(message, code) of the 401 answer when the key is disabled or expired, else None."""
        if self.disabled:
            return f"API key {self.name!r} is disabled", "api_key_disabled"
        if self.expires is not None and (time.time() if now is None else now) >= self.expires:
            when = datetime.fromtimestamp(self.expires, UTC).isoformat()
            return f"API key {self.name!r} expired at {when}", "api_key_expired"
        return None

    def allows(self, model: object) -> bool:
        return self.models is None or model in self.models


def parse_expiry(value: str) -> float:
    """ISO 8601 date or date and time (UTC when no offset is given) as epoch seconds."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _attributes(raw: str, where: str) -> dict:
    try:
        attrs = json.loads(raw)
    except ValueError as exc:
        attrs = exc
    if not isinstance(attrs, dict):
        why = f": {attrs}" if isinstance(attrs, ValueError) else ""
        raise ConfigError(f"{where}: the key's settings after the digest must be a JSON object{why}")
    unknown = sorted(set(attrs) - {"models", "expires", "disabled", *Limits.SETTINGS})
    if unknown:
        raise ConfigError(f"{where}: unknown key setting(s) {unknown}; allowed: models, expires, disabled, "
                          + ", ".join(Limits.SETTINGS))
    for name in Limits.SETTINGS:
        value = attrs.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{where}: {name} must be a whole number of 1 or more (got {value!r})")
    models = attrs.get("models")
    if models is not None and (not isinstance(models, list)
                               or not all(isinstance(m, str) and m for m in models)):
        raise ConfigError(f"{where}: models must be a list of model names")
    expires = attrs.get("expires")
    if expires is not None:
        try:
            attrs["expires"] = parse_expiry(expires) if isinstance(expires, str) else None
        except ValueError:
            attrs["expires"] = None
        if attrs["expires"] is None:
            raise ConfigError(f"{where}: expires must be an ISO 8601 date or time, e.g. 2027-01-31T00:00:00Z "
                              f"(got {expires!r})")
    if not isinstance(attrs.get("disabled", False), bool):
        raise ConfigError(f"{where}: disabled must be true or false")
    return attrs


def parse_keys_file(text: str, path: str) -> list[KeyEntry]:
    """Lines "name:sha256hex" with optional settings after a space, a JSON object:
    {"models": [...], "expires": "2027-01-31T00:00:00Z", "disabled": false}. Blank lines
    and lines starting with # are ignored."""
    entries: list[KeyEntry] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        digest, _, raw = rest.strip().partition(" ")
        name = name.strip()
        if digest.lower().startswith("sha256:"):
            digest = digest[len("sha256:"):]
        where = f"VLLM_WRAPPER_API_KEYS_FILE {path} line {lineno}"
        if not sep or not _NAME.match(name):
            raise ConfigError(f"{where}: expected name:sha256hex with a name of [A-Za-z0-9_.@-]")
        if not _HEX64.match(digest):
            raise ConfigError(f"{where}: key digest must be 64 hex characters (SHA-256)")
        if name in seen:
            raise ConfigError(f"{where}: duplicate key name {name!r}")
        seen.add(name)
        attrs = _attributes(raw, where) if raw.strip() else {}
        models = attrs.get("models")
        entries.append(KeyEntry(name, bytes.fromhex(digest),
                                None if models is None else frozenset(models),
                                attrs.get("expires"), attrs.get("disabled", False), Limits.of(attrs)))
    return entries


class KeyStore:
    def __init__(self, settings: Settings) -> None:
        self._inline = [
            KeyEntry(name, hashlib.sha256(key.encode("utf-8")).digest())
            for name, key in settings.api_keys
        ]
        self._path = settings.api_keys_file
        self._limits_store = settings.limits_store
        self._file_entries: list[KeyEntry] = []
        self._file_sig: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self.enabled = settings.auth_configured
        if self._path is not None:
            self._load_file(initial=True)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self._inline + self._file_entries]

    def _load_file(self, initial: bool) -> None:
        assert self._path is not None
        try:
            st = os.stat(self._path)
            with open(self._path, encoding="utf-8") as fh:
                text = fh.read()
            entries = parse_keys_file(text, self._path)
            limited = [e.name for e in entries if e.limits is not None]
            if limited and self._limits_store is None:
                raise ConfigError(f"VLLM_WRAPPER_API_KEYS_FILE {self._path}: key(s) {limited} have limits, "
                                  "which need a counter store: set VLLM_WRAPPER_LIMITS_STORE")
        except OSError as exc:
            if initial:
                raise ConfigError(
                    f"VLLM_WRAPPER_API_KEYS_FILE={self._path!r} cannot be read: {exc.strerror}"
                ) from None
            log.error("keys file %s cannot be read (%s); keeping previous keys",
                      self._path, exc.strerror)
            return
        except ConfigError as exc:
            if initial:
                raise
            log.error("keys file rejected, keeping previous keys: %s", exc)
            return
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("keys file %s is accessible by group/others (mode %o); use 0600",
                        self._path, stat.S_IMODE(st.st_mode))
        self._file_entries = entries
        self._file_sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if not initial:
            log.info("keys file reloaded: %d key(s)", len(entries))

    def maybe_reload(self, now: float | None = None) -> None:
        if self._path is None:
            return
        now = time.monotonic() if now is None else now
        if now < self._next_check:
            return
        self._next_check = now + RELOAD_CHECK_INTERVAL
        try:
            st = os.stat(self._path)
        except OSError:
            return
        if (st.st_mtime_ns, st.st_size, st.st_ino) != self._file_sig:
            self._load_file(initial=False)

    def authenticate(self, authorization: bytes | None) -> str | None:
        """Return the key's name, or None when the header carries no valid key."""
        entry = self.identify(authorization)
        return None if entry is None else entry.name

    def identify(self, authorization: bytes | None) -> KeyEntry | None:
        """The key the header carries (disabled and expired ones included), or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        token = token.strip()
        if not token:
            return None
        self.maybe_reload()
        digest = hashlib.sha256(token).digest()
        found: KeyEntry | None = None
        # Compare against every key, without stopping early, so timing does not
        # tell which key (or how many) matched.
        for entry in self._inline + self._file_entries:
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry
        return found
