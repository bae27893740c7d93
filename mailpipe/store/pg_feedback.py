"""PostgreSQL SQL for feedback, suppressions, opens/clicks and idempotency keys.

Each function runs in the caller's transaction on a pooled connection and
means what its SQLite twin in :mod:`mailpipe.store.feedback`,
:mod:`mailpipe.store.tracking` or :mod:`mailpipe.store.idempotency` means; the
decisions (which request a record is about, what it suppresses, what a stored
key answers) are those modules' pure functions, so both stores agree. A change
other instances must apply (a new suppression, a lifted one) is published as a
cluster event in the same transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from mailpipe.addresses import address_key
from mailpipe.model import FeedbackOutcome, IdempotencyKey, Suppression
from mailpipe.store.feedback import (
    RESULT_COLUMNS,
    SUPPRESSION_COLUMNS,
    check_reason,
    feedback_outcome,
    match_recipients,
    result_rows,
    result_values,
    suppression_of_row,
    suppression_page,
    suppressions_of,
)
from mailpipe.store.idempotency import KEEP, answer_of, answer_text
from mailpipe.store.pg_cluster import publish_in
from mailpipe.store.pg_pool import Conn
from mailpipe.store.tracking import UNSUBSCRIBE
from mailpipe.store.webhooks import POSTGRES, enqueue_request_events
from mailpipe.webhooks.events import feedback_events, tracking_event, unsubscribe_suppressed

if TYPE_CHECKING:
    from mailpipe.feedback.ses_events import SesEvent


_CORRELATE: Final = (
    'SELECT id, "to", message_id = %(ses)s, id = %(hint)s FROM email_requests'
    " WHERE message_id = %(ses)s OR id = %(hint)s"
)
"""The requests with an event's SES message id or its hinted id, and which each is."""
_UNSUBSCRIBE: Final = (
    'WITH r AS (SELECT id, "to" FROM email_requests WHERE id = %(id)s),'
    " added AS (INSERT INTO suppressions (address, reason, source, request_id, created_at)"
    " SELECT lower(trim(\"to\")), 'unsubscribe', %(source)s, id, %(now)s FROM r"
    " ON CONFLICT (address) DO NOTHING RETURNING address),"
    " result AS (INSERT INTO email_results"
    " (request_id, status, raw, created_at, updated_at, recipient)"
    ' SELECT id, %(status)s, %(raw)s, %(now)s, %(now)s, "to" FROM r)'
    " SELECT address FROM added"
)
"""Suppress a request's recipient and add its result in one statement; the address
when it was newly suppressed."""

# -- SES feedback ----------------------------------------------------------------


