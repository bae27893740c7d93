"""SQL for SES feedback and the suppression list (used through :class:`mailpipe.store.Store`).

Each function takes the connection it runs on and is called in a worker thread.
Addresses on the suppression list are stored by
:func:`~mailpipe.addresses.address_key` (for the ASCII addresses requests hold,
what SQL's ``lower()`` gives, so the list and the ``claim_due`` lookup agree
on what "the same address" is):
SES, Gmail, Outlook and practically every mailbox provider treat the local part
case-insensitively, and wrongly not sending to ``Bob@x`` after ``bob@x``
complained is much cheaper than sending to a complainer again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from mailpipe.addresses import address_key
from mailpipe.model import SUPPRESSION_REASONS, FeedbackOutcome, Suppression
from mailpipe.store.webhooks import SQLITE, enqueue_request_events
from mailpipe.timeutil import from_db, to_db
from mailpipe.webhooks.events import feedback_events

if TYPE_CHECKING:
    from mailpipe.feedback.ses_events import SesEvent

SNS_DEDUPE_KEEP: Final = timedelta(days=7)
"""How long processed SNS MessageIds are remembered (SNS refuses to be older than an hour)."""


Match = tuple[int | None, str | None]
"""(request id or None, recipient or None) for one affected recipient."""


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    conn.execute("COMMIT")


def record_event_in_transaction(
    conn: sqlite3.Connection, sns_message_id: str, event: SesEvent, now: datetime
) -> FeedbackOutcome:
    """Store one verified SES record and its suppressions, once per SNS MessageId,
    inside a transaction the caller opened."""
    now_text = to_db(now)
    fresh = conn.execute(
        "INSERT INTO sns_messages (message_id, created_at) VALUES (?, ?)"
        " ON CONFLICT (message_id) DO NOTHING",
        (sns_message_id, now_text),
    ).rowcount
    if not fresh:
        return FeedbackOutcome(duplicate=True)  # nothing written; the commit is empty
    conn.execute("DELETE FROM sns_messages WHERE created_at < ?", (to_db(now - SNS_DEDUPE_KEEP),))
    matches = correlate(conn, event)
    rows = result_rows(matches)
    # A record that matches no request is stored with request_id NULL rather
    # than dropped: SES only reports mail this account sent (before an
    # upgrade, by another sender on the configuration set, or before the
    # message id was recorded), it stays auditable, SNS stops retrying, and
    # the volume is bounded by our own sends.
    conn.executemany(
        f"INSERT INTO email_results ({RESULT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        result_values(event, sns_message_id, rows, now_text),
    )
    wanted = suppressions_of(event, matches)
    source = event.ses_message_id or sns_message_id
    added = [entry for entry in wanted if add_suppression(conn, entry[1], entry[2], source,
                                                          entry[0], now)]
    enqueue_request_events(conn, SQLITE, feedback_events(
        event.event_type, event.ses_message_id, event.raw, sns_message_id, rows, added
    ), now)
    return feedback_outcome(rows, len(added), wanted)


RESULT_COLUMNS: Final = (
    "request_id, status, raw, created_at, updated_at,"
    " sns_message_id, ses_message_id, recipient, bounce_type, bounce_subtype"
)
"""The columns of an SES feedback result row, in :func:`result_values`' order."""


def result_values(
    event: SesEvent, sns_message_id: str, rows: list[Match], now: object
) -> list[tuple[object, ...]]:
    """The :data:`RESULT_COLUMNS` values of each result row (``now`` as the store keeps times)."""
    return [
        (
            rid,
            event.event_type,
            event.raw,
            now,
            now,
            sns_message_id,
            event.ses_message_id,
            rcpt,
            event.bounce_type,
            event.bounce_subtype,
        )
        for rid, rcpt in rows
    ]


def suppressions_of(event: SesEvent, matches: list[Match]) -> list[tuple[int | None, str, str]]:
    """(request id, address, reason) of each recipient the record suppresses:
    every one of a complaint or a permanent bounce, none otherwise."""
    reason = "complaint" if event.complaint else "bounce" if event.permanent_bounce else None
    if reason is None:
        return []
    return [(rid, rcpt, reason) for rid, rcpt in matches if rcpt is not None]


def feedback_outcome(
    rows: list[Match], added: int, wanted: list[tuple[int | None, str, str]]
) -> FeedbackOutcome:
    """What storing a record did: its result rows, how many matched a request,
    suppressions added, and every (address, reason) it suppresses."""
    return FeedbackOutcome(
        results=len(rows),
        matched=sum(rid is not None for rid, _ in rows),
        suppressed=added,
        suppressions=tuple((rcpt, reason) for _, rcpt, reason in wanted),
        request_ids=tuple(rid for rid, _ in rows if rid is not None),
    )


