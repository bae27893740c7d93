"""SQL of the reputation guard, for both engines: the window's figures and stored pauses.

Each function takes the connection it runs on (sqlite3 or psycopg, in a worker
thread) and ``pg``: whether it is PostgreSQL (``%s`` parameters, times as
datetimes) rather than SQLite (``?``, times as text). Every count reads one
partial index over the window: a topic's SENT rows by time
(``idx_email_requests_topic_sent``), the account's permanent bounces and
complaints by time (``idx_email_results_reputation``), never the whole table.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from mailpipe.model import Figures, Pause
from mailpipe.status import Status
from mailpipe.store import webhooks as _webhooks
from mailpipe.timeutil import from_db, to_db
from mailpipe.webhooks.events import RequestEvent, feedback_events, topic_paused

_TOPIC_SENDS: Final = (
    f"SELECT count(*) FROM email_requests WHERE status = {Status.SENT:d}"
    " AND topic_id = ? AND updated_at >= ?"
)
_ACCOUNT_SENDS: Final = (
    f"SELECT count(*) FROM email_requests WHERE status = {Status.SENT:d} AND updated_at >= ?"
)
_BAD: Final = "(r.bounce_type = 'Permanent' OR r.status = 'Complaint')"
_COUNTS: Final = (
    "count(DISTINCT CASE WHEN r.bounce_type = 'Permanent' THEN r.request_id END),"
    " count(DISTINCT CASE WHEN r.status = 'Complaint' THEN r.request_id END)"
)
_TOPIC_BAD: Final = (
    f"SELECT {_COUNTS} FROM email_results r JOIN email_requests q ON q.id = r.request_id"
    f" WHERE {_BAD} AND r.created_at >= ? AND q.topic_id = ?"
)
_ACCOUNT_BAD: Final = f"SELECT {_COUNTS} FROM email_results r WHERE {_BAD} AND r.created_at >= ?"
_PAUSE_COLUMNS: Final = "reason, paused_by, paused_at, sends, bounces, complaints"
_MATCH_EARLY: Final = (
    "UPDATE email_results SET request_id = ?, updated_at = ?"
    " WHERE ses_message_id = ? AND request_id IS NULL"
    " RETURNING status, raw, recipient, sns_message_id"
)
_ANY_UNMATCHED: Final = (
    "SELECT 1 FROM email_results WHERE request_id IS NULL AND ses_message_id IS NOT NULL LIMIT 1"
)


PAUSED_LOOKAHEAD: Final = 10_000
"""Pending rows the next-due-time query reads past while topics are paused: beyond
that many paused rows at the head of the queue, the scheduler's poll finds the rest."""
NOT_PAUSED: Final = (
    " AND NOT EXISTS (SELECT 1 FROM topic_pauses p WHERE p.topic_id = email_requests.topic_id)"
)
"""Rows of a paused topic stay CREATED: claims and the next due time pass them by.
The stores use the queries with this filter only while some topic is paused, so
that without pauses their plans stay exactly the index walks."""
ANY_PAUSED: Final = "SELECT EXISTS (SELECT 1 FROM topic_pauses)"
NEXT_SCHEDULED_PAUSED: Final = (
    "SELECT w.scheduled_at FROM (SELECT scheduled_at, topic_id FROM email_requests"
    f" WHERE status = {Status.CREATED:d} AND deleted_at IS NULL"
    f" ORDER BY scheduled_at, id LIMIT {PAUSED_LOOKAHEAD}) w"
    " WHERE NOT EXISTS (SELECT 1 FROM topic_pauses p WHERE p.topic_id = w.topic_id) LIMIT 1"
)
"""The earliest due time of a row no pause holds (the first by the pending index)."""


def _q(sql: str, pg: bool) -> str:
    return sql.replace("?", "%s") if pg else sql


def _t(moment: datetime, pg: bool) -> Any:
    return moment if pg else to_db(moment)


def reputation(conn: Any, topic_id: str | None, since: datetime, pg: bool) -> Figures:
    """The topic's figures (the account's when ``topic_id`` is None) since ``since``."""
    when = _t(since, pg)
    if topic_id is None:
        (sends,) = conn.execute(_q(_ACCOUNT_SENDS, pg), (when,)).fetchone()
        bounces, complaints = conn.execute(_q(_ACCOUNT_BAD, pg), (when,)).fetchone()
    else:
        (sends,) = conn.execute(_q(_TOPIC_SENDS, pg), (topic_id, when)).fetchone()
        bounces, complaints = conn.execute(_q(_TOPIC_BAD, pg), (when, topic_id)).fetchone()
    return Figures(int(sends), int(bounces or 0), int(complaints or 0))


