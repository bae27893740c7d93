"""The delivery actor on its own: a real store, a scripted poster (the test seam, no
sockets), virtual time. Backoff, giving up, 410 and disabling are timed exactly."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing
from standardwebhooks.webhooks import Webhook

from mailpipe.pipeline.metrics import Metrics
from mailpipe.store import Store, open_store
from mailpipe.webhooks.dispatcher import Dispatcher
from mailpipe.webhooks.events import build
from mailpipe.webhooks.model import Attempt, Endpoint
from mailpipe.webhooks.policy import RetryPolicy

EPOCH = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(base_s=10.0, max_s=80.0, retry_hours=1.0, jitter=0.5)
HALF = 0.5  # the jitter draw: each wait is 75 % of the full backoff
BOUND_S = 30 * 86400.0
"""Each test's bound in virtual time (``fail_after``), far beyond what any test sleeps."""
POLL_S = 3600.0  # new events nudge the actor: retries are timed by their due time alone


@pytest.fixture
def thread_clock() -> trio.testing.MockClock:
    """Virtual time that jumps once the loop has been idle for 100 ms of real time, so
    a store call in a worker thread (slow on a loaded machine) does not count as idle;
    the tests wait on events, not polls, so there are few idle moments."""
    return trio.testing.MockClock(autojump_threshold=0.1)


def virtual_now() -> datetime:
    return EPOCH + timedelta(seconds=trio.current_time())


@dataclass
class Script:
    """A poster answering ``codes`` in turn (the last one forever); keeps each call's time."""

    codes: list[int]
    calls: list[tuple[float, Mapping[str, str], bytes]] = field(default_factory=list)
    token: trio.lowlevel.TrioToken | None = None
    called: trio.Event = field(default_factory=trio.Event)

    def __call__(self, url: str, headers: Mapping[str, str], body: bytes) -> Attempt:
        assert self.token is not None
        trio.from_thread.run_sync(self._called, headers, body, trio_token=self.token)
        code = self.codes[min(len(self.calls), len(self.codes)) - 1]
        return Attempt(code, 1.0, "answer")

    def _called(self, headers: Mapping[str, str], body: bytes) -> None:
        self.calls.append((trio.current_time(), headers, body))
        self.called.set()
        self.called = trio.Event()

    def gaps(self) -> list[float]:
        times = [t for t, _, _ in self.calls]
        return [round(b - a, 6) for a, b in itertools.pairwise(times)]


