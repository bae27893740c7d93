"""SQL for what recipients do: opens, clicks, unsubscribes (through :class:`mailpipe.store.Store`).

Each function takes the connection it runs on (in a worker thread, or on the
event loop for a small group commit). A result row is written only for a
request that exists; its ``recipient`` is the request's ``to``. Unsubscribing
reuses the suppression list of :mod:`mailpipe.store.feedback`.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Final

from mailpipe.store.feedback import add_suppression, transaction
from mailpipe.store.webhooks import SQLITE, enqueue_request_events
from mailpipe.timeutil import to_db
from mailpipe.webhooks.events import tracking_event, unsubscribe_suppressed

OPEN: Final = "Open"
CLICK: Final = "Click"
UNSUBSCRIBE: Final = "Unsubscribe"

_INSERT_RESULT: Final = (
    "INSERT INTO email_results (request_id, status, raw, created_at, updated_at, recipient)"
    ' SELECT id, ?2, ?3, ?4, ?4, "to" FROM email_requests WHERE id = ?1'
)


def record_result(
    conn: sqlite3.Connection, request_id: int, status: str, raw: str, now: datetime
) -> bool:
    """Add a ``status`` result to the request, and its webhook event; False when there
    is no such request."""
    if conn.execute(_INSERT_RESULT, (request_id, status, raw, to_db(now))).rowcount != 1:
        return False
    enqueue_request_events(conn, SQLITE, tracking_event(request_id, status, raw), now)
    return True


def recipient_of(conn: sqlite3.Connection, request_id: int) -> str | None:
    """The ``to`` address of the request, or None when there is no such request."""
    row = conn.execute('SELECT "to" FROM email_requests WHERE id = ?', (request_id,)).fetchone()
    return str(row[0]) if row else None


def unsubscribe(
    conn: sqlite3.Connection, request_id: int, source: str, raw: str, now: datetime
) -> bool:
    """Suppress the request's recipient (reason ``unsubscribe``) and add an ``Unsubscribe``
    result, in one transaction; False when the address was suppressed already."""
    with transaction(conn):
        to = recipient_of(conn, request_id)
        if to is None:
            return False
        added = add_suppression(conn, to, "unsubscribe", source, request_id, now)
        record_result(conn, request_id, UNSUBSCRIBE, raw, now)
        if added:
            enqueue_request_events(conn, SQLITE, [unsubscribe_suppressed(request_id, source)], now)
    return added
