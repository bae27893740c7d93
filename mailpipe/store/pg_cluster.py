"""What several mailpipe instances on one PostgreSQL database share: :class:`PgCluster`.

It promises: registrations with heartbeats on the database clock (a claimed row
is a lease of a registered instance); recovery that takes back only the rows of
instances whose lease lapsed (or that are not registered at all); one shared
rate row changed under its row lock; change events each read once, in id
order, even when a lower id commits late; ``LISTEN``/``NOTIFY`` wake-ups with
polling as the fallback; secrets every instance agrees on.

The row-settling SQL the store uses too (:func:`stop_rows`, :func:`settle`,
:func:`publish_in`) lives here, beside the leases it respects.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, LiteralString, TypeVar

import psycopg
import trio

from mailpipe.errors import LeaseLost
from mailpipe.model import Recovery
from mailpipe.status import Status
from mailpipe.store.base import ClusterEvent
from mailpipe.store.pg_pool import CONNECT_TIMEOUT_S, Conn, PgPool, configure_session

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANNEL: Final = "mailpipe"
"""The ``LISTEN``/``NOTIFY`` channel: a notification only says "read the events"."""
EVENT_RECHECK_S: Final = 30.0
"""How far back (database clock) :meth:`PgCluster.events_since` looks again for
events below its cursor: ids are taken at insert and commit in another order,
so a lower id can become visible after a higher one was read. Events are
inserted just before their transaction commits; 30 s is far beyond that lag."""

COVERED_BY_STOP: Final = (
    "EXISTS (SELECT 1 FROM topic_stops s WHERE s.topic_id = r.topic_id AND r.id <= s.upto_id)"
)
"""SQL: the request ``r`` is covered by a stored stop of its topic."""

# Status codes are interpolated, not bound: the partial index ``WHERE status = 1``
# (rows by owner) serves a query only when it names the same constant.
_HELD_BY: Final = f"r.status = {Status.PROCESSING:d} AND r.owner = %s"
_CREATED_OR_HELD_BY: Final = f"(r.status = {Status.CREATED:d} OR ({_HELD_BY}))"
_STOP_TOPIC_ROWS: Final = (
    f"UPDATE email_requests r SET status = {Status.STOPPED:d}, error = 'stopped', updated_at = %s"
    " WHERE r.topic_id = %s AND r.id <= %s AND r.id <> ALL(%s) AND "
)
_SETTLE_STOPPED: Final = (
    f"UPDATE email_requests r SET status = {Status.STOPPED:d}, error = 'stopped', owner = NULL,"
    f" updated_at = %s WHERE r.status = {Status.PROCESSING:d} AND "
)
_SETTLE_REQUEUED: Final = (
    f"UPDATE email_requests r SET status = {Status.CREATED:d}, owner = NULL, updated_at = %s"
    f" WHERE r.status = {Status.PROCESSING:d} AND "
)


def publish_in(conn: Conn, kind: str, payload: dict[str, Any]) -> None:
    """Add the event and notify listeners, in the caller's transaction (both or neither)."""
    conn.execute(
        "INSERT INTO cluster_events (kind, payload) VALUES (%s, %s::jsonb)",
        (kind, json.dumps(payload)),
    )
    conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))


def stop_rows(
    conn: Conn,
    topic_id: str,
    upto: int,
    exclude: Sequence[int],
    now: datetime,
    *,
    owner: str,
    created_too: bool,
) -> int:
    """Move the topic's PROCESSING rows held by ``owner`` (and, with ``created_too``,
    its CREATED rows), ids up to ``upto`` and not in ``exclude``, to STOPPED; how many."""
    which = _CREATED_OR_HELD_BY if created_too else _HELD_BY
    sql: LiteralString = _STOP_TOPIC_ROWS + which
    return conn.execute(sql, (now, topic_id, upto, list(exclude), owner)).rowcount


def settle(conn: Conn, held: LiteralString, params: Sequence[object], now: datetime) -> Recovery:
    """Take back the PROCESSING rows ``r`` the SQL condition ``held`` selects: those a
    stored stop covers to STOPPED, the rest to CREATED; none keeps an owner."""
    stopped = conn.execute(
        _SETTLE_STOPPED + held + " AND " + COVERED_BY_STOP,
        (now, *params),
    ).rowcount
    requeued = conn.execute(
        _SETTLE_REQUEUED + held,
        (now, *params),
    ).rowcount
    return Recovery(stopped, requeued)


