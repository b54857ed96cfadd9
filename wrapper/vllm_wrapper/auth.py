"""Bearer-key authentication: keys kept only as SHA-256 digests, compared in
constant time, and the keys file re-read when it changes (works across workers
because every worker watches the file's mtime itself)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import stat
import time
from dataclasses import dataclass

from .config import ConfigError, Settings

log = logging.getLogger("vllm_wrapper.auth")

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
# How often (seconds) a worker stats the keys file at most.
RELOAD_CHECK_INTERVAL = 1.0


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Entry:
    name: str
    digest: bytes


def parse_keys_file(text: str, path: str) -> list[_Entry]:
    """Lines "name:sha256hex"; blank lines and lines starting with # are ignored."""
    entries: list[_Entry] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, digest = line.partition(":")
        name, digest = name.strip(), digest.strip()
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
        entries.append(_Entry(name, bytes.fromhex(digest)))
    return entries


class KeyStore:
    def __init__(self, settings: Settings) -> None:
        self._inline = [
            _Entry(name, hashlib.sha256(key.encode("utf-8")).digest())
            for name, key in settings.api_keys
        ]
        self._path = settings.api_keys_file
        self._file_entries: list[_Entry] = []
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
        found: str | None = None
        # Compare against every key, without stopping early, so timing does not
        # tell which key (or how many) matched.
        for entry in self._inline + self._file_entries:
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry.name
        return found
