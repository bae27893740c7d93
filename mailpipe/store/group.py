"""Group commit: many small writes from concurrent requests, one transaction.

SES feedback arrives as many small concurrent POSTs, each of which must be
durable before it is answered. Committing each in its own transaction made the
single writer connection the bottleneck. Here the first writer to get the lock
commits everything queued so far in one transaction; each write runs in its own
savepoint, so one failing write fails alone and the others still commit.

A small batch runs on the event loop, which it holds for the whole transaction,
so nothing could join it: the first writer therefore lets the scheduler go
round ``gather`` times first. Requests already in flight reach their write in
those passes; when the service is idle the passes cost microseconds.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Generic, TypeVar

import trio

from mailpipe.errors import MailpipeError, StoreError

T = TypeVar("T")
Write = Callable[[sqlite3.Connection], Any]
Runner = Callable[[Callable[[sqlite3.Connection], bool]], Awaitable[bool]]


class _Slot(Generic[T]):
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: T | None = None
        self.error: BaseException | None = None


class GroupCommit:
    """Runs ``write`` functions on the writer connection, batched into transactions."""

    def __init__(
        self,
        run: Runner,
        *,
        inline: Runner | None = None,
        inline_max: int = 0,
        gather: int = 0,
        failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._run = run
        self._failed = failed
        self._inline = inline
        self._inline_max = inline_max
        self._gather = gather
        self._pending: list[tuple[Write, _Slot[Any]]] = []
        self._lock = trio.Lock()

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside a transaction shared with concurrent writes; its result."""
        slot: _Slot[T] = _Slot()
        self._pending.append((fn, slot))
        try:
            await self._lock.acquire()
        except BaseException:
            # Cancelled while queued: a write its caller gave up on must not be
            # committed by the next batch (the caller may retry it: an open
            # would count twice). One a running batch took already is past recall.
            self._pending = [entry for entry in self._pending if entry[1] is not slot]
            raise
        with _Held(self._lock):
            if not slot.done:
                for _ in range(self._gather):
                    # Shielded, as the batch below: this write is queued now.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                batch, self._pending = self._pending, []
                # Shielded: once taken from the queue, a batch runs to the end,
                # or the other writers in it would wait forever.
                inline = self._inline if len(batch) <= self._inline_max else None
                try:
                    with trio.CancelScope(shield=True):
                        # On the loop only if the write lock is free at once:
                        # another process holding it must not stall the loop.
                        done = inline is not None and await inline(
                            partial(_apply, batch, wait=False, failed=self._failed)
                        )
                        if not done:
                            await self._run(partial(_apply, batch, failed=self._failed))
                finally:
                    # Whatever went wrong around _apply (a thread, a PRAGMA),
                    # no writer of this batch may be left waiting or told "stored".
                    for _, other in batch:
                        if not other.done:
                            other.error = StoreError("write not run: the transaction failed")
                            other.done = True
        if slot.error is not None:
            raise slot.error
        return slot.value  # type: ignore[return-value]


class _Held:
    """Releases a lock already acquired, at the end of a ``with`` block."""

    def __init__(self, lock: trio.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def _apply(
    batch: list[tuple[Write, _Slot[Any]]],
    conn: sqlite3.Connection,
    *,
    wait: bool = True,
    failed: Callable[[BaseException], None] | None = None,
) -> bool:
    """Run ``batch`` in one transaction and settle every slot; True.

    A failed transaction is reported to ``failed`` (the store's write health)
    before its writers are told.

    With ``wait=False`` on a connection that does not wait for locks, False
    (nothing run, nothing settled) when another connection holds the write lock.
    """
    values: list[Any] = []
    settled = True
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            # Extended codes (SQLITE_BUSY_RECOVERY, ...) share the low byte.
            if not wait and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                settled = False
                return False
            raise
        for fn, slot in batch:
            conn.execute("SAVEPOINT write")
            try:
                values.append(fn(conn))
            except Exception as exc:
                conn.execute("ROLLBACK TO write")
                slot.error = (
                    exc if isinstance(exc, MailpipeError) else StoreError(f"database error: {exc}")
                )
                values.append(None)
            conn.execute("RELEASE write")
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if failed is not None:
            failed(exc)
        if conn.in_transaction:
            # The transaction is over either way; the writers hear of exc.
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
        for _, slot in batch:
            slot.error = slot.error or StoreError(f"database error: {exc}")
    else:
        for (_, slot), value in zip(batch, values, strict=True):
            slot.value = value
    finally:
        if settled:
            for _, slot in batch:
                slot.done = True
    return True
