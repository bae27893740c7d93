"""Ingest on PostgreSQL: a POST's messages in one transaction, recipients by ``COPY``.

What it promises: :func:`insert_all` stores every message of a request or
none, takes its idempotency key first (so a racing duplicate on another
instance waits, then replays), and writes recipients as ``COPY`` text built in
large chunks: 100,000 recipients commit in about half a second here
(``scripts/pg_insert_bench.py``). Any address is stored exactly as given:
backslash, tab, CR and LF are escaped; a NULL address is refused by the server.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Final

from mailpipe.model import IdempotencyKey, InsertResult, NewMessage
from mailpipe.status import Status
from mailpipe.store import pg_feedback as _sql
from mailpipe.store.pg_counts import add_created
from mailpipe.store.pg_pool import Conn
from mailpipe.timeutil import to_db

COPY_CHUNK_ROWS: Final = 20_000
"""Recipients per ``copy.write``: a few MB of text per write, few enough calls
that Python's per-call cost vanishes, and no whole-request copy in memory."""

_COPY_ESCAPES: Final = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_REQUESTS: Final = (
    'COPY email_requests (topic_id, "to", content_id, scheduled_at, status,'
    " created_at, updated_at, data) FROM STDIN"
)


def insert_all(
    conn: Conn, messages: Sequence[NewMessage], now: datetime, key: IdempotencyKey | None
) -> InsertResult:
    """Store ``messages`` (in the caller's transaction), or replay ``key``'s answer."""
    if key is not None:
        earlier = _sql.claim_key(conn, key, now)
        if earlier is not None:
            conn.rollback()
            return InsertResult(0, False, earlier, replayed=True)
    due_now = False
    created: dict[str, int] = {}
    for msg in messages:
        when = msg.due_at(now)
        due_now = due_now or when <= now
        insert_message(conn, msg, when, now)
        if msg.topic_id is not None:
            created[msg.topic_id] = created.get(msg.topic_id, 0) + len(msg.emails)
    add_created(conn, created.items())  # the topics' counters: a row per topic, not per recipient
    count = sum(len(msg.emails) for msg in messages)
    answer = None
    if key is not None:
        answer = key.answer(count)
        _sql.remember_answer(conn, key, answer)
    return InsertResult(count, due_now, answer)


def copy_field(value: str | None) -> str:
    """``value`` as a field of ``COPY`` text (``\\N`` for NULL)."""
    return "\\N" if value is None else value.translate(_COPY_ESCAPES)


def request_copy_text(
    msg: NewMessage, content_id: int, when: datetime, now: datetime
) -> Iterator[str]:
    """``msg``'s request rows as ``COPY`` text, in chunks of :data:`COPY_CHUNK_ROWS` rows."""
    head = copy_field(msg.topic_id) + "\t"
    tail = f"\t{content_id}\t{to_db(when)}\t{Status.CREATED:d}\t{to_db(now)}\t{to_db(now)}\t"
    emails = msg.emails
    for start in range(0, len(emails), COPY_CHUNK_ROWS):
        part = emails[start : start + COPY_CHUNK_ROWS]
        if msg.data is None:
            yield _address_lines(part, head, tail + "\\N\n")
        else:
            data = msg.data[start : start + COPY_CHUNK_ROWS]
            yield "".join(
                [
                    head + copy_field(e) + tail + copy_field(d) + "\n"
                    for e, d in zip(part, data, strict=True)
                ]
            )


def _address_lines(emails: Sequence[str], head: str, end: str) -> str:
    """One ``COPY`` line ``head + address + end`` per address.

    Escapes all addresses in one pass over their NUL-joined text (three times
    faster than one by one); NUL cannot be in a PostgreSQL text, so it marks the
    joins unless an address brings its own (or is None: then one by one, and
    the server refuses the row).
    """
    try:
        joined = "\x00".join(emails)
    except TypeError:  # a None among them
        joined = None
    if not emails or joined is None or joined.count("\x00") != len(emails) - 1:
        return "".join([head + copy_field(e) + end for e in emails])
    return head + joined.translate(_COPY_ESCAPES).replace("\x00", end + head) + end


def insert_message(conn: Conn, msg: NewMessage, when: datetime, now: datetime) -> None:
    """Insert ``msg``'s content and (by ``COPY``) its requests."""
    row = conn.execute(
        "INSERT INTO email_contents (subject, content, created_at, updated_at, text,"
        " track_opens, track_clicks) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (msg.subject, msg.content, now, now, msg.text, msg.track_opens, msg.track_clicks),
    ).fetchone()
    assert row is not None
    if msg.data is not None and len(msg.data) != len(msg.emails):
        raise ValueError("data must be aligned with emails")
    with conn.cursor() as cur, cur.copy(_COPY_REQUESTS) as copy:
        for chunk in request_copy_text(msg, row[0], when, now):
            copy.write(chunk)
