"""Graceful drain on SIGTERM: stop taking work (503 + Connection: close, /ready
fails), let in-flight requests and streams finish, then hand the signal to
uvicorn so it shuts down. VLLM_WRAPPER_DRAIN_TIMEOUT bounds the wait."""

from __future__ import annotations

import asyncio
import logging
import signal
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
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

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
        self._idle = asyncio.Event()
        if self.in_flight > 0:
            try:
                await asyncio.wait_for(self._idle.wait(), self.timeout)
            except TimeoutError:
                log.warning("drain timeout reached with requests still in flight")
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
