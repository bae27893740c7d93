"""The shared rate limiter: one exact rate for several instances, timed with autojump.

The database row is played by :class:`Row`, a stand-in with the contract of
``Cluster.rate_transaction`` whose clock is trio's (a different epoch, as a
database's is); the real row is exercised on PostgreSQL in
``test_store_postgres.py`` and by the processes of ``test_instances.py``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import TypeVar

import pytest
import trio
import trio.testing
from test_limiter import max_in_window

from mailpipe.pipeline.limiter import FREE_SLACK, TIGHT_SLACK, RateLimiter
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
            return value, trio.current_time() - db_now


def shared(row: Row, rate: float) -> SharedRateLimiter:
    # The row's offsets are to trio's clock, as a real database's are to perf_counter.
    return SharedRateLimiter(row, rate, clock=trio.current_time)  # type: ignore[arg-type]


async def consume(
    limiters: list[SharedRateLimiter], calls: int, sizes: list[int]
) -> list[tuple[float, int]]:
    starts: list[tuple[float, int]] = []

    async def consumer(n: int) -> None:
        for i in range(calls):
            limiter = limiters[(n + i) % len(limiters)]
            k = sizes[(n * 7 + i) % len(sizes)]
            permit = await limiter.permit(k)
            await trio.sleep_until(permit.start)
            permit.report_late(trio.current_time() - permit.start)  # as the transports do
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
    assert row.transactions <= len(starts)  # requests waiting together share one


async def test_requests_that_wait_together_share_one_transaction(
    autojump_clock: trio.testing.MockClock,
) -> None:
    row = Row()
    limiter, alone = shared(row, 100), RateLimiter(100, margin=MARGIN)
    starts: list[tuple[float, int]] = []

    async def ask(k: int) -> None:
        starts.append(((await limiter.permit(k)).start, k))

    async with trio.open_nursery() as nursery:
        for k in (10, 20, 10, 50, 10):
            nursery.start_soon(ask, k)
    # One transaction for all five, whose starts are those of five reservations
    # in a row (on the row's clock, to its float precision, mapped back to trio's).
    assert row.transactions == 1
    starts.sort()
    alone_starts = [alone.reserve(k) for _, k in starts]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(starts)]
    assert gaps == pytest.approx([b - a for a, b in itertools.pairwise(alone_starts)], abs=1e-6)


async def test_a_request_cancelled_while_waiting_reserves_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    row = Row()
    limiter = shared(row, 10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(limiter.permit, 10)  # holds the row for a round trip
        with trio.move_on_after(0.0001):
            await limiter.permit(10)  # waits behind it, and gives up
    # Had the abandoned request been reserved too, this one would come 2 s on.
    start = (await limiter.permit(1)).start
    assert start - trio.current_time() < 1 + MARGIN
    assert row.transactions == 2


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("rate", "sizes"), [(100, [50]), (14, [1, 7, 2]), (1000, [50, 10])])
async def test_calls_leaving_late_keep_every_window_when_they_keep_their_slack(
    autojump_clock: trio.testing.MockClock, rate: int, sizes: list[int], seed: int
) -> None:
    # Each instance learns of another's late call only at that one's next
    # reservation. A call that would leave later than its permit's slack does
    # not leave (the transports refuse it, see test_release.py).
    rng = random.Random(seed)
    row = Row()
    limiters = [shared(row, rate) for _ in range(3)]
    left: list[tuple[float, int]] = []
    refused = 0

    async def instance(limiter: SharedRateLimiter, n: int) -> None:
        nonlocal refused
        for i in range(30):
            k = sizes[(n + i) % len(sizes)]
            permit = await limiter.permit(k)
            assert permit.slack is not None
            late = rng.choice([0.0, 0.0, 0.001, 0.004, 0.05, 0.3])
            await trio.sleep_until(permit.start + late)
            if late > permit.slack:
                refused += 1
                continue
            permit.report_late(late)
            left.append((trio.current_time(), k))

    async with trio.open_nursery() as nursery:
        for n, limiter in enumerate(limiters):
            nursery.start_soon(instance, limiter, n)
    assert max_in_window(sorted(left)) <= rate
    assert refused > 0  # the late ones were put to the test


async def test_far_from_the_rate_a_permit_has_the_free_slack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    row = Row()
    limiter = shared(row, 10_000)
    first = await limiter.permit(50)
    assert first.slack == FREE_SLACK
    near = shared(row, 100)  # the same row, read as a small rate: 50 of 100 binds
    assert (await near.permit(50)).slack == TIGHT_SLACK


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
    # (Slots are summed on the row's clock, near the Unix epoch, where a float
    # resolves 0.24 µs: 50 of them may round by a few microseconds.)
    assert max_in_window(starts, 1 + MARGIN - 1e-4) == 50


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
