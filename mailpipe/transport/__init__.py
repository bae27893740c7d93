"""Transports hand finished emails to a provider. One small interface:

``send(emails, release_at)`` takes up to ``max_batch`` emails and returns, in
order, one :class:`SendResult` per email. ``release_at`` (a ``time.perf_counter``
value) is the rate limiter's permit: the transport prepares the call, then
holds it until that moment, so the request leaves on schedule however long
building it took; a :class:`Release` also reports when the call really
left, to the limiter. It blocks (it is called in a worker thread) and
never raises for a per-email failure: it returns a result holding a classified
:class:`~mailpipe.errors.SendError`. Exceptions escape only for bugs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mailpipe.errors import SendError


@dataclass(frozen=True)
class Email:
    """One finished email for one recipient, as the transport sends it."""

    request_id: int
    sender: str
    to: str
    subject: str
    html: str
    text: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    content_id: int = 0
    extra: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class SendResult:
    """The outcome of one email: a provider message id, or the error."""

    message_id: str | None = None
    error: SendError | None = None


class Transport(Protocol):
    """Something that can deliver emails; see the module docstring."""

    name: str
    max_batch: int

    def send(self, emails: Sequence[Email], release_at: float | None = None) -> list[SendResult]:
        """Deliver ``emails`` (1 to ``max_batch``, same content); one result each, in order."""
        ...

    def account_blocker(self) -> str | None:
        """Why the account cannot send right now, or None when it can (blocking)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class Release(float):
    """A ``time.perf_counter`` moment to send at, which also reports lateness.

    A worker thread can reach the moment late (the GIL, a busy machine); the
    call then leaves late, and ``on_late(seconds)`` is told so right away, from
    that thread.
    """

    on_late: Callable[[float], None]

    def __new__(cls, at: float, on_late: Callable[[float], None]) -> Release:
        release = super().__new__(cls, at)
        release.on_late = on_late
        return release


def hold_until(release_at: float | None) -> None:
    """Block the calling (worker) thread until ``release_at`` on ``time.perf_counter``."""
    if release_at is not None:
        delay = release_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if isinstance(release_at, Release):
            late = time.perf_counter() - release_at
            if late > 0:
                release_at.on_late(late)


def request_headers(request_id: int) -> tuple[tuple[str, str], ...]:
    """Headers every email carries so feedback maps back to its request."""
    return (("X-Request-ID", str(request_id)),)


def request_tags(request_id: int) -> tuple[tuple[str, str], ...]:
    """SES message tags every email carries (ASCII letters, digits, ``_``, ``-`` only)."""
    return (("request_id", str(request_id)),)
