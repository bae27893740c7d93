"""One exact rate for every instance on a PostgreSQL database.

The permits come from the same pure :class:`~mailpipe.pipeline.limiter.RateLimiter`
as on one instance, but its state (the next slot, the sliding window of
recent calls, the AIMD rate) lives in one database row. Each reservation is
one short transaction on that row, under its lock, on the database's clock:
whichever instance reserves, the calls of all instances are spaced as the
calls of one. An idle instance takes no share.

A reservation's start is a database time; it is mapped to this process's
clocks through the offset measured in the same round trip (off by at most
half of it, well inside ``SHARED_MARGIN``). Throttling and successes
seen here, and calls that left late, are folded into the shared state at the
next reservation, so they slow or speed every instance.
"""

from __future__ import annotations

import json
import time
from collections import deque
from functools import partial
from typing import Final

import trio

from mailpipe.lru import BoundedCache
from mailpipe.pipeline.limiter import Permit, RateLimiter
from mailpipe.store.base import Cluster

SHARED_MARGIN: Final = 0.015
"""The shared limiter spaces permits over 1.015 s windows (``MARGIN`` is 0.006
on one instance). Across instances a call that leaves late cannot delay the
next instance's call, which was reserved before it (a late report reaches the
row with the reporter's next reservation), and each instance maps the row's
clock through its own measured offset. With 3 instances at EMAIL_RATE=100 on
the 2-core development machine, calls arrived at the endpoint as close as
497 ms apart against 503 ms planned (6 ms early), and one 30 s run of
``scripts/bench.py --store postgres`` put 150 into a 1-second window with the
single-instance margin. 15 ms is 2.5 times the jitter seen, at 1.5 % of the rate."""
REMEMBERED_STARTS: Final = 4096
"""Reservations whose database start is kept for late reports: far more than
``MAX_CONCURRENT`` calls in flight."""


class SharedRateLimiter:
    """The limiter of :mod:`mailpipe.pipeline.limiter`, its state shared through ``cluster``."""

    def __init__(
        self, cluster: Cluster, rate: float, *, margin: float = SHARED_MARGIN
    ) -> None:
        self._cluster = cluster
        self._db_now = 0.0
        self._core = RateLimiter(rate, clock=lambda: self._db_now, margin=margin)
        self._offset = time.perf_counter() - time.time()
        """``perf_counter() - database clock``, as last measured."""
        self._late: deque[tuple[float, int, float]] = deque()
        self._succeeded = 0
        self._throttled = False
        self._one_at_a_time = trio.Lock()
        """The row takes one reservation at a time anyway: the others wait here,
        not in a worker thread holding one of the store's pooled connections."""
        self._starts: BoundedCache[float, float] = BoundedCache(REMEMBERED_STARTS)
        """Trio start of a recent reservation → its database start."""

    @property
    def target(self) -> float:
        """The configured rate."""
        return self._core.target

    @property
    def rate(self) -> float:
        """The shared effective rate, as of the last reservation."""
        return self._core.rate

    async def permit(self, k: int = 1, *, lead: float = 0.0) -> Permit:
        """Reserve ``k`` permits in the shared row: when to start (trio time).

        Raises :class:`~mailpipe.errors.StoreError` when the database is away:
        then nothing was reserved.
        """
        async with self._one_at_a_time:
            return await self._permit(k, lead)

    async def _permit(self, k: int, lead: float) -> Permit:
        late = [self._late.popleft() for _ in range(len(self._late))]
        succeeded, self._succeeded = self._succeeded, 0
        throttled, self._throttled = self._throttled, False
        try:
            start_db, offset = await self._cluster.rate_transaction(
                lambda state, db_now: self._reserve(state, db_now, k, lead, late,
                                                    succeeded, throttled)
            )
        except BaseException:
            self._succeeded += succeeded
            self._throttled = self._throttled or throttled
            raise
        self._offset = offset
        start = start_db + offset + (trio.current_time() - time.perf_counter())
        self._starts.put(start, start_db)
        return Permit(start, partial(self.left_late, start, k))

    def _reserve(
        self,
        state: str | None,
        db_now: float,
        k: int,
        lead: float,
        late: list[tuple[float, int, float]],
        succeeded: int,
        throttled: bool,
    ) -> tuple[str, float]:
        # Runs in the store's worker thread, under the row lock.
        self._db_now = db_now
        if state is not None:
            self._core.load(json.loads(state))
        for start, n, seconds in late:
            start_db = self._starts.get(start)
            if start_db is not None:
                self._core.left_late(start_db, n, seconds)
        if throttled:
            self._core.throttled()
        if succeeded:
            self._core.succeeded(succeeded)
        start_db = self._core.reserve(k, lead=lead)
        return json.dumps(self._core.state()), start_db

    def left_late(self, start: float, k: int, late: float) -> None:
        """The call reserved for ``start`` (trio time) left ``late`` s after it
        (from any thread; sent along with the next reservation)."""
        self._late.append((start, k, late))

    def pacing(self, *, lead: float = 0.0) -> bool:
        """Whether the next shared permit is further away than ``lead``, as last seen."""
        self._db_now = time.perf_counter() - self._offset
        return self._core.pacing(lead=lead)

    def throttled(self) -> None:
        """SES said "too fast": every instance slows down (at the next reservation)."""
        self._throttled = True

    def succeeded(self, k: int = 1) -> None:
        """``k`` sends went through: the shared rate climbs back (at the next reservation)."""
        self._succeeded += k