def new_instance_id() -> str:
    """A fresh id naming this process: host, pid and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


class PgCluster:
    """The :class:`~mailpipe.store.base.Cluster` of the instances on one database."""

    def __init__(self, pool: PgPool, instance_id: str | None = None) -> None:
        self.instance_id = instance_id or new_instance_id()
        self._pool = pool
        self._registered = False
        self._seen: dict[int, float] = {}  # event id -> its created_at (epoch, db clock)
        self._listener: Conn | None = None
        self._listener_ok = True
        self._listen_limiter = trio.CapacityLimiter(1)

    # -- leases ------------------------------------------------------------

    async def heartbeat(self) -> None:
        """Register this instance (the first time) or renew its heartbeat.

        Raises :class:`~mailpipe.errors.LeaseLost` when its registration is gone.
        """
        me = self.instance_id

        def register(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO instances (id, host, pid, started_at, heartbeat_at)"
                " VALUES (%s, %s, %s, clock_timestamp(), clock_timestamp())",
                (me, socket.gethostname(), os.getpid()),
            )

        def renew(conn: Conn) -> None:
            renewed = conn.execute(
                "UPDATE instances SET heartbeat_at = clock_timestamp() WHERE id = %s", (me,)
            ).rowcount
            if not renewed:
                raise LeaseLost(f"instance {me} was taken over: its claims were recovered")

        await self._pool.run(renew if self._registered else register)
        self._registered = True

    async def recover_lapsed(self, lease_s: float, now: datetime) -> Recovery:
        """Take back the rows of instances whose heartbeat is older than ``lease_s``
        (database clock), and PROCESSING rows of no registered instance; the lapsed
        registrations are removed."""

        def txn(conn: Conn) -> Recovery:
            # Registrations cannot change while this runs: the rows it takes are
            # exactly those of instances gone in the statement's snapshot.
            conn.execute("LOCK TABLE instances IN SHARE ROW EXCLUSIVE MODE")
            conn.execute(
                "DELETE FROM instances"
                " WHERE heartbeat_at < clock_timestamp() - make_interval(secs => %s)",
                (lease_s,),
            )
            return settle(
                conn, "NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = r.owner)", (), now
            )

        return await self._pool.run(txn)

    async def stop_own_claims(
        self, topic_id: str, upto: int, *, exclude: Sequence[int], now: datetime
    ) -> int:
        """Move this instance's PROCESSING rows of the topic (ids up to ``upto``,
        not in ``exclude``) to STOPPED; how many."""
        return await self._pool.run(
            lambda conn: stop_rows(
                conn, topic_id, upto, exclude, now, owner=self.instance_id, created_too=False
            )
        )

    # -- the shared rate ---------------------------------------------------

    async def rate_transaction(
        self, update: Callable[[str | None, float], tuple[str, T]]
    ) -> tuple[T, float]:
        """Run ``update(state, db_now)`` on the shared rate row under its lock; its
        value and the offset from the database clock to ``time.perf_counter()``.

        ``update`` runs in a worker thread while the row is locked: it must be quick
        and pure. One short transaction of two round trips (about 0.4 ms here)."""

        def txn(conn: Conn) -> tuple[T, float]:
            # Two round trips: BEGIN with the locking read, then the write with COMMIT.
            with conn.pipeline():
                # The commit need not wait for the disk: a crash losing the last
                # few milliseconds of rate state lets at most those permits again.
                conn.execute("SET LOCAL synchronous_commit TO off")
                t0 = time.perf_counter()
                row = conn.execute(
                    "SELECT state, extract(epoch FROM clock_timestamp())::float8"
                    " FROM rate_limit WHERE id = 1 FOR UPDATE"
                ).fetchone()
                t1 = time.perf_counter()
                assert row is not None, "the rate row is made by migration 2"
                state, db_now = row
                new_state, value = update(state, db_now)
                conn.execute("UPDATE rate_limit SET state = %s WHERE id = 1", (new_state,))
                conn.commit()
            return value, (t0 + t1) / 2 - db_now

        return await self._pool.run(txn)

    # -- change events -----------------------------------------------------

    async def events_since(self, cursor: int | None) -> tuple[list[ClusterEvent], int]:
        """Events newer than ``cursor`` (None: none, only the current cursor), oldest
        first, each once; and the cursor to pass next time.

        One reader per instance: the ids returned in the last
        :data:`EVENT_RECHECK_S` are remembered here, so that an event whose id
        is below the cursor but which committed late is returned, and only once.
        """
        if cursor is None:
            return [], await self._pool.run(self._start_reading)
        events = await self._pool.run(lambda conn: self._read_events(conn, cursor))
        return events, max([cursor, *(e.id for e in events)])

    def _start_reading(self, conn: Conn) -> int:
        """The current max event id; the recent events count as seen."""
        rows = conn.execute(
            "SELECT id, extract(epoch FROM created_at)::float8 FROM cluster_events"
            " WHERE created_at >= clock_timestamp() - make_interval(secs => %s)",
            (EVENT_RECHECK_S,),
        ).fetchall()
        self._seen = dict(rows)
        row = conn.execute("SELECT coalesce(max(id), 0) FROM cluster_events").fetchone()
        return int(row[0]) if row else 0

    def _read_events(self, conn: Conn, cursor: int) -> list[ClusterEvent]:
        """Events above ``cursor`` or recent, not returned before (and remember them)."""
        rows = conn.execute(
            "SELECT id, kind, payload, extract(epoch FROM created_at)::float8,"
            " extract(epoch FROM clock_timestamp())::float8 FROM cluster_events"
            " WHERE (id > %s OR created_at >= clock_timestamp() - make_interval(secs => %s))"
            " AND id <> ALL(%s) ORDER BY id",
            (cursor, EVENT_RECHECK_S, list(self._seen)),
        ).fetchall()
        if rows:
            horizon = rows[0][4] - EVENT_RECHECK_S
            self._seen = {i: at for i, at in self._seen.items() if at >= horizon}
        self._seen.update((r[0], r[3]) for r in rows)
        return [ClusterEvent(r[0], r[1], r[2]) for r in rows]

    async def wait_for_events(self, max_wait_s: float) -> None:
        """Return when an instance published an event, or after ``max_wait_s``."""
        listened = await trio.to_thread.run_sync(
            self._wait_notified, max_wait_s, limiter=self._listen_limiter
        )
        if not listened:
            await trio.sleep(max_wait_s)  # no listener: the caller's polling covers it

    def _wait_notified(self, max_wait_s: float) -> bool:
        """Wait on the listening connection (made if needed); False when there is none."""
        try:
            if self._listener is None:
                self._listener = self._listen()
            for _ in self._listener.notifies(timeout=max_wait_s, stop_after=1):
                pass
        except psycopg.Error as exc:
            if self._listener_ok:
                log.warning(
                    "LISTEN %s failed (%s): polling for events until it is back", CHANNEL, exc
                )
            self._listener_ok = False
            self.close_listener()
            return False
        self._listener_ok = True
        return True

    def _listen(self) -> Conn:
        conn = psycopg.connect(self._pool.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        try:
            configure_session(conn)
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def aclose(self) -> None:
        """Close the listening connection (once no wait is using it)."""
        await trio.to_thread.run_sync(self.close_listener, limiter=self._listen_limiter)

    def close_listener(self) -> None:
        """Close the listening connection, if any (the next wait makes a new one)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def publish(self, kind: str, payload: dict[str, Any]) -> None:
        """Publish an event (``pause`` / ``resume``) to every instance."""
        await self._pool.run(lambda conn: publish_in(conn, kind, payload))

    # -- secrets -----------------------------------------------------------

    async def shared_secret(self, name: str, candidate: str) -> str:
        """The secret ``name`` all instances use: the first stored, else ``candidate``."""

        def txn(conn: Conn) -> str:
            conn.execute(
                "INSERT INTO shared_secrets (name, value) VALUES (%s, %s)"
                " ON CONFLICT (name) DO NOTHING",
                (name, candidate),
            )
            row = conn.execute(
                "SELECT value FROM shared_secrets WHERE name = %s", (name,)
            ).fetchone()
            assert row is not None
            return str(row[0])

        return await self._pool.run(txn)
