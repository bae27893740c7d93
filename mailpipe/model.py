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
    request_ids: tuple[int, ...] = ()
    """The requests the record matched."""


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


@dataclass(frozen=True)
class Figures:
    """Sends, permanent bounces and complaints over the reputation window.

    Bounces and complaints count distinct requests, as SES counts recipients.
    """

    sends: int = 0
    bounces: int = 0
    complaints: int = 0

    @property
    def bounce_rate(self) -> float:
        """Permanent bounces per send (0 without sends)."""
        return self.bounces / self.sends if self.sends else 0.0

    @property
    def complaint_rate(self) -> float:
        """Complaints per send (0 without sends)."""
        return self.complaints / self.sends if self.sends else 0.0

    def to_json(self) -> dict[str, Any]:
        """The figures as the API and the webhooks show them."""
        return {
            "sends": self.sends,
            "bounces": self.bounces,
            "complaints": self.complaints,
            "bounceRate": self.bounce_rate,
            "complaintRate": self.complaint_rate,
        }


PAUSED_BY: Final = ("auto", "user")
"""Who paused a topic or the account: the reputation guard, or a user by API."""


@dataclass(frozen=True)
class Pause:
    """A stored pause of a topic or of the whole account: why, by whom, when, and
    the figures it was taken on."""

    reason: str
    by: str
    at: datetime
    figures: Figures
