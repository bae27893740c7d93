"""The sender pool on its own: a MockTransport, an exact clock, the channels as its edges."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from mailpipe.compose import Composer
from mailpipe.content.tokens import Tokens
from mailpipe.errors import (
    PermanentSendError,
    ReleaseMissed,
    SendingPaused,
    Throttled,
    TransientSendError,
)
from mailpipe.model import Content, Outcome
from mailpipe.pipeline.jobs import Handed, Job
from mailpipe.pipeline.limiter import RateLimiter
from mailpipe.pipeline.metrics import Metrics
from mailpipe.pipeline.pause import PauseGate
from mailpipe.pipeline.sender import MAX_LEAD, RetryPolicy, SenderPool
from mailpipe.status import Status
from mailpipe.transport import Email, SendResult
from mailpipe.transport.mock import Handler, MockTransport, accept_all


@pytest.fixture
def thread_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only once the loop has been idle for 20 ms of real
    time: a worker thread in a transport call finishes long before, so waiting
    for one does not count as idle (with ``autojump_clock`` it would)."""
    return trio.testing.MockClock(autojump_threshold=0.02)


CONTENT = Content(1, "Hello", "<p>Hello</p>", track_opens=False, track_clicks=False)


def jobs(ids: Sequence[int], topic: str = "t") -> list[Job]:
    return [Job(i, topic, f"r{i}@example.com", CONTENT) for i in ids]


@dataclass
class Harness:
    pool: SenderPool
    jobs: trio.MemorySendChannel[list[Job]]
    outcomes: trio.MemoryReceiveChannel[Outcome]
    gate: PauseGate
    limiter: RateLimiter
    metrics: Metrics
    seen: dict[int, Outcome] = field(default_factory=dict)

    async def settle(self, ids: Sequence[int]) -> dict[int, Outcome]:
        """Wait until every request in ``ids`` has an outcome; the latest of each."""
        with trio.fail_after(600):
            while not set(ids) <= self.seen.keys():
                outcome = await self.outcomes.receive()
                self.seen[outcome.request_id] = outcome
        return {i: self.seen[i] for i in ids}


