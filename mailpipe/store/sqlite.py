"""The SQLite store: the embedded default, one mailpipe instance per database file.

An exclusive lock on ``<database>.lock`` (held for the life of the store,
taken before migrations or any other write) keeps a second instance out.
SQLite in WAL mode behind two connections, each used from worker threads one
call at a time (a ``CapacityLimiter(1)`` per connection): one writer and one
reader. Every public method is async and runs its SQL in a thread, so the
event loop never blocks on the disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import trio

from mailpipe.errors import StoreError, StoreInUse
from mailpipe.model import (
    Claimed,
    Content,
    FeedbackOutcome,
    Figures,
    IdempotencyKey,
    InsertResult,
    NewMessage,
    Outcome,
    Pause,
    Recovery,
    Suppression,
)
from mailpipe.status import Status
from mailpipe.store import activity as _activity
from mailpipe.store import feedback as _feedback
from mailpipe.store import guard_sql as _guard
from mailpipe.store import idempotency as _idempotency
from mailpipe.store import tracking as _tracking
from mailpipe.store import webhooks as _webhooks
from mailpipe.store.base import Activity, Cluster, TopicStats
from mailpipe.store.feedback import transaction
from mailpipe.store.group import GroupCommit
from mailpipe.store.health import FileIdentity, WriteHealth
from mailpipe.store.lockfile import LockFile
from mailpipe.store.schema import migrate
from mailpipe.store.webhook_tables import WebhookTables
from mailpipe.timeutil import from_db, to_db, utcnow
from mailpipe.webhooks.events import final_events

if TYPE_CHECKING:
    from mailpipe.feedback.ses_events import SesEvent

log = logging.getLogger(__name__)

T = TypeVar("T")


# Status codes are interpolated, not bound: the partial indexes (``WHERE status = 0``,
# ``WHERE status = 2``) serve a query only when it names the same constant. Claims,
# the wake-up and the next due time walk idx_email_requests_pending_due, by
# (scheduled_at, id): they read due rows only, however many wait for later. Each has
# a twin for when some topic is paused (mailpipe.store.guard_sql.NOT_PAUSED).
_ANY_DUE_SQL: Final = (
    f"SELECT 1 FROM email_requests WHERE status = {Status.CREATED:d} AND scheduled_at <= ?"
    " AND deleted_at IS NULL{paused} LIMIT 1"
)
_ANY_DUE: Final = _ANY_DUE_SQL.format(paused="")
_ANY_DUE_PAUSED: Final = _ANY_DUE_SQL.format(paused=_guard.NOT_PAUSED)
_CLAIM_SQL: Final = (
    f"UPDATE email_requests SET status = {Status.PROCESSING:d}, updated_at = ?1 WHERE id IN ("
    f" SELECT id FROM email_requests WHERE status = {Status.CREATED:d} AND scheduled_at <= ?1"
    " AND deleted_at IS NULL{paused} ORDER BY scheduled_at, id LIMIT ?2)"
    ' RETURNING id, topic_id, "to", content_id, data, '
)
_CLAIM: Final = _CLAIM_SQL.format(paused="")
_CLAIM_PAUSED: Final = _CLAIM_SQL.format(paused=_guard.NOT_PAUSED)
_STOP_SUPPRESSED: Final = (
    f"UPDATE email_requests SET status = {Status.STOPPED:d}, error = ?, updated_at = ? WHERE id = ?"
)
_NEXT_SCHEDULED: Final = (
    "SELECT MIN(scheduled_at) FROM email_requests"
    f" WHERE status = {Status.CREATED:d} AND deleted_at IS NULL"
)
_RECORD_OUTCOME: Final = (
    "UPDATE email_requests SET status = ?, message_id = COALESCE(?, message_id),"
    " error = ?, attempts = attempts + ?, updated_at = ? WHERE id = ?"
    f" AND status = {Status.PROCESSING:d}"
)
_ADD_CREATED: Final = (
    "INSERT INTO topic_counts (topic_id, status, n)"
    f" VALUES (?, {Status.CREATED:d}, ?)"
    " ON CONFLICT (topic_id, status) DO UPDATE SET n = n + excluded.n"
)
_TOPIC_COUNTS: Final = "SELECT status, n FROM topic_counts WHERE topic_id = ?"
_TOPIC_RESULT_COUNTS: Final = (
    "SELECT status, n FROM topic_result_counts WHERE topic_id = ? AND n > 0"
)
_COUNT_SENT_SINCE: Final = (
    f"SELECT COUNT(*) FROM email_requests WHERE status = {Status.SENT:d} AND updated_at >= ?"
)
_STOP_TOPIC: Final = (
    f"UPDATE email_requests SET status = {Status.STOPPED:d}, error = 'stopped', updated_at = ?"
    f" WHERE topic_id = ? AND id <= ? AND status IN ({Status.CREATED:d}, {Status.PROCESSING:d})"
    " AND id NOT IN (SELECT value FROM json_each(?))"
)
CHECKPOINT_AFTER_ROWS: Final = 10_000
"""After an insert of this many requests, call :meth:`SqliteStore.checkpoint` (off the
request's path) rather than wait for the periodic one."""
CHECKPOINT_INTERVAL: Final = 1.0
"""Seconds between WAL checkpoints (the writer never checkpoints itself)."""
BUSY_TIMEOUT_MS: Final = 10_000
"""How long a statement in a worker thread waits for another process's lock."""
INLINE_BATCH: Final = 32
"""Group-commit batches up to this many small writes run on the event loop."""
GATHER_PASSES: Final = 4
"""Scheduler passes a group commit waits for concurrent writes to join it. With
eight concurrent SNS posts, three passes made batches of 3.5 writes on average
and cut the store's time per write from 231 µs to 143 µs; eight passes made
batches of 4.8 and saved nothing more."""

_INSERT_REQUESTS: Final = (
    'INSERT INTO email_requests (topic_id, "to", content_id, scheduled_at, status,'
    " created_at, updated_at, data)"
    f" SELECT ?1, {{to}}, ?2, ?3, {Status.CREATED:d}, ?4, ?4, {{data}} FROM json_each(?5)"
)
_INSERT_ADDRESSES: Final = _INSERT_REQUESTS.format(to="value", data="NULL")
_INSERT_WITH_DATA: Final = _INSERT_REQUESTS.format(to="value ->> 0", data="value ->> 1")


def _requests_insert(msg: NewMessage) -> tuple[str, str]:
    """The statement inserting ``msg``'s requests, and its JSON array of rows."""
    if msg.data is None:
        return _INSERT_ADDRESSES, json.dumps(list(msg.emails))
    return _INSERT_WITH_DATA, json.dumps(list(zip(msg.emails, msg.data, strict=True)))


def _sent_ids(outcomes: Sequence[Outcome]) -> list[tuple[int, str]]:
    """(request id, SES message id) of the SENT outcomes."""
    return [
        (o.request_id, o.message_id)
        for o in outcomes
        if o.status is Status.SENT and o.message_id is not None
    ]


def _stop_rows(
    conn: sqlite3.Connection, topic_id: str, upto: int, exclude: Sequence[int], now: datetime
) -> int:
    """Move the topic's CREATED/PROCESSING rows with ids up to ``upto``, but not in
    ``exclude``, to STOPPED; how many."""
    # The ids go in as one JSON array: any number of them, one variable.
    return int(
        conn.execute(
            _STOP_TOPIC,
            (to_db(now), topic_id, upto, json.dumps(list(exclude))),
        ).rowcount
    )


@contextlib.contextmanager
def read_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A deferred transaction: every read in it sees the same commit."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _connect(path: Path, cache_mb: int = 64) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA cache_size=-{cache_mb * 1024}")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class _Conn:
    """One sqlite3 connection, used by one worker thread at a time.

    The writer's also has a ``health`` (its last storage failure, cleared by a
    committed write) and an ``identity`` checked before every call: nothing is
    written into a database file that was deleted or replaced.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        health: WriteHealth | None = None,
        identity: FileIdentity | None = None,
    ) -> None:
        self.conn = conn
        self._limiter = trio.CapacityLimiter(1)
        self._health = health
        self._identity = identity

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._identity is not None:
            self._identity.check()
        changes, failures = self.conn.total_changes, self._failures()
        try:
            result = fn(self.conn)
        except sqlite3.Error as exc:
            self._rollback()
            if self._health is not None:
                self._health.failed(exc)
            raise StoreError(f"database error: {exc}") from exc
        except BaseException:
            self._rollback()  # never leave a transaction open on the connection
            raise
        wrote = self.conn.total_changes != changes  # and committed: no exception above
        if self._health is not None and wrote and self._failures() == failures:
            self._health.succeeded()
        return result

    def _failures(self) -> int:
        return self._health.failures if self._health is not None else 0

    def _rollback(self) -> None:
        """End an open transaction; a rollback failing too (disk gone) is not news."""
        if self.conn.in_transaction:
            try:
                self.conn.rollback()
            except sqlite3.Error as exc:
                log.warning("rollback failed: %s", exc)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the connection in a worker thread."""
        return await trio.to_thread.run_sync(self._call, fn, limiter=self._limiter)

    async def run_inline(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the event loop thread (for a few fast statements only).

        A trip to a worker thread costs more than a handful of indexed writes
        when the loop is busy: the thread waits for the GIL at every statement.
        Here SQLite never waits for a lock (busy timeout 0): ``fn`` must give up
        when another process holds the database, rather than stall the loop.
        """
        async with self._limiter:
            self.conn.execute("PRAGMA busy_timeout=0")
            try:
                return self._call(fn)
            finally:
                self.conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


class SqliteStore:
    """The :class:`~mailpipe.store.base.Store` on one SQLite file."""

    cluster: Cluster | None = None

    def __init__(
        self,
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
        identity: FileIdentity | None = None,
    ) -> None:
        self._health = WriteHealth(identity.path.parent if identity is not None else None)
        self._identity = identity
        self._w = _Conn(writer, health=self._health, identity=identity)
        self._r = _Conn(reader)
        self._checkpoint_failure: str | None = None
        self._group = GroupCommit(
            self._w.run,
            inline=self._w.run_inline,
            inline_max=INLINE_BATCH,
            gather=GATHER_PASSES,
            failed=self._health.failed,
        )
        self.webhooks = WebhookTables(_webhooks.SQLITE, self._write_txn, self._r.run)

    async def _write_txn(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction on the writer connection."""

        def txn(conn: sqlite3.Connection) -> T:
            with transaction(conn):
                return fn(conn)

        return await self._w.run(txn)

    # -- ingest ------------------------------------------------------------

    async def insert_messages(
        self, messages: Sequence[NewMessage], now: datetime, *, key: IdempotencyKey | None = None
    ) -> InsertResult:
        """Store every message and its recipients in one transaction (all or nothing).

        With ``key``, checking and remembering the key are part of that transaction:
        a key used within 24 h stores nothing and returns the earlier answer
        (``replayed``), or raises :class:`~mailpipe.errors.KeyReused` when
        its body differed.
        """
        now_text = to_db(now)

        def txn(conn: sqlite3.Connection) -> InsertResult:
            count = 0
            due_now = False
            added: dict[str, int] = {}
            conn.execute("BEGIN IMMEDIATE")
            if key is not None:
                earlier = _idempotency.earlier_answer(conn, key, now)
                if earlier is not None:
                    conn.execute("ROLLBACK")
                    return InsertResult(0, False, earlier, replayed=True)
                _idempotency.prune(conn, now)
            for msg in messages:
                when = msg.due_at(now)
                due_now = due_now or when <= now
                (content_id,) = conn.execute(
                    "INSERT INTO email_contents (subject, content, created_at, updated_at,"
                    " text, track_opens, track_clicks) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        msg.subject,
                        msg.content,
                        now_text,
                        now_text,
                        msg.text,
                        msg.track_opens,
                        msg.track_clicks,
                    ),
                ).fetchone()
                # One statement per message: SQLite walks the JSON array itself,
                # several times faster than executemany's row-by-row binding.
                sql, rows = _requests_insert(msg)
                conn.execute(sql, (msg.topic_id, content_id, to_db(when), now_text, rows))
                count += len(msg.emails)
                if msg.topic_id is not None:
                    added[msg.topic_id] = added.get(msg.topic_id, 0) + len(msg.emails)
            # The topics' counters, one statement per topic (status changes are
            # counted by migration 8's trigger, per row: not worth it here).
            conn.executemany(_ADD_CREATED, added.items())
            answer = None
            if key is not None:
                answer = key.answer(count)
                _idempotency.remember(conn, key, answer, now)
            conn.execute("COMMIT")
            return InsertResult(count, due_now, answer)

        return await self._w.run(txn)

    # -- sending -----------------------------------------------------------

    async def claim_due(self, now: datetime, limit: int) -> list[Claimed]:
        """Move up to ``limit`` due CREATED rows to PROCESSING, earliest due first
        (then lowest id).

        Claimed rows whose address is on the suppression list go to STOPPED with
        the error ``suppressed: <reason>`` in the same transaction and are not
        returned: a suppressed address is never handed to a transport.
        """
        now_text = to_db(now)

        def claim(conn: sqlite3.Connection) -> list[Claimed]:
            (paused,) = conn.execute(_guard.ANY_PAUSED).fetchone()
            any_due = _ANY_DUE_PAUSED if paused else _ANY_DUE
            if conn.execute(any_due, (now_text,)).fetchone() is None:
                return []  # skips the write and the id-order walk past rows not yet due
            with transaction(conn):
                (any_suppressed,) = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM suppressions)"
                ).fetchone()
                (paused,) = conn.execute(_guard.ANY_PAUSED).fetchone()
                base = _CLAIM_PAUSED if paused else _CLAIM
                # No suppressions at all: skip the lookup per row.
                query = base + (
                    '(SELECT reason FROM suppressions WHERE address = lower("to"))'
                    if any_suppressed else "NULL"
                )
                rows = conn.execute(query, (now_text, limit)).fetchall()
                suppressed = [(f"suppressed: {r[5]}", now_text, r[0]) for r in rows if r[5]]
                if suppressed:
                    conn.executemany(_STOP_SUPPRESSED, suppressed)
            if suppressed:
                log.info("stopped %d requests to suppressed addresses", len(suppressed))
            return sorted((Claimed(*r[:5]) for r in rows if not r[5]), key=lambda c: c.id)

        return await self._w.run(claim)

    async def next_scheduled_at(self) -> datetime | None:
        """When the earliest CREATED row falls due, or None when there is none."""

        def query(conn: sqlite3.Connection) -> datetime | None:
            (paused,) = conn.execute(_guard.ANY_PAUSED).fetchone()
            sql = _guard.NEXT_SCHEDULED_PAUSED if paused else _NEXT_SCHEDULED
            row = conn.execute(sql).fetchone()
            return from_db(row[0]) if row and row[0] else None

        return await self._r.run(query)

    async def load_contents(self, ids: Iterable[int]) -> dict[int, Content]:
        """The contents with these ids."""
        wanted = sorted(set(ids))

        def query(conn: sqlite3.Connection) -> dict[int, Content]:
            marks = ",".join("?" * len(wanted))
            rows = conn.execute(
                "SELECT id, subject, content, text, track_opens, track_clicks"
                f" FROM email_contents WHERE id IN ({marks})",
                wanted,
            ).fetchall()
            return {
                i: Content(i, subject, html, text, bool(opens), bool(clicks))
                for i, subject, html, text, opens, clicks in rows
            }

        return await self._r.run(query) if wanted else {}

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: datetime) -> int:
        """Write outcomes of PROCESSING rows in one transaction; returns rows changed."""
        now_text = to_db(now)

        def txn(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.executemany(
                _RECORD_OUTCOME,
                (
                    (int(o.status), o.message_id, o.error, o.attempts, now_text, o.request_id)
                    for o in outcomes
                ),
            )
            changed = cur.rowcount
            _webhooks.enqueue_request_events(conn, _webhooks.SQLITE, final_events(outcomes), now)
            _guard.match_early_feedback(conn, _sent_ids(outcomes), now, False)
            conn.execute("COMMIT")
            return changed

        return await self._w.run(txn) if outcomes else 0

    async def requeue_processing(self, now: datetime) -> int:
        """Return every PROCESSING row to CREATED."""

        def txn(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE email_requests SET status = ?, updated_at = ? WHERE status = ?",
                (Status.CREATED, to_db(now), Status.PROCESSING),
            ).rowcount

        return await self._w.run(txn)

    async def recover_claims(self, now: datetime) -> Recovery:
        """Settle every row a dead predecessor left PROCESSING (safe: the lock
        file means no other instance holds any)."""
        stopped = await self.apply_saved_stops(now)
        await self.webhooks.release_leases()  # webhook deliveries it was sending
        return Recovery(stopped, await self.requeue_processing(now))

    async def release_claims(self, stops: Sequence[tuple[str, int]], now: datetime) -> Recovery:
        """Stop what ``stops`` and the stored stops cover, requeue the rest."""
        stopped = 0
        # Requests of stopped topics that were waiting for a retry (and so kept
        # out of the DELETE) must not go back to the queue with the others.
        for topic_id, upto in stops:
            stopped += await self.stop_topic(topic_id, upto, exclude=(), now=now)
        stopped += await self.apply_saved_stops(now)  # and forget them: nothing is in flight
        return Recovery(stopped, await self.requeue_processing(now))

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
        ``exclude``) to STOPPED; returns how many.

        The stop itself is kept too, until :meth:`apply_saved_stops`: the
        excluded rows (handed to SES, or waiting for a retry) must not go out
        again if the process dies before they are settled.
        """

        def txn(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO topic_stops (topic_id, upto_id, created_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (topic_id)"
                    " DO UPDATE SET upto_id = max(upto_id, excluded.upto_id)",
                    (topic_id, upto, to_db(now)),
                )
                return _stop_rows(conn, topic_id, upto, exclude, now)

        return await self._w.run(txn)

    async def apply_saved_stops(self, now: datetime) -> int:
        """Stop every CREATED/PROCESSING row a kept stop covers, then forget the stops.

        For start-up and shutdown, when nothing is in flight: a row a stop left
        out because it was handed to SES is settled by now, or was cut off by
        the process dying (it may have been sent; it is not sent again).
        """

        def txn(conn: sqlite3.Connection) -> int:
            stops = conn.execute("SELECT topic_id, upto_id FROM topic_stops").fetchall()
            if not stops:
                return 0
            stopped = 0
            with transaction(conn):
                for topic_id, upto in stops:  # each by the topic index, not a table scan
                    stopped += _stop_rows(conn, topic_id, upto, (), now)
                conn.execute("DELETE FROM topic_stops")
            return stopped

        return await self._w.run(txn)

    async def count_sent_since(self, since: datetime) -> int:
        """How many requests reached SENT at or after ``since``."""

        def query(conn: sqlite3.Connection) -> int:
            (n,) = conn.execute(
                _COUNT_SENT_SINCE,
                (to_db(since),),
            ).fetchone()
            return int(n)

        return await self._r.run(query)

    # -- queries -----------------------------------------------------------

    async def topic_stats(self, topic_id: str) -> TopicStats:
        """Counts of the topic's requests per status and of its results per event
        type, read from the counters (a few rows, however big the topic)."""

        def query(conn: sqlite3.Connection) -> TopicStats:
            requests = dict.fromkeys(Status, 0)
            # One read transaction: the two tables at the same commit.
            with read_transaction(conn):
                for status, n in conn.execute(_TOPIC_COUNTS, (topic_id,)).fetchall():
                    requests[Status(status)] = n
                results = dict(conn.execute(_TOPIC_RESULT_COUNTS, (topic_id,)).fetchall())
            return TopicStats(requests, results)

        return await self._r.run(query)

    # -- reputation and pauses (SQL in mailpipe.store.guard_sql) --------------

    async def reputation(self, topic_id: str | None, since: datetime) -> Figures:
        """Sends, permanent bounces and complaints of the topic (None: the account)
        since ``since``."""

        def query(conn: sqlite3.Connection) -> Figures:
            with read_transaction(conn):
                return _guard.reputation(conn, topic_id, since, False)

        return await self._r.run(query)

    async def topics_of(self, request_ids: Sequence[int]) -> list[str]:
        """The distinct topics of these requests."""
        return await self._r.run(lambda conn: _guard.topics_of(conn, request_ids, False))

    async def pause_topic(self, topic_id: str, pause: Pause) -> bool:
        """Store the topic's pause (its CREATED rows are no longer claimed); False
        when it was paused already (the first pause is kept)."""
        return await self._write_txn(
            lambda conn: _guard.save_topic_pause(conn, topic_id, pause, False)
        )

    async def resume_topic(self, topic_id: str) -> bool:
        """Forget the topic's pause; False when it had none."""
        return await self._w.run(lambda conn: _guard.delete_topic_pause(conn, topic_id, False))

    async def topic_pause(self, topic_id: str) -> Pause | None:
        """The topic's stored pause, or None."""
        return await self._r.run(lambda conn: _guard.topic_pause(conn, topic_id, False))

    async def paused_topics(self) -> list[str]:
        """Every paused topic."""
        return await self._r.run(_guard.paused_topics)

    async def pause_account(self, pause: Pause) -> bool:
        """Store the account's pause; False when it was paused already."""
        return await self._w.run(lambda conn: _guard.save_account_pause(conn, pause, False))

    async def resume_account(self) -> bool:
        """Forget the account's pause; False when it had none."""
        return await self._w.run(_guard.delete_account_pause)

    async def account_pause(self) -> Pause | None:
        """The account's stored pause, or None."""
        return await self._r.run(_guard.account_pause)
    # -- the dashboard's reads (SQL in mailpipe.store.activity) ---------------

    async def topic_list(self, limit: int) -> list[tuple[str, TopicStats]]:
        """Up to ``limit`` topics with their counts (from the counters), largest first."""
        return await self._r.run(lambda conn: _activity.topic_list(conn, limit))

    async def activity(self, topic_id: str | None) -> Activity:
        """The topic's recent activity (every topic's sends when None); bounded reads."""
        now = utcnow()
        return await self._r.run(lambda conn: _activity.activity(conn, topic_id, now))

    async def search_suppressions(self, text: str, limit: int) -> list[Suppression]:
        """Up to ``limit`` suppressions whose address contains ``text``, newest first."""
        return await self._r.run(lambda conn: _activity.search_suppressions(conn, text, limit))

    # -- feedback and suppressions (SQL in mailpipe.store.feedback) ----------

    async def record_feedback(
        self, sns_message_id: str, event: SesEvent, now: datetime
    ) -> FeedbackOutcome:
        """Store one verified SES record (results per request, suppressions) in one
        transaction, unless this SNS MessageId was stored before (``duplicate``)."""
        return await self._group.write(
            lambda conn: _feedback.record_event_in_transaction(conn, sns_message_id, event, now)
        )

    async def add_suppression(
        self,
        address: str,
        reason: str,
        source: str | None,
        *,
        request_id: int | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Never send to ``address`` again (``reason``: bounce, complaint or unsubscribe;
        ``source``: what caused it, e.g. an SES message id). False if it already was."""
        when = now or utcnow()
        return await self._w.run(
            lambda conn: _feedback.add_suppression(conn, address, reason, source, request_id, when)
        )

    async def get_suppression(self, address: str) -> Suppression | None:
        """The suppression of ``address`` (compared lower-cased), or None."""
        return await self._r.run(lambda conn: _feedback.get_suppression(conn, address))

    async def delete_suppression(self, address: str) -> bool:
        """Lift the suppression of ``address``; False when there was none."""
        return await self._w.run(lambda conn: _feedback.delete_suppression(conn, address))

    async def list_suppressions(
        self, limit: int, cursor: int | None = None
    ) -> tuple[list[Suppression], int | None]:
        """A page of suppressions, newest first, and the next page's cursor (or None)."""
        return await self._r.run(lambda conn: _feedback.list_suppressions(conn, limit, cursor))

    # -- opens, clicks, unsubscribes (SQL in mailpipe.store.tracking) ----------

    async def record_result(self, request_id: int, status: str, raw: str, now: datetime) -> bool:
        """Add a result (``Open``, ``Click``) to a request; False when there is no such request.

        Opens come in bursts like SES feedback: group-committed the same way."""
        return await self._group.write(
            lambda conn: _tracking.record_result(conn, request_id, status, raw, now)
        )

    async def recipient_of(self, request_id: int) -> str | None:
        """The address a request was sent to, or None when there is no such request."""
        return await self._r.run(lambda conn: _tracking.recipient_of(conn, request_id))

    async def unsubscribe(self, request_id: int, source: str, raw: str, now: datetime) -> bool:
        """Suppress the request's recipient (reason ``unsubscribe``) and record an
        ``Unsubscribe`` result; False when the address was suppressed already."""
        return await self._w.run(
            lambda conn: _tracking.unsubscribe(conn, request_id, source, raw, now)
        )

    async def idempotent_answer(self, key: IdempotencyKey, now: datetime) -> dict[str, Any] | None:
        """The answer given earlier for ``key`` (None when unused within 24 h); raises
        :class:`~mailpipe.errors.KeyReused` when it came with another body.

        A read ahead of validation; :meth:`insert_messages` checks again atomically.
        """
        return await self._r.run(lambda conn: _idempotency.earlier_answer(conn, key, now))

    async def run_upkeep(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Checkpoint the WAL every ``CHECKPOINT_INTERVAL`` seconds, until cancelled.

        The writer connection never checkpoints on its own (``wal_autocheckpoint=0``):
        a checkpoint's fsync inside a commit would stall whoever committed.
        A checkpoint that fails (a full disk) is logged and tried again next
        time; while writes are failing, each round also tries a probe write, so
        the store notices by itself that space is back.
        """
        task_status.started()
        while True:
            await trio.sleep(CHECKPOINT_INTERVAL)
            await self._recheck_writes()
            await self.checkpoint()

    async def after_large_insert(self) -> None:
        """Checkpoint now rather than at the next periodic checkpoint (never raises:
        the insert is stored, and the periodic checkpoint tries again)."""
        await self.checkpoint()

    async def checkpoint(self) -> None:
        """Copy the write-ahead log into the database (as far as readers allow).

        Runs on the reader connection, so the writer is not held up; after a
        large insert (whose commit skipped the automatic checkpoint) it keeps
        the WAL small without slowing the request. A failure is logged once
        (until a checkpoint succeeds again), never raised.
        """
        try:
            await self._r.run(
                lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            )
        except StoreError as exc:
            if self._checkpoint_failure is None:
                log.error(
                    "WAL checkpoint failed (tried again every %gs): %s", CHECKPOINT_INTERVAL, exc
                )
            self._checkpoint_failure = str(exc)
        else:
            if self._checkpoint_failure is not None:
                log.warning("WAL checkpoint succeeds again")
            self._checkpoint_failure = None

    async def ping(self) -> None:
        """Raise :class:`StoreError` unless the database answers and takes writes.

        The error names the cause: the database file deleted or replaced, or
        the last write failure (a full disk), unless a probe write now succeeds.
        """
        if self._identity is not None:
            self._identity.check()
        await self._recheck_writes()
        self._health.check()
        await self._r.run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def _recheck_writes(self) -> None:
        """While writes are failing, try a probe write; it clears the failure if
        it commits (see :func:`_probe_write`). Never raises."""
        if self._health.failure is None:
            return
        with contextlib.suppress(StoreError):
            await self._w.run(_probe_write)


_PROBE_TOPIC: Final = "\x00mailpipe write probe"
"""A topic id no request can have (the API refuses control characters)."""


def _probe_write(conn: sqlite3.Connection) -> None:
    """Write a row and delete it in one committed transaction: the WAL must grow
    by a few pages, as for any real write, but nothing is left behind."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO topic_stops (topic_id, upto_id, created_at) VALUES (?, 0, '')",
            (_PROBE_TOPIC,),
        )
        conn.execute("DELETE FROM topic_stops WHERE topic_id = ?", (_PROBE_TOPIC,))


def lock_path(path: Path) -> Path:
    """The lock file beside the database at ``path``."""
    return path.with_name(path.name + ".lock")


@asynccontextmanager
async def open_sqlite(path: Path) -> AsyncIterator[SqliteStore]:
    """Open (creating and migrating as needed) the database at ``path``.

    Raises :class:`~mailpipe.errors.StoreInUse`, having changed nothing, when
    another process holds the database.
    """

    def setup() -> tuple[LockFile, sqlite3.Connection, sqlite3.Connection, FileIdentity]:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = LockFile.acquire(lock_path(path))
        if lock is None:
            holder = LockFile.holder(lock_path(path))
            raise StoreInUse(
                f"database {path} is in use by another mailpipe"
                f" (pid {holder if holder is not None else 'unknown'}): one instance per"
                " SQLite file; set DATABASE_URL=postgresql://... to run several"
            )
        try:
            writer = _connect(path)
            writer.execute("PRAGMA wal_autocheckpoint=0")  # see SqliteStore.run_upkeep
            try:
                old, new = migrate(writer)
            except BaseException:
                writer.close()
                raise
            if old != new:
                log.info("database %s migrated from schema %d to %d", path, old, new)
            # The writer gets the 64 MB cache; the reader's queries are indexed
            # look-ups and counts, and a second 64 MB would double the RSS.
            return lock, writer, _connect(path, cache_mb=16), FileIdentity(path)
        except BaseException:
            lock.release()
            raise

    try:
        lock, writer, reader, identity = await trio.to_thread.run_sync(setup)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    try:
        yield SqliteStore(writer, reader, identity)
    finally:
        writer.close()
        reader.close()
        lock.release()
