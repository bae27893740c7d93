"""What a webhook event is: its types, its payload, and which endpoints want it (pure).

An event is built once, in the transaction that stores the change it reports,
and its body is stored as the exact bytes every attempt sends (the signature
covers them). Its id (``webhook-id``) is stable across retries and across the
endpoints it goes to, so a receiver deduplicates on it.

Payload (Standard Webhooks' shape)::

    {"type": "bounced", "timestamp": "2026-12-02T13:00:00.123456Z",
     "data": {"requestId": 7, "topicId": "t", "recipient": "a@x", "sesMessageId": "…",
              "details": {…}}}
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from mailpipe.model import Outcome
from mailpipe.status import Status
from mailpipe.timeutil import to_json

SENT: Final = "sent"
DELIVERED: Final = "delivered"
BOUNCED: Final = "bounced"
COMPLAINED: Final = "complained"
DELAYED: Final = "delayed"
REJECTED: Final = "rejected"
FAILED: Final = "failed"
OPENED: Final = "opened"
CLICKED: Final = "clicked"
UNSUBSCRIBED: Final = "unsubscribed"
SUPPRESSED: Final = "suppressed"
TOPIC_PAUSED: Final = "topic.paused"
ALL: Final = "*"

EVENT_TYPES: Final = (
    SENT, DELIVERED, BOUNCED, COMPLAINED, DELAYED, REJECTED, FAILED,
    OPENED, CLICKED, UNSUBSCRIBED, SUPPRESSED, TOPIC_PAUSED,
)  # fmt: skip
"""Every event type an endpoint may ask for (or ``*`` for all of them)."""

SES_TYPES: Final = {
    "Delivery": DELIVERED,
    "Bounce": BOUNCED,
    "Complaint": COMPLAINED,
    "DeliveryDelay": DELAYED,
    "Reject": REJECTED,
    "Rendering Failure": FAILED,
    "Open": OPENED,
    "Click": CLICKED,
    "Subscription": UNSUBSCRIBED,
}
"""The webhook type of each SES feedback type (``Send`` is reported by the outcome: ``sent``)."""

TRACKING_TYPES: Final = {"Open": OPENED, "Click": CLICKED, "Unsubscribe": UNSUBSCRIBED}
"""The webhook type of each result the tracking links record."""


@dataclass(frozen=True)
class Event:
    """One event, ready to store: its id, type, topic (for filters) and body."""

    id: str
    type: str
    topic_id: str | None
    body: str
    """The JSON text every attempt sends, byte for byte."""


@dataclass(frozen=True)
class RequestEvent:
    """An event about one request, before the request's row fills in its fields."""

    request_id: int | None
    type: str
    details: Mapping[str, Any] = field(default_factory=dict)
    recipient: str | None = None
    ses_message_id: str | None = None


@dataclass(frozen=True)
class Subscription:
    """What an enabled endpoint asked for: event types (or ``*``) and a topic, or any."""

    endpoint_id: str
    events: frozenset[str]
    topic_id: str | None

    def wants(self, event_type: str, topic_id: str | None) -> bool:
        """True when this endpoint receives an event of this type and topic."""
        if ALL not in self.events and event_type not in self.events:
            return False
        return self.topic_id is None or self.topic_id == topic_id


def new_event_id(now: datetime) -> str:
    """A fresh event id: ``evt_`` then the time in ms (hex, sortable) and 64 random bits."""
    return f"evt_{int(now.timestamp() * 1000):012x}{secrets.token_hex(8)}"


