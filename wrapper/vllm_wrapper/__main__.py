"""Launcher: `python -m vllm_wrapper` validates the configuration once (so a bad
variable stops start-up with a clear message instead of crash-looping
workers), prepares multi-worker metrics, then runs uvicorn.

`python -m vllm_wrapper hash-key` reads a key on stdin and prints the line
digest for VLLM_WRAPPER_API_KEYS_FILE."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from .auth import KeyStore, hash_key
from .config import ConfigError, Settings


def _hash_key_cli() -> int:
    key = sys.stdin.readline().strip()
    if not key:
        print("vllm-wrapper hash-key: give the key on standard input", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def main(argv: list[str]) -> int:
    if argv[1:2] == ["hash-key"]:
        return _hash_key_cli()
    if len(argv) > 1:
        print("usage: python -m vllm_wrapper [hash-key]  (configuration comes from the "
              "environment, see README)", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
        KeyStore(settings)
    except ConfigError as exc:
        print(f"vllm-wrapper: configuration error: {exc}", file=sys.stderr)
        return 2

    if settings.workers > 1:
        metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not metrics_dir:
            metrics_dir = tempfile.mkdtemp(prefix="vllm-wrapper-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        # Stale files from a previous run would be summed into the new one.
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.makedirs(metrics_dir, exist_ok=True)

    import uvicorn

    from .logs import log_config

    uvicorn.run(
        "vllm_wrapper:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=log_config(settings.log_level),
        access_log=False,
        server_header=False,
        loop="uvloop",
        http="httptools",
        # A drained worker must not be killed before VLLM_WRAPPER_DRAIN_TIMEOUT.
        timeout_graceful_shutdown=int(settings.drain_timeout) + 5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
