"""The rate limiter, timed exactly with trio's autojump clock."""

from __future__ import annotations

import bisect
import time

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from mailpipe.pipeline.limiter import MARGIN, RateLimiter
from mailpipe.pipeline.sender import batch_size
from mailpipe.transport import Release, hold_until

EPS = 1e-9


def max_in_window(starts: list[tuple[float, int]], window: float = 1.0) -> int:
    """Most sends starting within any half-open window [t, t + window)."""
    times = [t for t, _ in starts]
    counts = [k for _, k in starts]
    best = 0
    for i, (t, _) in enumerate(starts):
        j = bisect.bisect_left(times, t + window - EPS)
        best = max(best, sum(counts[i:j]))
    return best


async def run_consumers(limiter: RateLimiter, n_tasks: int, per_task: int, k: int = 1) -> list[
    tuple[float, int]
]:
    starts: list[tuple[float, int]] = []

    async def consumer() -> None:
        for _ in range(per_task):
            await limiter.acquire(k)
            starts.append((trio.current_time(), k))

    async with trio.open_nursery() as nursery:
        for _ in range(n_tasks):
            nursery.start_soon(consumer)
    return sorted(starts)


@pytest.mark.parametrize("rate", [1, 14, 50, 100, 333])
async def test_no_window_exceeds_rate_and_mean_is_exact(
    autojump_clock: trio.testing.MockClock, rate: int
) -> None:
    limiter = RateLimiter(rate)
    start = trio.current_time()
    starts = await run_consumers(limiter, n_tasks=8, per_task=rate * 5)
    assert len(starts) == rate * 40
    assert max_in_window(starts) <= rate
    assert max_in_window(starts, 1 + MARGIN) == rate
    # Evenly spaced: permit n at start + n * (1 + MARGIN) / rate, so no drift.
    for n, (t, _) in enumerate(starts):
        assert t == pytest.approx(start + n * (1 + MARGIN) / rate, abs=1e-6)
    elapsed = starts[-1][0] - starts[0][0]
    mean = (len(starts) - 1) / elapsed
    assert mean == pytest.approx(rate / (1 + MARGIN), rel=1e-6)
    assert rate * 0.99 < mean <= rate


