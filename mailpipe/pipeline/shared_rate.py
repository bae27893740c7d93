"""One exact rate for every instance on a PostgreSQL database.

The permits come from the same pure :class:`~mailpipe.pipeline.limiter.RateLimiter`
as on one instance, but its state (the next slot, the sliding window of
recent calls, the AIMD rate) lives in one database row. Each reservation is
one short transaction on that row, under its lock, on the database's clock:
whichever instance reserves, the calls of all instances are spaced as the
calls of one. An idle instance takes no share.

Calls that ask for permits while a reservation is under way wait for it to
end, and are then reserved together in one transaction, each with its own
start, as if reserved one after another. Far from the rate, calls ask in
bursts (a claimed chunk is split into calls at once), and one transaction per
call was a fifth of the service's CPU at the ceiling; the permits handed out
are the same either way.

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
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass(eq=False)
class _Wanted:
    """One caller's request for permits, served by whichever reservation takes it."""

    k: int
    lead: float
    start_db: float | None = None
    start: float = 0.0
    """``start_db`` on trio's clock."""
    slack: float | None = None
    error: BaseException | None = field(default=None, repr=False)


class SharedRateLimiter:
    """The limiter of :mod:`mailpipe.pipeline.limiter`, its state shared through ``cluster``."""

    def __init__(
        self,
        cluster: Cluster,
        rate: float,
        *,
        margin: float = SHARED_MARGIN,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``clock`` is the one ``cluster`` measures its offsets against."""
        self._cluster = cluster
        self._clock = clock
        self._db_now = 0.0
        self._core = RateLimiter(rate, clock=lambda: self._db_now, margin=margin, slack=True)
        self._offset = clock() - time.time()
        """``clock() - database clock``, as last measured."""
        self._late: deque[tuple[float, int, float]] = deque()
        self._succeeded = 0
        self._throttled = False
        self._one_at_a_time = trio.Lock()
        """The row takes one reservation at a time anyway: the others wait here,
        not in a worker thread holding one of the store's pooled connections."""
        self._wanted: list[_Wanted] = []
        """Requests not yet taken by a reservation, in the order they came."""
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
        wanted = _Wanted(k, lead)
        self._wanted.append(wanted)
        try:
            async with self._one_at_a_time:
                if wanted.start_db is None and wanted.error is None:
                    await self._reserve_wanted()
        except BaseException:
            if wanted in self._wanted:  # cancelled before any reservation took it
                self._wanted.remove(wanted)
            raise
        if wanted.error is not None:
            raise wanted.error
        assert wanted.start_db is not None
        self._starts.put(wanted.start, wanted.start_db)
        return Permit(wanted.start, partial(self.left_late, wanted.start, k), wanted.slack)

    async def _reserve_wanted(self) -> None:
        """Reserve every waiting request in one transaction (the row lock held)."""
        wanted, self._wanted = self._wanted, []
        late = [self._late.popleft() for _ in range(len(self._late))]
        succeeded, self._succeeded = self._succeeded, 0
        throttled, self._throttled = self._throttled, False
        try:
            starts, offset = await self._cluster.rate_transaction(
                lambda state, db_now: self._reserve(
                    state, db_now, wanted, late, succeeded, throttled
                )
            )
        except BaseException as exc:
            # Nothing was reserved, and the reports wait for the next reservation.
            self._succeeded += succeeded
            self._throttled = self._throttled or throttled
            self._late.extendleft(reversed(late))
            if not isinstance(exc, Exception):
                # Cancelled before the transaction began: whoever takes the
                # lock next reserves for the others.
                self._wanted[:0] = wanted
                raise
            for each in wanted:
                each.error = exc
            return
        self._offset = offset
        to_trio = offset + (trio.current_time() - self._clock())
        for each, (start_db, slack) in zip(wanted, starts, strict=True):
            each.start_db, each.start, each.slack = start_db, start_db + to_trio, slack

    def _reserve(
        self,
        state: str | None,
        db_now: float,
        wanted: list[_Wanted],
        late: list[tuple[float, int, float]],
        succeeded: int,
        throttled: bool,
    ) -> tuple[str, list[tuple[float, float | None]]]:
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
        starts = [self._core.reserve_call(each.k, lead=each.lead) for each in wanted]
        return json.dumps(self._core.state()), starts

    def left_late(self, start: float, k: int, late: float) -> None:
        """The call reserved for ``start`` (trio time) left ``late`` s after it
        (from any thread; sent along with the next reservation)."""
        self._late.append((start, k, late))

    def pacing(self, *, lead: float = 0.0) -> bool:
        """Whether the next shared permit is further away than ``lead``, as last seen."""
        self._db_now = self._clock() - self._offset
        return self._core.pacing(lead=lead)

    def throttled(self) -> None:
        """SES said "too fast": every instance slows down (at the next reservation)."""
        self._throttled = True

    def succeeded(self, k: int = 1) -> None:
        """``k`` sends went through: the shared rate climbs back (at the next reservation)."""
        self._succeeded += k
