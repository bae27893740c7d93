"""The store: every SQL statement mailpipe runs lives in this package.

SQLite in WAL mode behind two connections, each used from worker threads one
call at a time (a ``CapacityLimiter(1)`` per connection): one writer and one
reader. Every public method is async and runs its SQL in a thread, so the
event loop never blocks on the disk.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import trio

from mailpipe.errors import StoreError
from mailpipe.status import STAT_NAMES, Status
from mailpipe.store.schema import migrate
from mailpipe.timeutil import from_db, to_db

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class NewMessage:
    """One message of a POST: a content and its recipients."""

    topic_id: str
    subject: str
    content: str
    emails: Sequence[str]
    scheduled_at: datetime | None = None


@dataclass(frozen=True)
class Claimed:
    """A request row the scheduler moved to PROCESSING."""

    id: int
    topic_id: str
    to: str
    content_id: int


@dataclass(frozen=True)
class Content:
    """A stored subject and HTML body, shared by many requests."""

    id: int
    subject: str
    html: str


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


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA cache_size=-65536")  # 64 MB
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class _Conn:
    """One sqlite3 connection, used by one worker thread at a time."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._limiter = trio.CapacityLimiter(1)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            try:
                return fn(self.conn)
            except sqlite3.Error as exc:
                if self.conn.in_transaction:
                    self.conn.rollback()
                raise StoreError(f"database error: {exc}") from exc

        return await trio.to_thread.run_sync(call, limiter=self._limiter)