async def test_no_drift_over_a_long_run(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(14)
    start = trio.current_time()
    starts = await run_consumers(limiter, n_tasks=3, per_task=14 * 200)  # 10 minutes of sending
    assert starts[-1][0] == pytest.approx(start + (len(starts) - 1) * (1 + MARGIN) / 14, abs=1e-6)
    assert max_in_window(starts) == 14


async def test_first_second_has_no_burst(autojump_clock: trio.testing.MockClock) -> None:
    # The Go service's token bucket let 2N through in the first second.
    limiter = RateLimiter(50)
    start = trio.current_time()
    starts = await run_consumers(limiter, n_tasks=100, per_task=2)
    assert sum(1 for t, _ in starts if t < start + 1) == 50
    assert max_in_window(starts, 1 + MARGIN) == 50  # also with the margin


async def test_idle_gap_does_not_allow_a_burst(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(10)
    first = await run_consumers(limiter, n_tasks=1, per_task=10)
    await trio.sleep(5)
    second = await run_consumers(limiter, n_tasks=5, per_task=4)
    assert max_in_window(first + second) == 10


async def test_bulk_permits_fill_windows_exactly(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(100)
    k = batch_size(50, 100)
    assert k == 50
    starts = await run_consumers(limiter, n_tasks=4, per_task=20, k=k)
    assert max_in_window(starts) == 100
    elapsed = starts[-1][0] - starts[0][0]
    assert (sum(n for _, n in starts) - k) / elapsed == pytest.approx(100 / (1 + MARGIN), rel=1e-6)


async def test_mixed_bulk_sizes_never_exceed_the_ceiling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(100)
    starts: list[tuple[float, int]] = []
    for k in [1, 50, 50, 30, 30, 30, 7, 50, 1, 1, 49, 50] * 5:
        await limiter.acquire(k)
        starts.append((trio.current_time(), k))
    assert max_in_window(starts) <= 100


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=60),
       st.integers(min_value=20, max_value=200))
def test_window_guard_holds_for_any_sequence(sizes: list[int], rate: int) -> None:
    now = [0.0]
    limiter = RateLimiter(rate, clock=lambda: now[0])
    starts = []
    for k in sizes:
        t = limiter.reserve(k)
        now[0] = max(now[0], t)  # callers start at their reserved time
        starts.append((t, k))
    assert max_in_window(starts) <= rate


@given(st.lists(st.tuples(st.integers(min_value=1, max_value=50),
                          st.sampled_from([0.0, 0.0, 0.0, 0.004, 0.02, 0.3])),
                min_size=1, max_size=60),
       st.integers(min_value=50, max_value=200))
def test_calls_that_leave_late_still_keep_every_window_within_the_rate(
    calls: list[tuple[int, float]], rate: int
) -> None:
    # A worker thread can reach its permit late (GIL, a loaded machine). The
    # lateness is reported as the call leaves, before the next reservation;
    # counted from when calls really left, no window holds more than the rate.
    now = [0.0]
    limiter = RateLimiter(rate, clock=lambda: now[0])
    left = []
    for k, late in calls:
        t = limiter.reserve(k)
        now[0] = max(now[0], t + late)
        if late:
            limiter.left_late(t, k, late)
        left.append((t + late, k))
    assert max_in_window(sorted(left)) <= rate


def test_a_late_call_pushes_back_the_call_that_would_follow_it_too_closely() -> None:
    now = [0.0]
    limiter = RateLimiter(50, clock=lambda: now[0])
    first = limiter.reserve(50)
    limiter.left_late(first, 50, 0.02)
    second = limiter.reserve(50)
    assert second == pytest.approx(first + 0.02 + 1 + MARGIN)  # not first + 1 + MARGIN


def test_a_pushed_call_does_not_shift_the_schedule_after_it() -> None:
    now = [0.0]
    limiter = RateLimiter(100, clock=lambda: now[0])
    a = limiter.reserve(50)
    b = limiter.reserve(50)
    limiter.left_late(a, 50, 0.02)
    c = limiter.reserve(50)
    d = limiter.reserve(50)
    span = 1 + MARGIN
    assert (b, c) == (pytest.approx(a + span / 2), pytest.approx(a + 0.02 + span))
    assert d == pytest.approx(a + 1.5 * span)  # back on the planned slot: the mean holds


async def test_throttling_cuts_the_rate_and_recovery_climbs_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(40)
    limiter.throttled()
    assert limiter.rate == 30
    limiter.throttled()  # within the same second: one cut per window
    assert limiter.rate == 30
    await trio.sleep(1)
    limiter.throttled()
    assert limiter.rate == 22.5
    # While SES accepts, the rate climbs back step by step to the target.
    seen = [limiter.rate]
    while limiter.rate < 40:
        await limiter.acquire()
        limiter.succeeded()
        seen.append(limiter.rate)
    assert seen == sorted(seen)
    assert limiter.rate == 40
    assert limiter.min_rate > 0


async def test_throttled_rate_spaces_permits_wider(autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(40, recovery_per_s=0.0, decrease=0.5)
    await limiter.acquire()
    limiter.throttled()
    starts = await run_consumers(limiter, n_tasks=2, per_task=20)
    assert max_in_window(starts) <= 20


def test_a_release_reached_late_reports_how_late() -> None:
    reported: list[float] = []
    hold_until(Release(time.perf_counter() - 0.05, reported.append))  # the thread came late
    assert len(reported) == 1 and reported[0] >= 0.05
    hold_until(None)
    hold_until(time.perf_counter() - 1.0)  # a plain moment reports nothing, and does not wait
    assert len(reported) == 1


@pytest.mark.parametrize(("rate", "sizes"), [(100, [1, 50, 10, 50, 2]), (14, [1, 7, 2, 14])])
async def test_mixed_call_sizes_from_many_tasks_keep_every_window(
    autojump_clock: trio.testing.MockClock, rate: int, sizes: list[int]
) -> None:
    # Calls of different sizes reserved by concurrent tasks: the window guard
    # pushes some back, and later calls planned before them must count them.
    limiter = RateLimiter(rate)
    starts: list[tuple[float, int]] = []

    async def consumer(n: int) -> None:
        for i in range(40):
            k = sizes[(n * 7 + i) % len(sizes)]
            await trio.sleep_until(limiter.reserve(k))
            starts.append((trio.current_time(), k))

    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(consumer, n)
    assert max_in_window(sorted(starts)) <= rate