def endpoint(now: datetime, **changes: object) -> Endpoint:
    base = Endpoint(
        id="wh_test", url="https://hooks.example.com/in", events=("*",), topic_id=None,
        description=None, enabled=True, disabled_reason=None, failing_since=None,
        created_at=now, updated_at=now, secret="whsec_" + "A" * 43 + "=",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@asynccontextmanager
async def delivering(
    tmp_path: Path, script: Script, *, rand: Callable[[], float] = lambda: HALF,
    policy: RetryPolicy = POLICY,
) -> AsyncIterator[tuple[Store, Metrics, Dispatcher]]:
    script.token = trio.lowlevel.current_trio_token()
    metrics = Metrics()
    async with open_store(tmp_path / "app.db") as store:
        await store.webhooks.create(endpoint(virtual_now()))
        dispatcher = Dispatcher(
            store.webhooks, script, metrics, policy=policy, max_concurrent=2, per_endpoint=1,
            poll_s=POLL_S, lease_s=60, now=virtual_now, rand=rand,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(dispatcher.run)
            # Started here, after the store's first calls: a slow thread call then
            # finds the actor's own timers nearer than this one to jump to.
            with trio.fail_after(BOUND_S):
                yield store, metrics, dispatcher
            nursery.cancel_scope.cancel()


async def enqueue_one(
    store: Store, dispatcher: Dispatcher, kind: str = "sent", *, deliveries: int = 1
) -> str:
    event = build(kind, virtual_now(), "t", {"requestId": 1})
    assert await store.webhooks.enqueue([event], virtual_now()) == deliveries
    dispatcher.nudge()
    return event.id


async def until_attempts(script: Script, n: int) -> None:
    while len(script.calls) < n:
        await script.called.wait()


async def test_retries_back_off_exponentially_with_jitter_then_deliver(
    tmp_path: Path, thread_clock: trio.testing.MockClock
) -> None:
    script = Script([500, 503, 429, 500, 200])
    async with delivering(tmp_path, script) as (store, metrics, dispatcher):
        event_id = await enqueue_one(store, dispatcher)
        await until_attempts(script, 5)
        await trio.sleep(200)  # delivered: nothing more is tried
        (view,) = await store.webhooks.deliveries("wh_test", 10, 10)
    # 10, 20, 40, 80 s, each 75 % (the jitter draw), to the microsecond.
    assert script.gaps() == [7.5, 15.0, 30.0, 60.0]
    assert len(script.calls) == 5
    assert {h["webhook-id"] for _, h, _ in script.calls} == {event_id}
    assert view.state == "delivered" and view.attempts == 5
    assert [a.outcome for a in view.history] == ["delivered", "retry", "retry", "retry", "retry"]
    assert metrics.webhook_attempts.labels("retry")._value.get() == 4


async def test_410_disables_the_endpoint_and_nothing_more_is_sent(
    tmp_path: Path, thread_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    script = Script([410])
    with caplog.at_level(logging.WARNING):
        async with delivering(tmp_path, script) as (store, metrics, dispatcher):
            await enqueue_one(store, dispatcher)
            await until_attempts(script, 1)
            await trio.sleep(1)
            # A disabled endpoint gets no more events, not even in the outbox.
            await enqueue_one(store, dispatcher, "bounced", deliveries=0)
            await trio.sleep(600)
            ep = await store.webhooks.get("wh_test")
    assert len(script.calls) == 1
    assert ep is not None and not ep.enabled and ep.disabled_reason == "endpoint answered 410 Gone"
    assert metrics.webhook_disabled._value.get() == 1
    assert any("wh_test" in r.getMessage() and "disabled" in r.getMessage() for r in caplog.records)


async def test_an_endpoint_failing_for_the_whole_window_is_disabled_and_logged(
    tmp_path: Path, thread_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    script = Script([500])
    slow = RetryPolicy(base_s=10.0, max_s=600.0, retry_hours=1.0, jitter=0.5)
    with caplog.at_level(logging.WARNING):
        async with delivering(tmp_path, script, policy=slow) as (store, _, dispatcher):
            await enqueue_one(store, dispatcher)
            await trio.sleep(1800)
            later = await enqueue_one(store, dispatcher)  # of the endpoint's last half hour
            await trio.sleep(3 * 3600)
            ep = await store.webhooks.get("wh_test")
            views = await store.webhooks.deliveries("wh_test", 10, 100)
    assert ep is not None and not ep.enabled
    assert ep.disabled_reason == "no 2xx answer for 1 h (WEBHOOK_RETRY_HOURS)"
    first = next(v for v in views if v.event_id != later)
    assert first.state == "failed"  # given up: the next retry was past its hour
    last_try = first.history[0].attempted_at
    longest = timedelta(seconds=slow.delay(99, lambda: HALF))  # the capped wait: 450 s
    assert timedelta(hours=1) - longest <= last_try - EPOCH <= timedelta(hours=1)
    # The endpoint went on failing for an hour: disabled with the later event pending.
    pending = next(v for v in views if v.event_id == later)
    assert pending.state == "pending"
    assert pending.history[0].attempted_at - EPOCH >= timedelta(hours=1)
    disabled = [r for r in caplog.records if "disabled" in r.getMessage()]
    assert len(disabled) == 1 and "WEBHOOK_RETRY_HOURS" in disabled[0].getMessage()
    assert any("given up" in r.getMessage() for r in caplog.records)


async def test_both_signatures_during_the_rotation_overlap_then_only_the_new(
    tmp_path: Path, thread_clock: trio.testing.MockClock
) -> None:
    script = Script([200])
    async with delivering(tmp_path, script) as (store, _, dispatcher):
        ep = await store.webhooks.get("wh_test")
        assert ep is not None
        new = "whsec_" + "B" * 43 + "="
        await store.webhooks.save(replace(
            ep, secret=new, old_secret=ep.secret,
            old_secret_until=virtual_now() + timedelta(hours=24),
        ))
        await enqueue_one(store, dispatcher)
        await until_attempts(script, 1)
        await trio.sleep(86400)
        await enqueue_one(store, dispatcher)
        await until_attempts(script, 2)
    (_, h1, b1), (_, h2, b2) = script.calls
    during, after = h1["webhook-signature"].split(" "), h2["webhook-signature"].split(" ")
    assert during == [sign(new, h1, b1), sign(ep.secret, h1, b1)]
    assert after == [sign(new, h2, b2)]


def sign(secret: str, headers: Mapping[str, str], body: bytes) -> str:
    """The signature ``standardwebhooks`` makes for these headers and body."""
    moment = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    return Webhook(secret).sign(headers["webhook-id"], moment, body.decode())