class Store:
    """Durable state of requests, contents and results."""

    def __init__(self, writer: sqlite3.Connection, reader: sqlite3.Connection) -> None:
        self._w = _Conn(writer)
        self._r = _Conn(reader)

    # -- ingest ------------------------------------------------------------

    async def insert_messages(self, messages: Sequence[NewMessage], now: datetime) -> InsertResult:
        """Store every message and its recipients in one transaction (all or nothing)."""
        now_text = to_db(now)

        def txn(conn: sqlite3.Connection) -> InsertResult:
            count = 0
            due_now = False
            conn.execute("BEGIN IMMEDIATE")
            for msg in messages:
                when = msg.scheduled_at if msg.scheduled_at and msg.scheduled_at > now else now
                due_now = due_now or when <= now
                (content_id,) = conn.execute(
                    "INSERT INTO email_contents (subject, content, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?) RETURNING id",
                    (msg.subject, msg.content, now_text, now_text),
                ).fetchone()
                when_text = to_db(when)
                conn.executemany(
                    'INSERT INTO email_requests (topic_id, "to", content_id, scheduled_at,'
                    " status, created_at, updated_at) VALUES (?, ?, ?, ?, 0, ?, ?)",
                    (
                        (msg.topic_id, to, content_id, when_text, now_text, now_text)
                        for to in msg.emails
                    ),
                )
                count += len(msg.emails)
            conn.execute("COMMIT")
            return InsertResult(count, due_now)

        return await self._w.run(txn)

    # -- sending -----------------------------------------------------------

    async def claim_due(self, now: datetime, limit: int) -> list[Claimed]:
        """Move up to ``limit`` due CREATED rows to PROCESSING, lowest id first."""
        sql = (
            "UPDATE email_requests SET status = 1, updated_at = ?1 WHERE id IN ("
            " SELECT id FROM email_requests WHERE status = 0 AND scheduled_at <= ?1"
            " AND deleted_at IS NULL ORDER BY id LIMIT ?2)"
            ' RETURNING id, topic_id, "to", content_id'
        )

        def claim(conn: sqlite3.Connection) -> list[Claimed]:
            rows = conn.execute(sql, (to_db(now), limit)).fetchall()
            return sorted((Claimed(*row) for row in rows), key=lambda c: c.id)

        return await self._w.run(claim)

    async def next_scheduled_at(self) -> datetime | None:
        """When the earliest CREATED row falls due, or None when there is none."""

        def query(conn: sqlite3.Connection) -> datetime | None:
            (first,) = conn.execute(
                "SELECT MIN(scheduled_at) FROM email_requests"
                " WHERE status = 0 AND deleted_at IS NULL"
            ).fetchone()
            return from_db(first) if first else None

        return await self._r.run(query)

    async def load_contents(self, ids: Iterable[int]) -> dict[int, Content]:
        """The contents with these ids."""
        wanted = sorted(set(ids))

        def query(conn: sqlite3.Connection) -> dict[int, Content]:
            marks = ",".join("?" * len(wanted))
            rows = conn.execute(
                f"SELECT id, subject, content FROM email_contents WHERE id IN ({marks})", wanted
            ).fetchall()
            return {row[0]: Content(*row) for row in rows}

        return await self._r.run(query) if wanted else {}

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: datetime) -> int:
        """Write outcomes of PROCESSING rows in one transaction; returns rows changed."""
        now_text = to_db(now)

        def txn(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.executemany(
                "UPDATE email_requests SET status = ?, message_id = COALESCE(?, message_id),"
                " error = ?, attempts = attempts + ?, updated_at = ? WHERE id = ? AND status = 1",
                (
                    (int(o.status), o.message_id, o.error, o.attempts, now_text, o.request_id)
                    for o in outcomes
                ),
            )
            conn.execute("COMMIT")
            return cur.rowcount

        return await self._w.run(txn) if outcomes else 0

    async def requeue_processing(self, now: datetime) -> int:
        """Return every PROCESSING row to CREATED (shutdown, crash recovery)."""

        def txn(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE email_requests SET status = 0, updated_at = ? WHERE status = 1",
                (to_db(now),),
            ).rowcount

        return await self._w.run(txn)

    async def max_request_id(self, topic_id: str) -> int | None:
        """The highest request id of the topic, or None when it has none."""

        def query(conn: sqlite3.Connection) -> int | None:
            (upto,) = conn.execute(
                "SELECT MAX(id) FROM email_requests WHERE topic_id = ?", (topic_id,)
            ).fetchone()
            return int(upto) if upto is not None else None

        return await self._r.run(query)

    async def stop_topic(
        self, topic_id: str, upto: int, *, exclude: Sequence[int], now: datetime
    ) -> int:
        """Move the topic's CREATED/PROCESSING rows (ids up to ``upto``, not in
        ``exclude``) to STOPPED; returns how many."""

        def txn(conn: sqlite3.Connection) -> int:
            marks = ",".join("?" * len(exclude))
            skip = f" AND id NOT IN ({marks})" if exclude else ""
            return conn.execute(
                "UPDATE email_requests SET status = 4, error = 'stopped', updated_at = ?"
                f" WHERE topic_id = ? AND id <= ? AND status IN (0, 1){skip}",
                (to_db(now), topic_id, upto, *exclude),
            ).rowcount

        return await self._w.run(txn)

    async def count_sent_since(self, since: datetime) -> int:
        """How many requests reached SENT at or after ``since``."""

        def query(conn: sqlite3.Connection) -> int:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM email_requests WHERE status = 2 AND updated_at >= ?",
                (to_db(since),),
            ).fetchone()
            return int(n)

        return await self._r.run(query)

    # -- queries -----------------------------------------------------------

    async def topic_stats(self, topic_id: str) -> dict[str, object]:
        """Counts of the topic's requests per status and of its results per event type."""

        def query(conn: sqlite3.Connection) -> dict[str, object]:
            request: dict[str, int] = {name: 0 for name in STAT_NAMES.values()}
            rows = conn.execute(
                "SELECT status, COUNT(*) FROM email_requests"
                " WHERE topic_id = ? AND deleted_at IS NULL GROUP BY status",
                (topic_id,),
            ).fetchall()
            for status, n in rows:
                request[STAT_NAMES[Status(status)]] = n
            total = sum(request.values())
            statuses = dict(
                conn.execute(
                    "SELECT r.status, COUNT(DISTINCT r.request_id) FROM email_results r"
                    " JOIN email_requests q ON q.id = r.request_id"
                    " WHERE q.topic_id = ? GROUP BY r.status",
                    (topic_id,),
                ).fetchall()
            )
            return {"request": {"total": total, **request}, "result": {"statuses": statuses}}

        return await self._r.run(query)

    async def ping(self) -> None:
        """Raise :class:`StoreError` unless the database answers."""
        await self._r.run(lambda conn: conn.execute("SELECT 1").fetchone())


@asynccontextmanager
async def open_store(path: Path) -> AsyncIterator[Store]:
    """Open (creating and migrating as needed) the database at ``path``."""

    def setup() -> tuple[sqlite3.Connection, sqlite3.Connection]:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = _connect(path)
        try:
            old, new = migrate(writer)
        except BaseException:
            writer.close()
            raise
        if old != new:
            log.info("database %s migrated from schema %d to %d", path, old, new)
        return writer, _connect(path)

    try:
        writer, reader = await trio.to_thread.run_sync(setup)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    try:
        yield Store(writer, reader)
    finally:
        writer.close()
        reader.close()
