"""A psycopg connection pool used from Trio: each call runs in a worker thread.

What it promises: every call gets a live connection (one that was idle for
a while is checked before it is lent, so a connection the server dropped
meanwhile is replaced, not handed out), runs in one transaction that
commits when the call returns and rolls back when it raises, and every
driver error (pool timeouts included) reaches the caller as
:class:`~mailpipe.errors.StoreError`. Sessions run in UTC, so ``timestamptz``
values come back as aware UTC datetimes.

After the server dropped the pool's connections (a restart), the first call
waits about a second: psycopg_pool backs off between failed checks before it
hands over a fresh connection.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from typing import Final, TypeVar

import psycopg
import trio
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from mailpipe.errors import StoreError

T = TypeVar("T")
Conn = psycopg.Connection[TupleRow]

POOL_SIZE: Final = 8
"""Connections in the pool, and worker threads let into it at once (one
limiter for both): a thread let in without a free connection would only sit
waiting for one, and a 2-core database server gains nothing from more
statements running at once."""
POOL_MIN: Final = 2
"""Connections kept open while idle (the scheduler and the recorder)."""
POOL_TIMEOUT_S: Final = 5.0
"""How long a call waits for a connection before failing with StoreError
(the database is away): the HTTP edge answers 503 rather than hang."""
CHECK_IDLE_S: Final = 2.0
"""A connection unused this long is checked before it is lent. Checking every
one cost a round trip per call (the rate row's transaction is on the send
path): at the ceiling, 2.5 % of the service's time. One used within this time
was live then; if the server died since, the call fails once with StoreError
(its connection is then discarded) and its caller retries, as for any outage."""
CONNECT_TIMEOUT_S: Final = 5
"""libpq ``connect_timeout``: an unreachable server fails a connection attempt by then."""


class _Dropped(psycopg.OperationalError):
    """The connection broke while ``fn`` ran, before its commit."""


def unavailable(exc: psycopg.Error) -> StoreError:
    """The StoreError for a driver error (to raise ``from exc``)."""
    if isinstance(exc, psycopg.OperationalError):
        return StoreError(f"database unavailable: {exc}")
    return StoreError(f"database error: {exc}")


def configure_session(conn: Conn) -> None:
    """Settings every session of mailpipe runs with: UTC times."""
    conn.execute("SET TimeZone TO 'UTC'")
    conn.commit()


class PgPool:
    """A pool of connections to one database, lent to worker threads one call at a time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            url,
            min_size=POOL_MIN,
            max_size=POOL_SIZE,
            open=False,
            timeout=POOL_TIMEOUT_S,
            check=self._check_if_idle,
            configure=configure_session,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_S},
            name="mailpipe",
        )
        self._limiter = trio.CapacityLimiter(POOL_SIZE)
        self._last_used: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()

    def _check_if_idle(self, conn: Conn) -> None:
        if time.monotonic() - self._last_used.get(conn, -math.inf) > CHECK_IDLE_S:
            ConnectionPool.check_connection(conn)

    def call(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` in one transaction on a pooled connection (in this thread)."""
        try:
            try:
                return self._once(fn)
            except _Dropped:
                # The server dropped the connection before the transaction
                # committed, so none of it was kept: run it once more on
                # another. The others may have been dropped too (a restart):
                # check each before it is lent again.
                self._last_used.clear()
                return self._once(fn)
        except psycopg.Error as exc:
            raise unavailable(exc) from exc

    def _once(self, fn: Callable[[Conn], T]) -> T:
        with self._pool.connection() as conn:
            try:
                return fn(conn)
            except psycopg.OperationalError as exc:
                if conn.broken or conn.closed or isinstance(exc, psycopg.errors.AdminShutdown):
                    raise _Dropped(str(exc)) from exc
                raise
            finally:
                self._last_used[conn] = time.monotonic()

    async def run(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` in one transaction on a pooled connection, in a worker thread."""
        return await trio.to_thread.run_sync(self.call, fn, limiter=self._limiter)

    async def open(self) -> None:
        """Open the pool, waiting until its first connections are made."""

        def open_() -> None:
            try:
                self._pool.open(wait=True, timeout=POOL_TIMEOUT_S)
            except psycopg.Error as exc:
                self._pool.close()
                raise unavailable(exc) from exc

        await trio.to_thread.run_sync(open_, limiter=self._limiter)

    async def close(self) -> None:
        """Close every connection of the pool."""
        await trio.to_thread.run_sync(self._pool.close, limiter=self._limiter)