def correlate(conn: sqlite3.Connection, event: SesEvent) -> list[Match]:
    """The request of each affected recipient (None where no request matches).

    First by the stored SES message id (one request: that one; several, as with
    bulk sends: the one whose ``to`` equals the recipient, case-insensitively),
    then by the request-id hint when that request's ``to`` is the recipient.
    """
    candidates: list[tuple[int, str]] = []
    if event.ses_message_id:
        candidates = conn.execute(
            'SELECT id, "to" FROM email_requests WHERE message_id = ?', (event.ses_message_id,)
        ).fetchall()
    hinted: tuple[int, str] | None = None
    if event.request_id_hint is not None:
        hinted = conn.execute(
            'SELECT id, "to" FROM email_requests WHERE id = ?', (event.request_id_hint,)
        ).fetchone()
    return match_recipients(event, candidates, hinted)


def match_recipients(
    event: SesEvent, candidates: list[tuple[int, str]], hinted: tuple[int, str] | None
) -> list[Match]:
    """The request of each affected recipient, given the (id, to) of the requests
    with the event's SES message id and of the hinted request (see :func:`correlate`)."""
    matches: list[Match] = []
    for rcpt in event.recipients or (None,):
        rid = _by_message_id(candidates, rcpt)
        if rid is None and hinted is not None and (rcpt is None or _same(hinted[1], rcpt)):
            rid = hinted[0]
        matches.append((rid, rcpt))
    return matches


def _by_message_id(candidates: list[tuple[int, str]], rcpt: str | None) -> int | None:
    if len(candidates) == 1:
        return candidates[0][0]
    for rid, to in candidates:
        if rcpt is not None and _same(to, rcpt):
            return rid
    return None


def _same(a: str, b: str) -> bool:
    return address_key(a) == address_key(b)


def result_rows(matches: list[Match]) -> list[Match]:
    """One row per matched request (its first recipient), one per unmatched recipient."""
    seen: set[int] = set()
    rows: list[Match] = []
    for rid, rcpt in matches:
        if rid is None:
            rows.append((rid, rcpt))
        elif rid not in seen:
            seen.add(rid)
            rows.append((rid, rcpt))
    return rows


def add_suppression(
    conn: sqlite3.Connection,
    address: str,
    reason: str,
    source: str | None,
    request_id: int | None,
    now: datetime,
) -> bool:
    """Suppress ``address``; False when it already was (the first reason is kept)."""
    check_reason(reason)
    return (
        conn.execute(
            "INSERT INTO suppressions (address, reason, source, request_id, created_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (address) DO NOTHING",
            (address_key(address), reason, source, request_id, to_db(now)),
        ).rowcount
        == 1
    )


def check_reason(reason: str) -> None:
    """Raise ValueError unless ``reason`` is a suppression reason."""
    if reason not in SUPPRESSION_REASONS:
        raise ValueError(f"unknown suppression reason {reason!r}")


SUPPRESSION_COLUMNS: Final = "id, address, reason, source, request_id, created_at"
"""The columns :func:`suppression_of_row` reads."""


def suppression_of_row(row: tuple[Any, ...]) -> Suppression:
    """A :class:`Suppression` from its :data:`SUPPRESSION_COLUMNS` (time as text or datetime)."""
    when = row[5]
    created = from_db(when) if isinstance(when, str) else when.astimezone(UTC)
    return Suppression(row[0], row[1], row[2], row[3], row[4], created)


def get_suppression(conn: sqlite3.Connection, address: str) -> Suppression | None:
    """The suppression of ``address`` (any case), or None."""
    row = conn.execute(
        f"SELECT {SUPPRESSION_COLUMNS} FROM suppressions WHERE address = ?",
        (address_key(address),),
    ).fetchone()
    return suppression_of_row(row) if row else None


def delete_suppression(conn: sqlite3.Connection, address: str) -> bool:
    """Lift the suppression of ``address``; False when there was none."""
    return (
        conn.execute("DELETE FROM suppressions WHERE address = ?", (address_key(address),)).rowcount
        == 1
    )


def list_suppressions(
    conn: sqlite3.Connection, limit: int, before: int | None
) -> tuple[list[Suppression], int | None]:
    """Up to ``limit`` suppressions, newest first, with ids below ``before``; and the
    cursor of the next page (None on the last page)."""
    rows = conn.execute(
        f"SELECT {SUPPRESSION_COLUMNS} FROM suppressions WHERE id < ? ORDER BY id DESC LIMIT ?",
        (before if before is not None else 2**63 - 1, limit + 1),
    ).fetchall()
    return suppression_page(rows, limit)


def suppression_page(
    rows: list[tuple[Any, ...]], limit: int
) -> tuple[list[Suppression], int | None]:
    """The first ``limit`` of up to ``limit + 1`` rows (newest first) as a page, and
    the next page's cursor (None when no row was left over)."""
    page = [suppression_of_row(row) for row in rows[:limit]]
    return page, (page[-1].id if len(rows) > limit else None)
