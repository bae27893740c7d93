"""The values webhook delivery moves between the store, the actor and the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

PENDING: Final = "pending"
DELIVERED: Final = "delivered"
FAILED: Final = "failed"
"""Delivery states: waiting for an (other) attempt, done, or given up after the window."""

RETRY: Final = "retry"
GONE: Final = "gone"
"""Attempt outcomes besides ``delivered`` and ``failed``: tried again later; 410 (disables)."""


@dataclass(frozen=True)
class Endpoint:
    """A registered webhook endpoint (its secrets are never shown after creation)."""

    id: str
    url: str
    events: tuple[str, ...]
    topic_id: str | None
    description: str | None
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime
    secret: str
    old_secret: str | None = None
    old_secret_until: datetime | None = None

    def signing_secrets(self, now: datetime) -> tuple[str, ...]:
        """The secrets that sign now: the current one, and the previous one during
        its overlap after a rotation."""
        if self.old_secret and self.old_secret_until is not None and now < self.old_secret_until:
            return (self.secret, self.old_secret)
        return (self.secret,)


@dataclass(frozen=True)
class Claim:
    """A delivery this instance leased: what to send, where, and its history so far."""

    delivery_id: int
    event_id: str
    body: str
    attempts: int
    created_at: datetime
    endpoint: Endpoint


@dataclass(frozen=True)
class Attempt:
    """What one POST got: a status code (None: no response), latency, the first
    bytes of the body, or the error that stopped it."""

    status_code: int | None
    latency_ms: float
    response: str = ""
    error: str | None = None


@dataclass(frozen=True)
class Verdict:
    """What to store after an attempt: its outcome, the delivery's state and next
    attempt, and the reason the endpoint is disabled by it (None: it is not)."""

    outcome: str
    state: str
    next_attempt_at: datetime | None
    disable_reason: str | None = None


@dataclass(frozen=True)
class AttemptView:
    """One stored attempt, as the deliveries API shows it."""

    attempted_at: datetime
    status_code: int | None
    latency_ms: float
    response: str | None
    error: str | None
    outcome: str
    next_attempt_at: datetime | None


@dataclass(frozen=True)
class DeliveryView:
    """One event's delivery to an endpoint and its attempts, newest first."""

    event_id: str
    type: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    history: tuple[AttemptView, ...]
