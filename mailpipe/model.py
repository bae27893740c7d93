"""The domain types: what moves between the HTTP edge, the pipeline and the store.

Plain frozen values with no I/O. Both stores (:mod:`mailpipe.store.sqlite`,
:mod:`mailpipe.store.postgres`) take and return these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from mailpipe.status import Status

SUPPRESSION_REASONS: Final = frozenset({"bounce", "complaint", "unsubscribe", "manual"})
"""Why an address is suppressed; ``manual``: added by hand (``POST /v1/suppressions``)."""


@dataclass(frozen=True)
class NewMessage:
    """One message of a POST: a content and its recipients."""

    topic_id: str
    subject: str
    content: str
    emails: Sequence[str]
    scheduled_at: datetime | None = None
    text: str | None = None
    track_opens: bool = True
    track_clicks: bool = True
    data: Sequence[str | None] | None = None
    """Per-recipient template data as JSON text, aligned with ``emails``; None for none."""

    def due_at(self, now: datetime) -> datetime:
        """When its requests fall due: ``scheduled_at``, or ``now`` when that is not later."""
        return self.scheduled_at if self.scheduled_at and self.scheduled_at > now else now


@dataclass(frozen=True)
class Claimed:
    """A request row the scheduler moved to PROCESSING."""

    id: int
    topic_id: str
    to: str
    content_id: int
    data: str | None = None
    """The recipient's template data (JSON text), None when it has none."""


@dataclass(frozen=True)
class Content:
    """A stored subject and HTML body (and text and tracking options), shared by many requests."""

    id: int
    subject: str
    html: str
    text: str | None = None
    track_opens: bool = True
    track_clicks: bool = True


@dataclass(frozen=True)
class Outcome:
    """The final word on one request: SENT, FAILED, STOPPED, or CREATED (requeue)."""

    request_id: int
    status: Status
    message_id: str | None = None
    error: str | None = None
    attempts: int = 0


@dataclass(frozen=True)
class InsertResult:
    """What an insert stored: how many requests, and whether any are due now."""

    count: int
    due_now: bool
    answer: dict[str, Any] | None = None
    """With an idempotency key: the answer remembered (built now, or earlier)."""
    replayed: bool = False
    """The key was used before with the same body: nothing was stored."""


@dataclass(frozen=True)
class Suppression:
    """An address mailpipe never sends to, and why."""

    id: int
    address: str
    reason: str
    source: str | None
    request_id: int | None
    created_at: datetime


@dataclass(frozen=True)
class FeedbackOutcome:
    """What storing one SNS notification did."""

    duplicate: bool = False
    results: int = 0
    matched: int = 0
    suppressed: int = 0
    suppressions: tuple[tuple[str, str], ...] = ()
    """(address, reason) of each recipient the record suppresses, new or not."""


@dataclass(frozen=True)
class IdempotencyKey:
    """An ``Idempotency-Key`` and the SHA-256 (hex) of the body it came with.

    ``answer`` builds the response to remember from the count of requests
    stored; it runs inside the transaction, just before the commit.
    """

    key: str
    body_sha256: str
    answer: Callable[[int], dict[str, Any]]


@dataclass(frozen=True)
class Recovery:
    """What a recovery of claimed rows did: rows stopped (their topic was
    stopped) and rows returned to the queue."""

    stopped: int = 0
    requeued: int = 0