def record_event(
    conn: Conn, sns_message_id: str, event: SesEvent, now: datetime
) -> FeedbackOutcome:
    """Store one verified SES record and its suppressions, once per SNS MessageId.

    A racing duplicate waits on the first one's ``sns_messages`` row and then
    stores nothing. Old MessageIds are pruned by the store's upkeep.
    """
    fresh = conn.execute(
        "INSERT INTO sns_messages (message_id, created_at) VALUES (%s, %s)"
        " ON CONFLICT (message_id) DO NOTHING",
        (sns_message_id, now),
    ).rowcount
    if not fresh:
        return FeedbackOutcome(duplicate=True)
    found = conn.execute(
        _CORRELATE, {"ses": event.ses_message_id or None, "hint": event.request_id_hint}
    ).fetchall()
    candidates = [(rid, to) for rid, to, by_ses, _ in found if by_ses]
    hinted = next(((rid, to) for rid, to, _, by_hint in found if by_hint), None)
    matches = match_recipients(event, candidates, hinted)
    rows = result_rows(matches)
    # In request order: each first result of a type takes its result_firsts key,
    # and two records about the same requests then take them in the same order.
    ordered = sorted(rows, key=lambda m: (m[0] is None, m[0] or 0))
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO email_results ({RESULT_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            result_values(event, sns_message_id, ordered, now),
        )
    wanted = suppressions_of(event, matches)
    source = event.ses_message_id or sns_message_id
    added = [
        (rid, stored, reason)
        for rid, rcpt, reason in wanted
        if (stored := add_suppression(conn, rcpt, reason, source, rid, now, publish=False))
    ]
    if added:
        publish_in(conn, "suppress", {"entries": [[a, r] for _, a, r in added]})
    enqueue_request_events(conn, POSTGRES, feedback_events(
        event.event_type, event.ses_message_id, event.raw, sns_message_id, rows, added
    ), now)
    return feedback_outcome(rows, len(added), wanted)


# -- suppressions ----------------------------------------------------------------


def add_suppression(
    conn: Conn,
    address: str,
    reason: str,
    source: str | None,
    request_id: int | None,
    now: datetime,
    *,
    publish: bool = True,
) -> str | None:
    """Suppress ``address``: the address as stored when new, None when it already was
    (the first reason is kept). With ``publish``, the other instances are told."""
    check_reason(reason)
    row = conn.execute(
        "INSERT INTO suppressions (address, reason, source, request_id, created_at)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (address) DO NOTHING"
        " RETURNING address",
        (address_key(address), reason, source, request_id, now),
    ).fetchone()
    if row is None:
        return None
    if publish:
        publish_in(conn, "suppress", {"entries": [[row[0], reason]]})
    return str(row[0])


def get_suppression(conn: Conn, address: str) -> Suppression | None:
    """The suppression of ``address`` (any case), or None."""
    row = conn.execute(
        f"SELECT {SUPPRESSION_COLUMNS} FROM suppressions"
        " WHERE address = %s",
        (address_key(address),),
    ).fetchone()
    return suppression_of_row(row) if row else None


def delete_suppression(conn: Conn, address: str) -> bool:
    """Lift the suppression of ``address`` (announced as a ``lift`` event); False
    when there was none."""
    lifted = conn.execute(
        "DELETE FROM suppressions WHERE address = %s", (address_key(address),)
    ).rowcount == 1
    if lifted:
        publish_in(conn, "lift", {"address": address})
    return lifted


def list_suppressions(
    conn: Conn, limit: int, before: int | None
) -> tuple[list[Suppression], int | None]:
    """Up to ``limit`` suppressions, newest first, with ids below ``before``; and the
    next page's cursor (None on the last page)."""
    rows = conn.execute(
        f"SELECT {SUPPRESSION_COLUMNS} FROM suppressions WHERE id < %s ORDER BY id DESC LIMIT %s",
        (before if before is not None else 2**63 - 1, limit + 1),
    ).fetchall()
    return suppression_page(rows, limit)


# -- opens, clicks, unsubscribes -------------------------------------------------


def record_result(conn: Conn, request_id: int, status: str, raw: str, now: datetime) -> bool:
    """Add a ``status`` result to the request, and its webhook event; False when there
    is no such request."""
    if conn.execute(
        "INSERT INTO email_results (request_id, status, raw, created_at, updated_at, recipient)"
        ' SELECT id, %s, %s, %s, %s, "to" FROM email_requests WHERE id = %s',
        (status, raw, now, now, request_id),
    ).rowcount != 1:
        return False
    enqueue_request_events(conn, POSTGRES, tracking_event(request_id, status, raw), now)
    return True


def recipient_of(conn: Conn, request_id: int) -> str | None:
    """The ``to`` address of the request, or None when there is no such request."""
    row = conn.execute('SELECT "to" FROM email_requests WHERE id = %s', (request_id,)).fetchone()
    return str(row[0]) if row else None


def unsubscribe(conn: Conn, request_id: int, source: str, raw: str, now: datetime) -> bool:
    """Suppress the request's recipient (``unsubscribe``) and add an ``Unsubscribe``
    result; False when the address was suppressed already (or there is no request)."""
    row = conn.execute(
        _UNSUBSCRIBE,
        {"id": request_id, "source": source, "raw": raw, "now": now, "status": UNSUBSCRIBE},
    ).fetchone()
    if recipient_of(conn, request_id) is not None:  # the statement added its result
        enqueue_request_events(conn, POSTGRES, tracking_event(request_id, UNSUBSCRIBE, raw), now)
    if row is None:
        return False
    publish_in(conn, "suppress", {"entries": [[row[0], "unsubscribe"]]})
    enqueue_request_events(conn, POSTGRES, [unsubscribe_suppressed(request_id, source)], now)
    return True


# -- idempotency keys ------------------------------------------------------------


def earlier_answer(conn: Conn, key: IdempotencyKey, now: datetime) -> dict[str, Any] | None:
    """The answer remembered for ``key`` within 24 h, or None; raises
    :class:`~mailpipe.errors.KeyReused` when it came with another body."""
    row = conn.execute(
        "SELECT body_sha256, response FROM idempotency_keys WHERE key = %s AND created_at >= %s",
        (key.key, now - KEEP),
    ).fetchone()
    return answer_of(key, row)


def claim_key(conn: Conn, key: IdempotencyKey, now: datetime) -> dict[str, Any] | None:
    """Take ``key`` for this transaction, or return the answer given for it earlier.

    The key's row is written first: an instance racing with the same key waits
    on its lock, then sees the committed answer and replays it. Raises
    :class:`~mailpipe.errors.KeyReused` for a key used with another body.
    """
    conn.execute("DELETE FROM idempotency_keys WHERE created_at < %s", (now - KEEP,))
    taken = conn.execute(
        "INSERT INTO idempotency_keys (key, body_sha256, response, created_at)"
        " VALUES (%s, %s, '', %s) ON CONFLICT (key) DO NOTHING",
        (key.key, key.body_sha256, now),
    ).rowcount
    return None if taken else earlier_answer(conn, key, now)


def remember_answer(conn: Conn, key: IdempotencyKey, answer: dict[str, Any]) -> None:
    """Store the answer of a key taken by :func:`claim_key` in this transaction."""
    conn.execute(
        "UPDATE idempotency_keys SET response = %s WHERE key = %s", (answer_text(answer), key.key)
    )