def build(event_type: str, now: datetime, topic_id: str | None, data: Mapping[str, Any]) -> Event:
    """An event of ``event_type`` at ``now`` with ``data``, under a new id."""
    body = json.dumps(
        {"type": event_type, "timestamp": to_json(now), "data": dict(data)},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return Event(new_event_id(now), event_type, topic_id, body)


def request_event(
    item: RequestEvent, now: datetime, row: tuple[str | None, str | None, str | None] | None
) -> Event:
    """The event ``item`` describes; ``row`` is its request's (topic id, to, SES message id)."""
    topic_id, to, message_id = row if row is not None else (None, None, None)
    data = {
        "requestId": item.request_id,
        "topicId": topic_id,
        "recipient": item.recipient or to,
        "sesMessageId": item.ses_message_id or message_id,
        "details": dict(item.details),
    }
    return build(item.type, now, topic_id, data)


def topic_paused(
    topic_id: str, reason: str, by: str, figures: Mapping[str, Any], now: datetime
) -> Event:
    """The ``topic.paused`` event: the topic paused itself (``by="auto"``) or was paused
    (``"user"``), with the figures (sends, bounces, rates, ...) behind it."""
    data = {"topicId": topic_id, "reason": reason, "by": by, "figures": dict(figures)}
    return build(TOPIC_PAUSED, now, topic_id, data)


def ses_details(event_type: str, raw: str) -> dict[str, Any]:
    """The SES record's own object for its type (``bounce``, ``delivery``, ...), as
    SES sent it, with ``sesEventType``; an unreadable record gives only the type."""
    details: dict[str, Any] = {"sesEventType": event_type}
    try:
        record = json.loads(raw)
    except ValueError:
        return details
    if isinstance(record, dict):
        for key, value in record.items():
            if key != "mail" and isinstance(value, dict):
                details[key] = value
    return details


def parse_events_filter(value: object) -> list[str]:
    """The ``events`` of a registration: a non-empty list of known types or ``*``,
    deduplicated in order; ValueError saying what is wrong."""
    if not isinstance(value, list) or not value:
        raise ValueError("events must be a non-empty array of event types or ['*']")
    known = (*EVENT_TYPES, ALL)
    wanted: list[str] = []
    for item in value:
        if not isinstance(item, str) or item not in known:
            raise ValueError(f"events: unknown event type {item!r}; known: {', '.join(known)}")
        if item not in wanted:
            wanted.append(item)
    return wanted


def wanted_types(subs: Iterable[Subscription]) -> frozenset[str]:
    """Every type at least one of ``subs`` receives (all of them for ``*``)."""
    types: set[str] = set()
    for sub in subs:
        types |= set(EVENT_TYPES) if ALL in sub.events else sub.events
    return frozenset(types)


def fan_out(events: Sequence[Event], subs: Sequence[Subscription]) -> list[tuple[int, str]]:
    """(index into ``events``, endpoint id) of every delivery the events make."""
    return [
        (i, sub.endpoint_id)
        for i, ev in enumerate(events)
        for sub in subs
        if sub.wants(ev.type, ev.topic_id)
    ]


def feedback_events(
    event_type: str,
    ses_message_id: str | None,
    raw: str,
    sns_message_id: str,
    rows: Sequence[tuple[int | None, str | None]],
    suppressed: Sequence[tuple[int | None, str, str]],
) -> list[RequestEvent]:
    """The events of one stored SES record: one per result row (request, recipient)
    with a request, of the type the SES type maps to, and ``suppressed`` for each
    address it newly suppressed ((request id, address, reason)).

    A row with no request yet (the record came before its send's message id was
    recorded) has its event made once it is matched
    (:func:`~mailpipe.store.guard_sql.match_early_feedback`), so a receiver gets
    one event, with its request and topic, not two. A record that never matches
    (mail another sender on the configuration set sent) is stored, not pushed."""
    kind = SES_TYPES.get(event_type)
    items: list[RequestEvent] = []
    if kind is not None:
        details = {**ses_details(event_type, raw), "snsMessageId": sns_message_id}
        items += [
            RequestEvent(rid, kind, details, rcpt, ses_message_id)
            for rid, rcpt in rows
            if rid is not None
        ]
    items += [
        RequestEvent(rid, SUPPRESSED, {"reason": reason, "source": ses_message_id}, rcpt,
                     ses_message_id)
        for rid, rcpt, reason in suppressed
    ]
    return items


def tracking_event(request_id: int, status: str, raw: str) -> list[RequestEvent]:
    """The event of a tracked ``Open``/``Click``/``Unsubscribe`` result (its details are
    the result's stored JSON: user agent, time, the link's URL)."""
    kind = TRACKING_TYPES.get(status)
    if kind is None:
        return []
    try:
        details = json.loads(raw)
    except ValueError:
        details = {}
    return [RequestEvent(request_id, kind, details if isinstance(details, dict) else {})]


def unsubscribe_suppressed(request_id: int, source: str) -> RequestEvent:
    """The ``suppressed`` event of a recipient who unsubscribed (``source``: one-click, page)."""
    return RequestEvent(request_id, SUPPRESSED, {"reason": "unsubscribe", "source": source})


def final_events(outcomes: Iterable[Outcome]) -> Iterator[RequestEvent]:
    """The ``sent`` / ``failed`` events of the final ones among send outcomes (lazily)."""
    kinds = {Status.SENT: SENT, Status.FAILED: FAILED}
    for o in outcomes:
        kind = kinds.get(o.status)
        if kind is not None:
            details = {"attempts": o.attempts, **({"error": o.error} if o.error else {})}
            yield RequestEvent(o.request_id, kind, details)
