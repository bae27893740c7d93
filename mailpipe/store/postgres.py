"""The PostgreSQL store: any number of mailpipe instances on one database.

:class:`PostgresStore` keeps every promise of :class:`~mailpipe.store.base.Store`
as :class:`~mailpipe.store.sqlite.SqliteStore` does (same results, same
errors), and its ``cluster`` (:class:`~mailpipe.store.pg_cluster.PgCluster`)
makes the instances one mailpipe: a claimed row is held by the instance that
claimed it (``owner``), only its holder writes its outcome, and it is taken
back only when the holder's lease lapsed. Every call runs in a worker thread on
a pooled connection (:mod:`mailpipe.store.pg_pool`); driver errors surface as
:class:`~mailpipe.errors.StoreError`. Ingest copies recipients with ``COPY``
(:mod:`mailpipe.store.pg_ingest`).

Feedback, opens and clicks commit one transaction each (no group commit as on
SQLite: the pool lets several commit at once). :meth:`PostgresStore.run_upkeep`
keeps this instance's lease: it renews the heartbeat every second and takes
back the rows of lapsed instances.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import trio

from mailpipe.errors import StoreError
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
from mailpipe.store import guard_sql as _guard
from mailpipe.store import pg_activity as _activity
from mailpipe.store import pg_feedback as _sql
from mailpipe.store import webhooks as _webhooks
from mailpipe.store.base import Activity, Cluster, TopicStats
from mailpipe.store.feedback import SNS_DEDUPE_KEEP
from mailpipe.store.pg_cluster import PgCluster, publish_in, settle, stop_rows
from mailpipe.store.pg_counts import TOPIC_STATS, fold_count_deltas
from mailpipe.store.pg_ingest import insert_all
from mailpipe.store.pg_pool import Conn, PgPool
from mailpipe.store.pg_schema import migrate
from mailpipe.store.webhook_tables import WebhookTables
from mailpipe.timeutil import utcnow
from mailpipe.webhooks.events import final_events

if TYPE_CHECKING:
    from mailpipe.feedback.ses_events import SesEvent

log = logging.getLogger(__name__)

EVENTS_KEEP: Final = timedelta(hours=1)
"""How long cluster events are kept: every live instance reads them within seconds."""
STOPS_KEEP: Final = timedelta(days=7)
"""How long a stored topic stop is kept: far beyond any claim or retry it covers."""
PRUNE_EVERY_S: Final = 5.0
"""Seconds between prunes of old events, SNS MessageIds and stops."""

# Status codes are interpolated, not bound: the partial indexes (``WHERE status = 0``
# and the others) serve a query only when it names the same constant. Claims and
# the next due time walk idx_email_requests_pending, by (scheduled_at, id): they
# read due rows only, however many wait for later.
_CLAIM_SQL: Final = (
    "WITH claimed AS ("
    f" UPDATE email_requests SET status = {Status.PROCESSING:d}, owner = %(me)s,"
    " updated_at = %(now)s"
    f" WHERE id IN (SELECT id FROM email_requests WHERE status = {Status.CREATED:d}"
    " AND scheduled_at <= %(now)s AND deleted_at IS NULL{paused}"
    " ORDER BY scheduled_at, id LIMIT %(n)s"
    " FOR UPDATE SKIP LOCKED)"
    # An instance whose lease was taken over claims nothing more.
    " AND EXISTS (SELECT 1 FROM instances WHERE id = %(me)s)"
    ' RETURNING id, topic_id, "to", content_id, data)'
    ' SELECT c.id, c.topic_id, c."to", c.content_id, c.data, s.reason FROM claimed c'
    ' LEFT JOIN suppressions s ON s.address = lower(c."to")'
)
# Rows of a paused topic stay CREATED: while some topic is paused, the twin with
# the filter claims (see mailpipe.store.guard_sql.NOT_PAUSED).
_CLAIM: Final = _CLAIM_SQL.replace("{paused}", "")
_CLAIM_PAUSED: Final = _CLAIM_SQL.replace("{paused}", _guard.NOT_PAUSED)
_STOP_SUPPRESSED: Final = (
    f"UPDATE email_requests r SET status = {Status.STOPPED:d},"
    " error = 'suppressed: ' || x.reason,"
    " updated_at = %s FROM unnest(%s::bigint[], %s::text[]) AS x(id, reason) WHERE r.id = x.id"
)
_RECORD_OUTCOMES: Final = (
    "UPDATE email_requests r SET status = o.status,"
    " message_id = COALESCE(o.message_id, r.message_id), error = o.error,"
    " attempts = r.attempts + o.attempts, updated_at = %s,"
    f" owner = CASE WHEN o.status = {Status.CREATED:d} THEN NULL ELSE r.owner END"
    " FROM unnest(%s::bigint[], %s::int[], %s::text[], %s::text[], %s::int[])"
    " AS o(id, status, message_id, error, attempts)"
    f" WHERE r.id = o.id AND r.status = {Status.PROCESSING:d} AND r.owner = %s"
    " RETURNING r.id"
)
_NEXT_SCHEDULED: Final = (
    "SELECT min(scheduled_at) FROM email_requests"
    f" WHERE status = {Status.CREATED:d} AND deleted_at IS NULL"
)
_COUNT_SENT_SINCE: Final = (
    f"SELECT count(*) FROM email_requests WHERE status = {Status.SENT:d} AND updated_at >= %s"
)


class PostgresStore:
    """The :class:`~mailpipe.store.base.Store` on a PostgreSQL database shared by instances."""

    def __init__(self, pool: PgPool, cluster: PgCluster, *, lease_s: float) -> None:
        self._pool = pool
        self._lease_s = lease_s
        self._cluster = cluster
        self.cluster: Cluster | None = self._cluster
        self.webhooks = WebhookTables(_webhooks.POSTGRES, pool.run, pool.run)

    @property
    def _me(self) -> str:
        return self._cluster.instance_id

    # -- ingest ------------------------------------------------------------

    async def insert_messages(
        self, messages: Sequence[NewMessage], now: datetime, *, key: IdempotencyKey | None = None
    ) -> InsertResult:
        """Store every message and its recipients in one transaction (all or nothing).

        With ``key``, the key is taken first in that transaction: a key used
        within 24 h stores nothing and returns the earlier answer
        (``replayed``), or raises :class:`~mailpipe.errors.KeyReused` when its
        body differed. Two instances racing with one key: one stores, the other
        replays.
        """

        return await self._pool.run(lambda conn: insert_all(conn, messages, now, key))

    async def idempotent_answer(self, key: IdempotencyKey, now: datetime) -> dict[str, Any] | None:
        """The answer given earlier for ``key`` (None when unused within 24 h); raises
        :class:`~mailpipe.errors.KeyReused` when it came with another body."""
        return await self._pool.run(lambda conn: _sql.earlier_answer(conn, key, now))

    # -- sending -----------------------------------------------------------

    async def claim_due(self, now: datetime, limit: int) -> list[Claimed]:
        """Move up to ``limit`` due CREATED rows to PROCESSING held by this instance,
        earliest due first (then lowest id), skipping rows another instance is
        claiming. Rows to
        suppressed addresses go to STOPPED in the same transaction."""

        def txn(conn: Conn) -> list[Claimed]:
            row = conn.execute(_guard.ANY_PAUSED).fetchone()
            claim = _CLAIM_PAUSED if row and row[0] else _CLAIM
            rows = conn.execute(claim, {"me": self._me, "now": now, "n": limit}).fetchall()
            suppressed = [(r[0], r[5]) for r in rows if r[5]]
            if suppressed:
                ids, reasons = zip(*suppressed, strict=True)
                conn.execute(_STOP_SUPPRESSED, (now, list(ids), list(reasons)))
                log.info("stopped %d requests to suppressed addresses", len(suppressed))
            return sorted((Claimed(*r[:5]) for r in rows if not r[5]), key=lambda c: c.id)

        return await self._pool.run(txn)

    async def next_scheduled_at(self) -> datetime | None:
        """When the earliest CREATED row falls due, or None when there is none."""

        def query(conn: Conn) -> datetime | None:
            paused = conn.execute(_guard.ANY_PAUSED).fetchone()
            sql = _guard.NEXT_SCHEDULED_PAUSED if paused and paused[0] else _NEXT_SCHEDULED
            row = conn.execute(sql).fetchone()
            return row[0].astimezone(UTC) if row and row[0] is not None else None

        return await self._pool.run(query)

    async def load_contents(self, ids: Iterable[int]) -> dict[int, Content]:
        """The contents with these ids."""
        wanted = sorted(set(ids))

        def query(conn: Conn) -> dict[int, Content]:
            rows = conn.execute(
                "SELECT id, subject, content, text, track_opens, track_clicks"
                " FROM email_contents WHERE id = ANY(%s)",
                (wanted,),
            ).fetchall()
            return {row[0]: Content(*row) for row in rows}

        return await self._pool.run(query) if wanted else {}

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: datetime) -> int:
        """Write outcomes of rows this instance holds, in one transaction; rows changed.

        A row another instance holds now (this one's lease lapsed) is left alone;
        a CREATED outcome (requeue) lets go of the row."""
        columns = (
            [o.request_id for o in outcomes],
            [int(o.status) for o in outcomes],
            [o.message_id for o in outcomes],
            [o.error for o in outcomes],
            [o.attempts for o in outcomes],
        )

        sent = [
            (o.request_id, o.message_id)
            for o in outcomes
            if o.status is Status.SENT and o.message_id is not None
        ]

        def txn(conn: Conn) -> int:
            held = {r[0] for r in conn.execute(_RECORD_OUTCOMES, (now, *columns, self._me))}
            _webhooks.enqueue_request_events(
                conn, _webhooks.POSTGRES, final_events(o for o in outcomes if o.request_id in held),
                now,
            )
            _guard.match_early_feedback(conn, sent, now, True)
            return len(held)

        return await self._pool.run(txn) if outcomes else 0

    async def recover_claims(self, now: datetime) -> Recovery:
        """At start-up: take back only the rows of instances whose lease lapsed."""
        return await self._cluster.recover_lapsed(self._lease_s, now)

    async def release_claims(self, stops: Sequence[tuple[str, int]], now: datetime) -> Recovery:
        """At shutdown: this instance's PROCESSING rows covered by ``stops`` or a stored
        stop go to STOPPED, the rest to CREATED; then its registration is removed.

        Stored stops are kept (other instances may hold rows they cover) until
        they are a week old."""

        def txn(conn: Conn) -> Recovery:
            stopped = sum(
                stop_rows(conn, topic, upto, (), now, owner=self._me, created_too=False)
                for topic, upto in stops
            )
            rest = settle(conn, "r.owner = %s", (self._me,), now)
            conn.execute("DELETE FROM instances WHERE id = %s", (self._me,))
            conn.execute("DELETE FROM topic_stops WHERE created_at < %s", (now - STOPS_KEEP,))
            return Recovery(stopped + rest.stopped, rest.requeued)

        return await self._pool.run(txn)

    # -- topics ------------------------------------------------------------

    async def max_request_id(self, topic_id: str) -> int | None:
        """The highest request id of the topic, or None when it has none."""

        def query(conn: Conn) -> int | None:
            row = conn.execute(
                "SELECT max(id) FROM email_requests WHERE topic_id = %s", (topic_id,)
            ).fetchone()
            return int(row[0]) if row and row[0] is not None else None

        return await self._pool.run(query)

    async def stop_topic(
        self, topic_id: str, upto: int, *, exclude: Sequence[int], now: datetime
    ) -> int:
        """Store the stop, move the topic's CREATED rows and this instance's PROCESSING
        rows (ids up to ``upto``, not in ``exclude``) to STOPPED, and publish a
        ``stop`` event for the other instances, in one transaction; how many."""

        def txn(conn: Conn) -> int:
            conn.execute(
                "INSERT INTO topic_stops (topic_id, upto_id, created_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (topic_id)"
                " DO UPDATE SET upto_id = greatest(topic_stops.upto_id, excluded.upto_id)",
                (topic_id, upto, now),
            )
            n = stop_rows(conn, topic_id, upto, exclude, now, owner=self._me, created_too=True)
            publish_in(conn, "stop", {"topic": topic_id, "upto": upto})
            return n

        return await self._pool.run(txn)

    async def topic_stats(self, topic_id: str) -> TopicStats:
        """The topic's requests per status and results per event type, read from its
        counters and their deltas (a few rows, however big the topic)."""

        def query(conn: Conn) -> TopicStats:
            requests = dict.fromkeys(Status, 0)
            results: dict[str, int] = {}
            for kind, status, n in conn.execute(TOPIC_STATS, {"t": topic_id}).fetchall():
                if kind == "request":
                    requests[Status(int(status))] = int(n)
                else:
                    results[status] = int(n)
            return TopicStats(requests, results)

        return await self._pool.run(query)

    async def count_sent_since(self, since: datetime) -> int:
        """How many requests reached SENT at or after ``since``."""

        def query(conn: Conn) -> int:
            row = conn.execute(
                _COUNT_SENT_SINCE,
                (since,),
            ).fetchone()
            return int(row[0]) if row else 0

        return await self._pool.run(query)

    # -- reputation and pauses (SQL in mailpipe.store.guard_sql) --------------

    async def reputation(self, topic_id: str | None, since: datetime) -> Figures:
        """Sends, permanent bounces and complaints of the topic (None: the account)
        since ``since``."""
        return await self._pool.run(lambda conn: _guard.reputation(conn, topic_id, since, True))

    async def topics_of(self, request_ids: Sequence[int]) -> list[str]:
        """The distinct topics of these requests."""
        return await self._pool.run(lambda conn: _guard.topics_of(conn, request_ids, True))

    async def pause_topic(self, topic_id: str, pause: Pause) -> bool:
        """Store the topic's pause and tell the other instances (``topic_pause``), in
        one transaction; False when it was paused already (the first pause is kept)."""

        def txn(conn: Conn) -> bool:
            if not _guard.save_topic_pause(conn, topic_id, pause, True):
                return False
            publish_in(conn, "topic_pause", {"topic": topic_id})
            return True

        return await self._pool.run(txn)

    async def resume_topic(self, topic_id: str) -> bool:
        """Forget the topic's pause and tell the other instances (``topic_resume``)."""

        def txn(conn: Conn) -> bool:
            if not _guard.delete_topic_pause(conn, topic_id, True):
                return False
            publish_in(conn, "topic_resume", {"topic": topic_id})
            return True

        return await self._pool.run(txn)

    async def topic_pause(self, topic_id: str) -> Pause | None:
        """The topic's stored pause, or None."""
        return await self._pool.run(lambda conn: _guard.topic_pause(conn, topic_id, True))

    async def paused_topics(self) -> list[str]:
        """Every paused topic."""
        return await self._pool.run(_guard.paused_topics)

    async def pause_account(self, pause: Pause) -> bool:
        """Store the account's pause and tell the other instances (``account_pause``)."""

        def txn(conn: Conn) -> bool:
            if not _guard.save_account_pause(conn, pause, True):
                return False
            publish_in(conn, "account_pause", {"reason": pause.reason})
            return True

        return await self._pool.run(txn)

    async def resume_account(self) -> bool:
        """Forget the account's pause and tell the other instances (``account_resume``)."""

        def txn(conn: Conn) -> bool:
            if not _guard.delete_account_pause(conn):
                return False
            publish_in(conn, "account_resume", {})
            return True

        return await self._pool.run(txn)

    async def account_pause(self) -> Pause | None:
        """The account's stored pause, or None."""
        return await self._pool.run(_guard.account_pause)
    # -- the dashboard's reads (SQL in mailpipe.store.pg_activity) -------------

    async def topic_list(self, limit: int) -> list[tuple[str, TopicStats]]:
        """Up to ``limit`` topics with their counts (counters and deltas), largest first."""
        return await self._pool.run(lambda conn: _activity.topic_list(conn, limit))

    async def activity(self, topic_id: str | None) -> Activity:
        """The topic's recent activity (every topic's sends when None); bounded reads."""
        now = utcnow()
        return await self._pool.run(lambda conn: _activity.activity(conn, topic_id, now))

    async def search_suppressions(self, text: str, limit: int) -> list[Suppression]:
        """Up to ``limit`` suppressions whose address contains ``text``, newest first."""
        return await self._pool.run(lambda conn: _activity.search_suppressions(conn, text, limit))

    # -- feedback, tracking, suppressions (SQL in mailpipe.store.pg_feedback) --

    async def record_feedback(
        self, sns_message_id: str, event: SesEvent, now: datetime
    ) -> FeedbackOutcome:
        """Store one verified SES record (results, suppressions) in one transaction,
        unless this SNS MessageId was stored before (``duplicate``)."""
        return await self._pool.run(
            lambda conn: _sql.record_event(conn, sns_message_id, event, now)
        )

    async def record_result(self, request_id: int, status: str, raw: str, now: datetime) -> bool:
        """Add a result (``Open``, ``Click``) to a request; False when there is none."""
        return await self._pool.run(
            lambda conn: _sql.record_result(conn, request_id, status, raw, now)
        )

    async def recipient_of(self, request_id: int) -> str | None:
        """The address a request was sent to, or None when there is no such request."""
        return await self._pool.run(lambda conn: _sql.recipient_of(conn, request_id))

    async def unsubscribe(self, request_id: int, source: str, raw: str, now: datetime) -> bool:
        """Suppress the request's recipient (``unsubscribe``) and record an
        ``Unsubscribe`` result; False when the address was suppressed already."""
        return await self._pool.run(
            lambda conn: _sql.unsubscribe(conn, request_id, source, raw, now)
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
        """Never send to ``address`` again; False if it already was."""
        when = now or utcnow()
        stored = await self._pool.run(
            lambda conn: _sql.add_suppression(conn, address, reason, source, request_id, when)
        )
        return stored is not None

    async def get_suppression(self, address: str) -> Suppression | None:
        """The suppression of ``address`` (compared lower-cased), or None."""
        return await self._pool.run(lambda conn: _sql.get_suppression(conn, address))

    async def delete_suppression(self, address: str) -> bool:
        """Lift the suppression of ``address``; False when there was none."""
        return await self._pool.run(lambda conn: _sql.delete_suppression(conn, address))

    async def list_suppressions(
        self, limit: int, cursor: int | None = None
    ) -> tuple[list[Suppression], int | None]:
        """A page of suppressions, newest first, and the next page's cursor (or None)."""
        return await self._pool.run(lambda conn: _sql.list_suppressions(conn, limit, cursor))

    # -- upkeep ------------------------------------------------------------

    async def run_upkeep(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Until cancelled: prune old events, SNS MessageIds and stops every
        :data:`PRUNE_EVERY_S`; a database away is logged and retried. (The lease
        is kept by :class:`mailpipe.pipeline.cluster.ClusterSync`.)"""
        task_status.started()
        while True:
            try:
                await self.prune(utcnow())
            except StoreError as exc:
                log.warning("store upkeep failed: %s", exc)
            await trio.sleep(PRUNE_EVERY_S)

    async def prune(self, now: datetime) -> None:
        """Forget events older than an hour, SNS MessageIds older than a week, and
        stops older than a week; fold the topic counters' deltas."""

        def txn(conn: Conn) -> None:
            conn.execute("DELETE FROM cluster_events WHERE created_at < %s", (now - EVENTS_KEEP,))
            conn.execute("DELETE FROM sns_messages WHERE created_at < %s", (now - SNS_DEDUPE_KEEP,))
            conn.execute("DELETE FROM topic_stops WHERE created_at < %s", (now - STOPS_KEEP,))

        await self._pool.run(txn)
        await self._pool.run(fold_count_deltas)

    async def after_large_insert(self) -> None:
        """Nothing: autovacuum keeps the planner's statistics."""

    async def ping(self) -> None:
        """Raise :class:`~mailpipe.errors.StoreError` unless the database answers."""
        await self._pool.run(lambda conn: conn.execute("SELECT 1").fetchone())


@asynccontextmanager
async def open_postgres(url: str, *, lease_s: float) -> AsyncIterator[PostgresStore]:
    """Open the database at ``url``: migrate it (once, however many instances start
    together) and register this instance. Raises StoreError when it is unreachable."""
    pool = PgPool(url)
    await pool.open()
    try:
        old, new = await pool.run(migrate)
        if old != new:
            log.info("database migrated from schema %d to %d", old, new)
        cluster = PgCluster(pool)
        await cluster.heartbeat()  # registered before its first claim
        try:
            yield PostgresStore(pool, cluster, lease_s=lease_s)
        finally:
            await cluster.aclose()
    finally:
        await pool.close()
