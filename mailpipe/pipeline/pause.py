"""The pause gate: closed while sending must be held, for one or more causes.

Causes are independent: the SES account (``account``: paused, suspended, out
of quota), the reputation guard's stored account pause (``reputation``, see
:mod:`mailpipe.pipeline.pauses`) and this instance's hold on the database
(``database``: its lease may be lapsing). Sending resumes when no cause is left. An account pause is
announced to the other instances on the same database (see
:mod:`mailpipe.pipeline.cluster`) through ``announce``, a channel the gate's owner reads.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import trio

log = logging.getLogger(__name__)

ACCOUNT: Final = "account"
DATABASE: Final = "database"
REPUTATION: Final = "reputation"
Announcement = tuple[str, dict[str, Any]]
"""(event kind, payload): ``("pause", {"reason": …})`` or ``("resume", {})``."""


class PauseGate:
    """Open by default; :meth:`pause` closes it until every cause is resumed."""

    def __init__(self, announce: trio.MemorySendChannel[Announcement] | None = None) -> None:
        self._reasons: dict[str, str] = {}
        self._paused = trio.Event()
        self._announce = announce

    @property
    def paused(self) -> bool:
        """True while sending is held."""
        return bool(self._reasons)

    @property
    def reason(self) -> str | None:
        """Why sending is held (every cause), or None."""
        return "; ".join(self._reasons.values()) or None

    def pause(self, reason: str, *, cause: str = ACCOUNT, announce: bool = True) -> None:
        """Hold all sending for ``cause``; logs once per pause.

        An account pause is announced to the other instances unless
        ``announce`` is False (it came from one of them).
        """
        if cause not in self._reasons:
            log.error("sending paused: %s (held requests stay pending)", reason)
            self._paused.set()
            if cause == ACCOUNT and announce:
                self._tell(("pause", {"reason": reason}))
        self._reasons[cause] = reason

    def resume(self, *, cause: str = ACCOUNT, announce: bool = True) -> None:
        """Lift the pause of ``cause``; sending continues when no cause is left."""
        reason = self._reasons.pop(cause, None)
        if reason is None:
            return
        log.warning("sending resumed after pause (%s)", reason)
        if not self._reasons:
            self._paused = trio.Event()
        if cause == ACCOUNT and announce:
            self._tell(("resume", {}))

    def paused_for(self, cause: str) -> bool:
        """Whether ``cause`` holds sending."""
        return cause in self._reasons

    async def wait_paused(self) -> None:
        """Return when sending is paused."""
        await self._paused.wait()

    def _tell(self, announcement: Announcement) -> None:
        if self._announce is None:
            return
        try:
            self._announce.send_nowait(announcement)
        except trio.WouldBlock:
            log.warning("pause announcement dropped (queue full): %s", announcement[0])
