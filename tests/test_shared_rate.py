"""The shared rate limiter: one exact rate for several instances, timed with autojump.

The database row is played by :class:`Row`, a stand-in with the contract of
``Cluster.rate_transaction`` whose clock is trio's (a different epoch, as a
database's is); the real row is exercised on PostgreSQL in
``test_store_postgres.py`` and by the processes of ``test_instances.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest
import trio
import trio.testing
from test_limiter import max_in_window

from mailpipe.pipeline.shared_rate import SHARED_MARGIN as MARGIN
from mailpipe.pipeline.shared_rate import SharedRateLimiter

T = TypeVar("T")
EPOCH = 1_800_000_000.0


class Row:
    """One shared state row on a clock of its own epoch; one transaction at a time."""

    def __init__(self) -> None:
        self.state: str | None = None
        self.lock = trio.Lock()
        self.transactions = 0

    async def rate_transaction(
        self, update: Callable[[str | None, float], tuple[str, T]]
    ) -> tuple[T, float]:
        async with self.lock:
            await trio.sleep(0.0005)  # a round trip
            db_now = EPOCH + trio.current_time()
            self.state, value = update(self.state, db_now)
            self.transactions += 1
            return value, time.perf_counter() - db_now


def shared(row: Row, rate: float) -> SharedRateLimiter:
    return SharedRateLimiter(row, rate)  # type: ignore[arg-type]


async def consume(
    limiters: list[SharedRateLimiter], calls: int, sizes: list[int]
) -> list[tuple[float, int]]:
    starts: list[tuple[float, int]] = []

    async def consumer(n: int) -> None:
        for i in range(calls):
            limiter = limiters[(n + i) % len(limiters)]
            k = sizes[(n * 7 + i) % len(sizes)]
            await trio.sleep_until((await limiter.permit(k)).start)
            starts.append((trio.current_time(), k))

    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(consumer, n)
    return sorted(starts)


@pytest.mark.parametrize(("rate", "sizes"), [(100, [1, 50, 10, 50, 2]), (14, [1, 7, 2]),
                                             (200, [50, 50, 1])])
async def test_instances_together_never_exceed_the_rate(
    autojump_clock: trio.testing.MockClock, rate: int, sizes: list[int]
) -> None:
    row = Row()
    limiters = [shared(row, rate) for _ in range(3)]
    starts = await consume(limiters, calls=40, sizes=sizes)
    assert max_in_window(starts) <= rate
    assert row.transactions == len(starts)  # one round trip per call


async def test_one_busy_instance_alone_gets_the_whole_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    row = Row()
    busy, _idle = shared(row, 50), shared(row, 50)
    begin = trio.current_time()
    starts = await consume([busy], calls=50, sizes=[1])
    sent = sum(k for _, k in starts)
    span = starts[-1][0] - begin
    assert sent / span == pytest.approx(50 / (1 + MARGIN), rel=0.01)
    # (Mapping the row's clock to trio's carries microseconds of real time.)
    assert max_in_window(starts, 1 + MARGIN - 1e-3) == 50


async def test_throttling_seen_by_one_instance_slows_every_instance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    row = Row()
    a, b = shared(row, 100), shared(row, 100)
    await a.permit(1)
    a.throttled()
    await a.permit(1)  # folded into the shared row with this reservation
    await b.permit(1)
    assert a.rate == b.rate < 100
    for _ in range(600):
        b.succeeded(1)
        await trio.sleep_until((await b.permit(1)).start)
    await a.permit(1)
    assert a.rate == b.rate == 100  # recovery is shared too


async def test_a_late_call_pushes_the_next_shared_permit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    row = Row()
    a, b = shared(row, 10), shared(row, 10)
    permit = await a.permit(10)
    first = permit.start
    await trio.sleep_until(first)
    permit.report_late(0.3)  # it really left 0.3 s after its permit
    second = (await a.permit(1)).start  # carries the late report into the shared row
    # The window counts the late call from when it really left.
    assert second - (first + 0.3) >= (1 + MARGIN) - 1e-6
    assert (await b.permit(1)).start > first + 0.3
