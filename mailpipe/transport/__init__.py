"""Transports hand finished emails to a provider. One small interface:

``send(emails, release)`` takes up to ``max_batch`` emails and returns, in
order, one :class:`SendResult` per email. ``release`` is the rate limiter's
permit: the transport prepares the call, then holds it until that moment
(:func:`hold_until`), so the request leaves on schedule however long
building it took, and reports to the limiter when the call really left. It
blocks (it is called in a worker thread) and never raises for a per-email
failure: it returns a result holding a classified
:class:`~mailpipe.errors.SendError`. Exceptions escape only for bugs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mailpipe.errors import ReleaseMissed, SendError


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


@dataclass(frozen=True)
class AccountState:
    """What the provider says of the account (``GetAccount`` on SES); None where
    the transport cannot know. ``error`` says why the provider did not answer."""

    max_24_hour_send: float | None = None
    max_send_rate: float | None = None
    sent_last_24_hours: float | None = None
    enforcement_status: str | None = None
    sending_enabled: bool | None = None
    error: str | None = None


class Transport(Protocol):
    """Something that can deliver emails; see the module docstring."""

    name: str
    max_batch: int

    def send(self, emails: Sequence[Email], release: Release | None = None) -> list[SendResult]:
        """Deliver ``emails`` (1 to ``max_batch``, same content); one result each, in order."""
        ...

    def account_blocker(self) -> str | None:
        """Why the account cannot send right now, or None when it can (blocking)."""
        ...

    def account_state(self) -> AccountState:
        """The account's quota and standing as the provider reports it (blocking;
        a failure is the state's ``error``, never raised)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@dataclass(frozen=True)
class Release:
    """When to send (``at``, a ``time.perf_counter`` moment), and whom to tell
    if the call left late.

    A worker thread can reach the moment late (the GIL, a busy machine); the
    call then leaves late, and ``on_late(seconds)`` is told so right away, from
    that thread (with a slack, also when it left on time). Later than ``slack``
    seconds, it must not leave at all.
    """

    at: float
    on_late: Callable[[float], None]
    slack: float | None = None


def hold_until(release: Release | float | None) -> None:
    """Block the calling (worker) thread until the release moment (``time.perf_counter``).

    Raises :class:`~mailpipe.errors.ReleaseMissed` when the moment passed more
    than the release's slack ago: the transport answers that for every email
    of the call, none of which left.
    """
    if release is None:
        return
    at = release.at if isinstance(release, Release) else release
    delay = at - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    if isinstance(release, Release):
        late = time.perf_counter() - at
        if release.slack is not None and late > release.slack:
            raise ReleaseMissed("ReleaseMissed", f"{late * 1000:.1f} ms after the permit")
        if late > 0 or release.slack is not None:
            release.on_late(max(late, 0.0))  # with a slack, also "on time": see Permit


def request_headers(request_id: int) -> tuple[tuple[str, str], ...]:
    """Headers every email carries so feedback maps back to its request."""
    return (("X-Request-ID", str(request_id)),)


def request_tags(request_id: int) -> tuple[tuple[str, str], ...]:
    """SES message tags every email carries (ASCII letters, digits, ``_``, ``-`` only)."""
    return (("request_id", str(request_id)),)
