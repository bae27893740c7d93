"""The pause gate: closed while the provider account cannot send."""

from __future__ import annotations

import logging

import trio

log = logging.getLogger(__name__)


class PauseGate:
    """Open by default; :meth:`pause` closes it until :meth:`resume`."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._open = trio.Event()
        self._open.set()
        self._paused = trio.Event()

    @property
    def paused(self) -> bool:
        """True while sending is held."""
        return self.reason is not None

    def pause(self, reason: str) -> None:
        """Hold all sending; logs once per pause."""
        if self.reason is None:
            log.error("sending paused: %s (held requests stay pending)", reason)
            self._open = trio.Event()
            self._paused.set()
        self.reason = reason

    def resume(self) -> None:
        """Let sending continue."""
        if self.reason is not None:
            log.warning("sending resumed after pause (%s)", self.reason)
            self.reason = None
            self._paused = trio.Event()
            self._open.set()

    async def wait_open(self) -> None:
        """Return when sending is allowed."""
        if self.reason is not None:
            await self._open.wait()

    async def wait_paused(self) -> None:
        """Return when sending is paused."""
        await self._paused.wait()