def topics_of(conn: Any, request_ids: Sequence[int], pg: bool) -> list[str]:
    """The distinct topics of these requests (requests without a topic left out)."""
    if not request_ids:
        return []
    marks = ",".join("?" * len(request_ids))
    rows = conn.execute(
        _q(f"SELECT DISTINCT topic_id FROM email_requests WHERE id IN ({marks})"
           " AND topic_id IS NOT NULL", pg),
        tuple(request_ids),
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


def match_early_feedback(
    conn: Any, sent: Sequence[tuple[int, str]], now: datetime, pg: bool
) -> int:
    """Give feedback stored before its send's message id was recorded its request:
    ``sent`` holds (request id, SES message id) of sends just recorded; how many
    results were matched. Each matched result's webhook event is made now, with
    its request and topic (none was made while it had neither). Cheap when there is none
    (one probe of a partial index)."""
    if not sent or conn.execute(_ANY_UNMATCHED).fetchone() is None:
        return 0
    when = _t(now, pg)
    events: list[RequestEvent] = []
    matched = 0
    for request_id, message_id in sent:
        for status, raw, recipient, sns_id in conn.execute(
            _q(_MATCH_EARLY, pg), (request_id, when, message_id)
        ).fetchall():
            matched += 1
            events += feedback_events(status, message_id, raw, sns_id or "",
                                      [(request_id, recipient)], [])  # fmt: skip
    if events:
        _webhooks.enqueue_request_events(conn, _webhooks.POSTGRES if pg else _webhooks.SQLITE,
                                         events, now)  # fmt: skip
    return matched


def _pause_of(row: tuple[Any, ...] | None) -> Pause | None:
    if row is None:
        return None
    at = row[2]
    moment = from_db(at) if isinstance(at, str) else at.astimezone(UTC)
    return Pause(row[0], row[1], moment, Figures(int(row[3]), int(row[4]), int(row[5])))


def _pause_values(pause: Pause, pg: bool) -> tuple[Any, ...]:
    f = pause.figures
    return (pause.reason, pause.by, _t(pause.at, pg), f.sends, f.bounces, f.complaints)


def save_topic_pause(conn: Any, topic_id: str, pause: Pause, pg: bool) -> bool:
    """Store the topic's pause and its ``topic.paused`` webhook event, for an open
    transaction; False (nothing changed) when it was paused already."""
    if not conn.execute(
        _q(f"INSERT INTO topic_pauses (topic_id, {_PAUSE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
           " ON CONFLICT (topic_id) DO NOTHING", pg),
        (topic_id, *_pause_values(pause, pg)),
    ).rowcount:
        return False
    event = topic_paused(topic_id, pause.reason, pause.by, pause.figures.to_json(), pause.at)
    _webhooks.enqueue(conn, _webhooks.POSTGRES if pg else _webhooks.SQLITE, [event], pause.at)
    return True


def delete_topic_pause(conn: Any, topic_id: str, pg: bool) -> bool:
    """Forget the topic's pause; False when it had none."""
    return bool(
        conn.execute(_q("DELETE FROM topic_pauses WHERE topic_id = ?", pg), (topic_id,)).rowcount
    )


def topic_pause(conn: Any, topic_id: str, pg: bool) -> Pause | None:
    """The topic's stored pause, or None."""
    return _pause_of(conn.execute(
        _q(f"SELECT {_PAUSE_COLUMNS} FROM topic_pauses WHERE topic_id = ?", pg), (topic_id,)
    ).fetchone())


def paused_topics(conn: Any) -> list[str]:
    """Every paused topic."""
    return [str(r[0]) for r in conn.execute("SELECT topic_id FROM topic_pauses").fetchall()]


def save_account_pause(conn: Any, pause: Pause, pg: bool) -> bool:
    """Store the account's pause; False when it was paused already."""
    return bool(conn.execute(
        _q(f"INSERT INTO account_pauses (id, {_PAUSE_COLUMNS}) VALUES (1, ?, ?, ?, ?, ?, ?)"
           " ON CONFLICT (id) DO NOTHING", pg),
        _pause_values(pause, pg),
    ).rowcount)


def delete_account_pause(conn: Any) -> bool:
    """Forget the account's pause; False when it had none."""
    return bool(conn.execute("DELETE FROM account_pauses").rowcount)


def account_pause(conn: Any) -> Pause | None:
    """The account's stored pause, or None."""
    return _pause_of(
        conn.execute(f"SELECT {_PAUSE_COLUMNS} FROM account_pauses WHERE id = 1").fetchone()
    )