@asynccontextmanager
async def running_pool(
    transport: MockTransport, *, rate: float = 1000, max_attempts: int = 3,
    max_concurrent: int = 4, lead: float = 0.0,
) -> AsyncIterator[Harness]:
    jobs_send, jobs_recv = trio.open_memory_channel[list[Job]](10)
    out_send, out_recv = trio.open_memory_channel[Outcome](1000)
    gate, limiter, metrics = PauseGate(), RateLimiter(rate), Metrics()
    pool = SenderPool(
        transport, limiter, Composer("sender@example.com", Tokens(b"k" * 32), "http://x"),
        jobs_recv, out_send, metrics, max_concurrent=max_concurrent,
        retry=RetryPolicy(max_attempts=max_attempts, base_delay=1.0, max_delay=8.0,
                          throttle_delay=0.5),
        handed=Handed(), gate=gate, rng=random.Random(7), lead=lead,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        yield Harness(pool, jobs_send, out_recv, gate, limiter, metrics)
        pool.stop()


def answers(*per_call: Callable[[Email], SendResult]) -> Handler:
    """A handler answering the n-th call's emails with ``per_call[n]`` (the last repeats)."""
    calls = iter(per_call)
    last = per_call[-1]

    def handler(emails: Sequence[Email]) -> list[SendResult]:
        answer = next(calls, last)
        return [answer(email) for email in emails]

    return handler


def sent(email: Email) -> SendResult:
    return SendResult(message_id=f"m-{email.request_id}")


async def test_a_bulk_call_with_a_partial_failure_settles_each_recipient(
    thread_clock: trio.testing.MockClock,
) -> None:
    def mixed(email: Email) -> SendResult:
        if email.request_id == 2:
            return SendResult(error=PermanentSendError("MessageRejected", "bad address"))
        if email.request_id == 4:
            return SendResult(error=TransientSendError("InternalFailure", "try again"))
        return sent(email)

    transport = MockTransport(answers(mixed, sent))
    async with running_pool(transport) as h:
        await h.jobs.send(jobs([1, 2, 3, 4]))
        out = await h.settle([1, 2, 3, 4])  # a retry emits nothing until it settles
    assert [len(call) for call in transport.calls] == [4, 1]  # one bulk call, one retry
    assert out[1] == Outcome(1, Status.SENT, "m-1", attempts=1)
    assert out[2].status is Status.FAILED and "MessageRejected" in (out[2].error or "")
    assert out[3] == Outcome(3, Status.SENT, "m-3", attempts=1)
    assert out[4] == Outcome(4, Status.SENT, "m-4", attempts=2)


async def test_retries_run_out_after_max_attempts_with_backoff(
    thread_clock: trio.testing.MockClock,
) -> None:
    times: list[float] = []

    def failing(emails: Sequence[Email]) -> list[SendResult]:
        times.append(trio.from_thread.run_sync(trio.current_time))
        return [SendResult(error=TransientSendError("ServiceUnavailable", "busy"))
                for _ in emails]

    transport = MockTransport(failing)
    async with running_pool(transport, max_attempts=3) as h:
        await h.jobs.send(jobs([1]))
        (out,) = (await h.settle([1])).values()
    assert out.status is Status.FAILED and out.attempts == 3
    assert len(transport.calls) == 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Jittered exponential backoff: the second wait is drawn from a wider range.
    assert 0 < gaps[0] <= 1.0 + 1e-3 and 0 < gaps[1] <= 2.0 + 1e-3
    assert h.metrics.retried._value.get() == 2


async def test_throttling_slows_the_limiter_and_costs_no_attempt(
    thread_clock: trio.testing.MockClock,
) -> None:
    throttled = SendResult(error=Throttled("Throttling", "Maximum sending rate exceeded"))
    transport = MockTransport(answers(lambda e: throttled, lambda e: throttled, sent))
    async with running_pool(transport, rate=40, max_attempts=1) as h:
        await h.jobs.send(jobs([1]))
        (out,) = (await h.settle([1])).values()
        assert h.limiter.rate < 40
    assert out == Outcome(1, Status.SENT, "m-1", attempts=3)  # throttles never fail it
    assert h.metrics.throttled._value.get() == 2


async def test_a_missed_release_asks_for_a_new_permit_and_costs_no_attempt(
    thread_clock: trio.testing.MockClock,
) -> None:
    missed = SendResult(error=ReleaseMissed("ReleaseMissed", "20.0 ms after the permit"))
    transport = MockTransport(answers(lambda e: missed, sent))
    async with running_pool(transport, rate=40, max_attempts=1, lead=0.015) as h:
        lead = h.pool.lead
        await h.jobs.send(jobs([1, 2]))
        out = await h.settle([1, 2])
        assert h.limiter.rate == 40  # no throttling: the provider never saw it
        assert h.pool.lead == 2 * lead  # the next calls start preparing earlier
    assert out == {1: Outcome(1, Status.SENT, "m-1", attempts=1),
                   2: Outcome(2, Status.SENT, "m-2", attempts=1)}
    assert [len(call) for call in transport.calls] == [2, 2]
    assert h.metrics.release_missed._value.get() == 2
    assert h.metrics.retried._value.get() == 0


async def test_the_lead_stops_growing_at_its_bound(thread_clock: trio.testing.MockClock) -> None:
    missed = SendResult(error=ReleaseMissed("ReleaseMissed", "300.0 ms after the permit"))
    transport = MockTransport(answers(*[lambda e: missed] * 8, sent), max_batch=1)
    async with running_pool(transport, rate=40, max_attempts=1, lead=0.015) as h:
        await h.jobs.send(jobs([1]))
        out = await h.settle([1])
        assert h.pool.lead == MAX_LEAD
    assert out == {1: Outcome(1, Status.SENT, "m-1", attempts=1)}
    assert len(transport.calls) == 9


async def test_the_lead_halves_back_after_a_minute_with_no_missed_permit(
    thread_clock: trio.testing.MockClock,
) -> None:
    missed = SendResult(error=ReleaseMissed("ReleaseMissed", "20.0 ms after the permit"))
    transport = MockTransport(answers(lambda e: missed, lambda e: missed, sent), max_batch=1)
    async with running_pool(transport, rate=40, lead=0.015) as h:
        await h.jobs.send(jobs([1]))
        await h.settle([1])
        assert h.pool.lead == 0.06  # two misses: doubled twice
        await trio.sleep(30)
        await h.jobs.send(jobs([2]))
        await h.settle([2])
        assert h.pool.lead == 0.06  # on time, but not yet for a minute
        await trio.sleep(31)
        await h.jobs.send(jobs([3]))
        await h.settle([3])
        assert h.pool.lead == 0.03  # a minute on time: halved
        await h.jobs.send(jobs([4]))
        await h.settle([4])
        assert h.pool.lead == 0.03  # and the next minute starts now
        await trio.sleep(61)
        for i in (5, 6):
            await h.jobs.send(jobs([i]))
            await h.settle([i])
        assert h.pool.lead == 0.015  # never below where it started


async def test_a_paused_account_gives_the_rows_back_and_calls_no_more(
    thread_clock: trio.testing.MockClock,
) -> None:
    paused = SendResult(error=SendingPaused("AccountSendingPausedException", "paused"))
    transport = MockTransport(answers(lambda e: paused))
    async with running_pool(transport) as h:
        await h.jobs.send(jobs([1, 2]))
        first = await h.settle([1, 2])
        assert h.gate.paused
        await h.jobs.send(jobs([3, 4]))
        later = await h.settle([3, 4])
    assert len(transport.calls) == 1
    assert {o.status for o in [*first.values(), *later.values()]} == {Status.CREATED}
    assert later[3].attempts == 0  # never called: still its first attempt


async def test_a_stop_during_a_call_lets_it_finish_and_stops_the_rest(
    thread_clock: trio.testing.MockClock,
) -> None:
    in_call, release = trio.Event(), trio.Event()

    def slow(emails: Sequence[Email]) -> list[SendResult]:
        if emails[0].request_id == 1:
            trio.from_thread.run_sync(in_call.set)
            trio.from_thread.run(release.wait)
        return accept_all(emails)

    transport = MockTransport(slow, max_batch=2)
    # One call at a time: the next batch waits for the slot, so only the batch
    # in the call is handed when the stop comes, however slow this machine is.
    async with running_pool(transport, rate=2, max_concurrent=1) as h:
        await h.jobs.send(jobs([1, 2, 3, 4, 5, 6]))
        await in_call.wait()
        handed = h.pool.stop_topic("t", 5)  # 6 came later: not covered
        release.set()
        out = await h.settle([1, 2, 3, 4, 5, 6])
    assert handed == [1, 2]  # in the SES call: cannot be called back
    assert [out[i].status for i in (1, 2)] == [Status.SENT, Status.SENT]
    assert [out[i].status for i in (3, 4, 5)] == [Status.STOPPED] * 3
    assert out[6].status is Status.SENT
    assert sorted(e.request_id for call in transport.calls for e in call) == [1, 2, 6]


@pytest.mark.parametrize("error", [
    TransientSendError("ServiceUnavailable", "busy"),
    Throttled("Throttling", "Maximum sending rate exceeded"),
], ids=["transient", "throttled"])
async def test_a_call_back_for_a_retry_is_no_longer_handed_so_a_stop_takes_it(
    thread_clock: trio.testing.MockClock, error: Exception,
) -> None:
    came_back = trio.Event()

    def once(emails: Sequence[Email]) -> list[SendResult]:
        trio.from_thread.run_sync(came_back.set)
        return [SendResult(error=error) for _ in emails]  # type: ignore[arg-type]

    transport = MockTransport(once)
    async with running_pool(transport, max_attempts=3) as h:
        await h.jobs.send(jobs([1, 2]))
        await came_back.wait()
        while h.pool.in_flight:  # the call's answer is being settled
            await trio.sleep(0.001)
        handed = h.pool.stop_topic("t", 2)
        out = await h.settle([1, 2])
    # Waiting for its retry, no request is in the provider's hands: the store's
    # stop may take the rows at once, and the retry sends nothing.
    assert handed == []
    assert {o.status for o in out.values()} == {Status.STOPPED}
    assert len(transport.calls) == 1


async def test_at_a_low_rate_a_stop_settles_within_a_second_of_permits(
    thread_clock: trio.testing.MockClock,
) -> None:
    # 10 a second in 10-recipient calls, 20 slots: were every slot to take a
    # batch before the first permit, 20 s of permits would be reserved, and a
    # stopped topic's rows would wait that long for permits they never use.
    transport = MockTransport(accept_all, max_batch=10)
    async with running_pool(transport, rate=10, max_concurrent=20) as h:
        await h.jobs.send(jobs(range(1, 201)))
        await trio.sleep(1.5)
        stopped_at = trio.current_time()
        h.pool.stop_topic("t", 200)
        out = await h.settle(range(1, 201))
        settled_after = trio.current_time() - stopped_at
    assert settled_after <= 1.1
    sent_ids = {i for i, o in out.items() if o.status is Status.SENT}
    assert sent_ids == {e.request_id for call in transport.calls for e in call}
    assert 10 <= len(sent_ids) <= 30  # the calls before the stop, and one in hand
    assert {o.status for o in out.values()} == {Status.SENT, Status.STOPPED}
