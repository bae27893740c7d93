"""SQL for webhook endpoints, the event outbox, deliveries and attempts, on both engines.

Each function runs in the caller's transaction on the connection it is given
(a ``sqlite3.Connection`` or a psycopg one) and takes the engine's
:class:`Dialect`. :func:`enqueue` and :func:`enqueue_request_events` are the
outbox writers: called inside the transaction that stores a change (feedback,
a tracked open, a send outcome, a topic pause), they add an event and one
delivery per enabled endpoint that wants it, or nothing at all (one read of
the small endpoints table) when no endpoint does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from mailpipe.timeutil import from_db, to_db
from mailpipe.webhooks.events import (
    Event,
    RequestEvent,
    Subscription,
    fan_out,
    request_event,
    wanted_types,
)
from mailpipe.webhooks.model import (
    PENDING,
    AttemptView,
    Claim,
    DeliveryView,
    Endpoint,
    Verdict,
)
from mailpipe.webhooks.model import Attempt as AttemptResult

Conn = Any
"""A DB-API connection of either engine (``execute`` returning a cursor)."""


@dataclass(frozen=True)
class Dialect:
    """How one engine spells parameters, times and row locks."""

    placeholder: str
    write_time: Callable[[datetime], object]
    skip_locked: str
    """Appended to the claim's inner SELECT (PostgreSQL: ``FOR UPDATE ... SKIP LOCKED``)."""

    def q(self, sql: str) -> str:
        """``sql`` written with ``?`` in this engine's parameter style."""
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def t(self, moment: datetime | None) -> object:
        """``moment`` as this engine stores it (None stays None)."""
        return None if moment is None else self.write_time(moment)

    def many(self, conn: Conn, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """Run ``sql`` (``?`` style) once per row of ``rows``."""
        if self.placeholder == "?":
            conn.executemany(sql, rows)
        else:
            with conn.cursor() as cur:
                cur.executemany(self.q(sql), rows)


def read_time(value: object) -> datetime | None:
    """A stored time (SQLite text or a PostgreSQL datetime) as aware UTC, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return from_db(value)
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


def _time(value: object) -> datetime:
    moment = read_time(value)
    assert moment is not None
    return moment


SQLITE: Final = Dialect("?", to_db, "")
POSTGRES: Final = Dialect("%s", lambda moment: moment, " FOR UPDATE OF d SKIP LOCKED")

ENDPOINT_COLUMNS: Final = (
    "id, url, events, topic_id, description, enabled, disabled_reason, failing_since,"
    " created_at, updated_at, secret, old_secret, old_secret_until"
)
_E_COLUMNS: Final = ", ".join(f"e.{c.strip()}" for c in ENDPOINT_COLUMNS.split(","))


def endpoint_of_row(row: Sequence[Any]) -> Endpoint:
    """An :class:`Endpoint` from its :data:`ENDPOINT_COLUMNS`."""
    return Endpoint(
        id=row[0],
        url=row[1],
        events=tuple(json.loads(row[2])),
        topic_id=row[3],
        description=row[4],
        enabled=bool(row[5]),
        disabled_reason=row[6],
        failing_since=read_time(row[7]),
        created_at=_time(row[8]),
        updated_at=_time(row[9]),
        secret=row[10],
        old_secret=row[11],
        old_secret_until=read_time(row[12]),
    )


# -- the outbox writers ------------------------------------------------------------


def subscriptions(conn: Conn, d: Dialect) -> list[Subscription]:
    """What every enabled endpoint asked for."""
    rows = conn.execute(
        d.q("SELECT id, events, topic_id FROM webhook_endpoints WHERE enabled = ?"), (True,)
    ).fetchall()
    return [Subscription(r[0], frozenset(json.loads(r[1])), r[2]) for r in rows]


def enqueue(
    conn: Conn, d: Dialect, events: Sequence[Event], now: datetime,
    subs: Sequence[Subscription] | None = None,
) -> int:
    """Store each event some enabled endpoint wants, with one delivery per such
    endpoint, due now; how many deliveries. For an existing transaction."""
    subs = subscriptions(conn, d) if subs is None else subs
    pairs = fan_out(events, subs)
    if not pairs:
        return 0
    when = d.t(now)
    wanted = sorted({i for i, _ in pairs})
    d.many(
        conn,
        "INSERT INTO webhook_events (event_id, type, body, created_at) VALUES (?, ?, ?, ?)",
        [(events[i].id, events[i].type, events[i].body, when) for i in wanted],
    )
    d.many(
        conn,
        "INSERT INTO webhook_deliveries (event, endpoint_id, next_attempt_at, created_at,"
        " updated_at) SELECT id, ?, ?, ?, ? FROM webhook_events WHERE event_id = ?",
        [(endpoint, when, when, when, events[i].id) for i, endpoint in pairs],
    )
    return len(pairs)


def enqueue_request_events(
    conn: Conn, d: Dialect, items: Iterable[RequestEvent], now: datetime
) -> int:
    """:func:`enqueue` the events about requests, each completed from its request's
    row (topic, recipient, SES message id). Reads only the endpoints when none
    wants these types (``items`` is then not even iterated). For an existing
    transaction."""
    subs = subscriptions(conn, d)
    if not subs:
        return 0
    types = wanted_types(subs)
    wanted = [item for item in items if item.type in types]
    if not wanted:
        return 0
    ids = sorted({item.request_id for item in wanted if item.request_id is not None})
    rows: dict[int, tuple[str | None, str | None, str | None]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        for rid, topic, to, message_id in conn.execute(
            d.q(f'SELECT id, topic_id, "to", message_id FROM email_requests WHERE id IN ({marks})'),
            chunk,
        ).fetchall():
            rows[rid] = (topic, to, message_id)
    events = [
        request_event(item, now, rows.get(item.request_id) if item.request_id else None)
        for item in wanted
    ]
    return enqueue(conn, d, events, now, subs)


# -- endpoints ---------------------------------------------------------------------


def create_endpoint(conn: Conn, d: Dialect, ep: Endpoint) -> None:
    """Store a new endpoint."""
    conn.execute(
        d.q(f"INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
        (
            ep.id, ep.url, json.dumps(list(ep.events)), ep.topic_id, ep.description, ep.enabled,
            ep.disabled_reason, d.t(ep.failing_since), d.t(ep.created_at), d.t(ep.updated_at),
            ep.secret, ep.old_secret, d.t(ep.old_secret_until),
        ),
    )


def get_endpoint(conn: Conn, d: Dialect, endpoint_id: str) -> Endpoint | None:
    """The endpoint with this id, or None."""
    row = conn.execute(
        d.q(f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?"), (endpoint_id,)
    ).fetchone()
    return endpoint_of_row(row) if row else None


def list_endpoints(conn: Conn, d: Dialect) -> list[Endpoint]:
    """Every endpoint, oldest first."""
    rows = conn.execute(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id"
    ).fetchall()
    return [endpoint_of_row(r) for r in rows]


def save_endpoint(conn: Conn, d: Dialect, ep: Endpoint) -> bool:
    """Write every field of ``ep`` over its stored row; False when there is none."""
    cur = conn.execute(
        d.q("UPDATE webhook_endpoints SET url = ?, events = ?, topic_id = ?, description = ?,"
            " enabled = ?, disabled_reason = ?, failing_since = ?, updated_at = ?, secret = ?,"
            " old_secret = ?, old_secret_until = ? WHERE id = ?"),
        (
            ep.url, json.dumps(list(ep.events)), ep.topic_id, ep.description, ep.enabled,
            ep.disabled_reason, d.t(ep.failing_since), d.t(ep.updated_at), ep.secret,
            ep.old_secret, d.t(ep.old_secret_until), ep.id,
        ),
    )
    return bool(cur.rowcount == 1)


def delete_endpoint(conn: Conn, d: Dialect, endpoint_id: str) -> bool:
    """Delete the endpoint with its deliveries and attempts; False when there was none."""
    conn.execute(d.q("DELETE FROM webhook_deliveries WHERE endpoint_id = ?"), (endpoint_id,))
    cur = conn.execute(d.q("DELETE FROM webhook_endpoints WHERE id = ?"), (endpoint_id,))
    return bool(cur.rowcount == 1)


# -- delivery ----------------------------------------------------------------------

_CLAIM: Final = (
    "UPDATE webhook_deliveries SET lease_until = ? WHERE id IN ("
    " SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id"
    f" WHERE d.state = '{PENDING}' AND d.next_attempt_at <= ? AND e.enabled = ?"
    " AND (d.lease_until IS NULL OR d.lease_until < ?)"
    " ORDER BY d.next_attempt_at, d.id LIMIT ?{lock}) RETURNING id"
)
_CLAIMED: Final = (
    "SELECT d.id, v.event_id, v.body, d.attempts, v.created_at, " + _E_COLUMNS +
    " FROM webhook_deliveries d JOIN webhook_events v ON v.id = d.event"
    " JOIN webhook_endpoints e ON e.id = d.endpoint_id WHERE d.id IN ({marks}) ORDER BY d.id"
)


def claim(conn: Conn, d: Dialect, now: datetime, limit: int, lease_until: datetime) -> list[Claim]:
    """Lease up to ``limit`` due deliveries of enabled endpoints until ``lease_until``
    (PostgreSQL: skipping rows another instance is claiming); what to send."""
    ids = [
        r[0]
        for r in conn.execute(
            d.q(_CLAIM.format(lock=d.skip_locked)),
            (d.t(lease_until), d.t(now), True, d.t(now), limit),
        ).fetchall()
    ]
    if not ids:
        return []
    rows = conn.execute(
        d.q(_CLAIMED.format(marks=", ".join("?" * len(ids)))), ids
    ).fetchall()
    return [Claim(r[0], r[1], r[2], r[3], _time(r[4]), endpoint_of_row(r[5:])) for r in rows]


def record_attempt(
    conn: Conn, d: Dialect, c: Claim, attempt: AttemptResult, verdict: Verdict, now: datetime
) -> bool:
    """Store an attempt of a claimed delivery and what it decided (the delivery's state
    and next attempt, the endpoint failing, recovered or disabled); True when the
    endpoint was disabled by it."""
    when = d.t(now)
    conn.execute(
        d.q("INSERT INTO webhook_attempts (delivery, attempted_at, status_code, latency_ms,"
            " response, error, outcome, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
        (
            c.delivery_id, when, attempt.status_code, attempt.latency_ms, attempt.response,
            attempt.error, verdict.outcome, d.t(verdict.next_attempt_at),
        ),
    )
    conn.execute(
        d.q("UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1,"
            " next_attempt_at = COALESCE(?, next_attempt_at), lease_until = NULL,"
            " updated_at = ? WHERE id = ?"),
        (verdict.state, d.t(verdict.next_attempt_at), when, c.delivery_id),
    )
    if verdict.outcome == "delivered":
        conn.execute(
            d.q("UPDATE webhook_endpoints SET failing_since = NULL"
                " WHERE id = ? AND failing_since IS NOT NULL"),
            (c.endpoint.id,),
        )
        return False
    conn.execute(
        d.q("UPDATE webhook_endpoints SET failing_since = ?"
            " WHERE id = ? AND failing_since IS NULL"),
        (when, c.endpoint.id),
    )
    if verdict.disable_reason is None:
        return False
    cur = conn.execute(
        d.q("UPDATE webhook_endpoints SET enabled = ?, disabled_reason = ?, updated_at = ?"
            " WHERE id = ? AND enabled = ?"),
        (False, verdict.disable_reason, when, c.endpoint.id, True),
    )
    return bool(cur.rowcount == 1)


def release_leases(conn: Conn, d: Dialect) -> int:
    """Forget every lease (SQLite at start-up: no other instance holds one); how many."""
    cur = conn.execute(
        "UPDATE webhook_deliveries SET lease_until = NULL WHERE lease_until IS NOT NULL"
    )
    return int(cur.rowcount)


def pending_times(conn: Conn, d: Dialect) -> tuple[datetime | None, datetime | None]:
    """When the oldest pending delivery was created, and when the next pending one
    of an enabled endpoint falls due (each None when there is none)."""
    (oldest,) = conn.execute(
        f"SELECT min(created_at) FROM webhook_deliveries WHERE state = '{PENDING}'"
    ).fetchone()
    (due,) = conn.execute(
        d.q("SELECT min(d.next_attempt_at) FROM webhook_deliveries d"
            " JOIN webhook_endpoints e ON e.id = d.endpoint_id"
            f" WHERE d.state = '{PENDING}' AND e.enabled = ?"),
        (True,),
    ).fetchone()
    return read_time(oldest), read_time(due)


def prune(conn: Conn, d: Dialect, before: datetime) -> int:
    """Forget events older than ``before`` with no delivery pending (their deliveries
    and attempts go with them); how many."""
    cur = conn.execute(
        d.q("DELETE FROM webhook_events WHERE created_at < ? AND NOT EXISTS ("
            " SELECT 1 FROM webhook_deliveries d WHERE d.event = webhook_events.id"
            f" AND d.state = '{PENDING}')"),
        (d.t(before),),
    )
    return int(cur.rowcount)


def retry_delivery(conn: Conn, d: Dialect, endpoint_id: str, event_id: str, now: datetime) -> bool:
    """Make the endpoint's delivery of the event due now (pending again, whatever its
    state); False when there is no such delivery."""
    cur = conn.execute(
        d.q(f"UPDATE webhook_deliveries SET state = '{PENDING}', next_attempt_at = ?,"
            " lease_until = NULL, updated_at = ? WHERE endpoint_id = ?"
            " AND event = (SELECT id FROM webhook_events WHERE event_id = ?)"),
        (d.t(now), d.t(now), endpoint_id, event_id),
    )
    return bool(cur.rowcount == 1)


def list_deliveries(
    conn: Conn, d: Dialect, endpoint_id: str, limit: int, history: int
) -> list[DeliveryView]:
    """The endpoint's ``limit`` most recent deliveries, newest first, each with up to
    ``history`` of its latest attempts."""
    rows = conn.execute(
        d.q("SELECT d.id, v.event_id, v.type, d.state, d.attempts, d.next_attempt_at,"
            " d.created_at FROM webhook_deliveries d JOIN webhook_events v ON v.id = d.event"
            " WHERE d.endpoint_id = ? ORDER BY d.id DESC LIMIT ?"),
        (endpoint_id, limit),
    ).fetchall()
    views = []
    for did, event_id, kind, state, attempts, nxt, created in rows:
        tried = conn.execute(
            d.q("SELECT attempted_at, status_code, latency_ms, response, error, outcome,"
                " next_attempt_at FROM webhook_attempts WHERE delivery = ?"
                " ORDER BY id DESC LIMIT ?"),
            (did, history),
        ).fetchall()
        views.append(DeliveryView(
            event_id, kind, state, attempts, read_time(nxt) if state == PENDING else None,
            _time(created),
            tuple(
                AttemptView(_time(a[0]), a[1], float(a[2]), a[3], a[4], a[5], read_time(a[6]))
                for a in tried
            ),
        ))
    return views
