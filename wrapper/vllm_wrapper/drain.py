"""Graceful drain on SIGTERM: stop taking work (503 + Connection: close, /ready
fails), let in-flight requests and streams finish, then hand the signal to
uvicorn so it shuts down. VLLM_WRAPPER_DRAIN_TIMEOUT bounds the wait."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

log = logging.getLogger("vllm_wrapper.drain")


class Drain:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.draining = False
        self.in_flight = 0
        self._previous: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def install(self) -> None:
        """Take over SIGTERM from uvicorn (only possible in the main thread)."""
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)
        try:
            loop.add_signal_handler(signal.SIGTERM, self.start)
        except (RuntimeError, ValueError, NotImplementedError):
            log.debug("cannot install SIGTERM handler here; no graceful drain")
            return
        self._previous = previous
        self._loop = loop

    def start(self) -> None:
        if self.draining:
            return
        self.draining = True
        log.info("SIGTERM received: draining", extra={"fields": {"in_flight": self.in_flight}})
        assert self._loop is not None
        self._task = self._loop.create_task(self._finish())

    async def _finish(self) -> None:
        deadline = time.monotonic() + self.timeout
        while self.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        log.info("drain finished, shutting down",
                 extra={"fields": {"in_flight": self.in_flight}})
        assert self._loop is not None
        self._loop.remove_signal_handler(signal.SIGTERM)
        previous = self._previous
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)
            previous(signal.SIGTERM, None)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
