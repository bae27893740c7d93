"""The reputation figures, thresholds and pauses: pure decisions, the store's
window on both engines, and the guard's timing exactly with ``autojump_clock``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing
from feedbackkit import Sent, ses_record

from mailpipe.addresses import address_key, unique_addresses
from mailpipe.feedback.ses_events import parse_ses_event
from mailpipe.model import Figures, NewMessage, Outcome, Pause
from mailpipe.pipeline.guard import ReputationGuard
from mailpipe.pipeline.metrics import Metrics
from mailpipe.reputation import Thresholds, breach, window_start
from mailpipe.status import Status
from mailpipe.store import Store, open_store

LIMITS = Thresholds(min_sends=200, bounce_rate=0.04, complaint_rate=0.0008)
T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("figures", "paused"),
    [
        (Figures(199, 199, 199), None),  # too few sends decide nothing
        (Figures(200, 7, 0), None),  # 3.5 %
        (Figures(200, 8, 0), "bounce"),  # 4 % exactly
        (Figures(1000, 0, 0), None),
        (Figures(10_000, 0, 7), None),  # 0.07 %
        (Figures(10_000, 0, 8), "complaint"),  # 0.08 % exactly
        (Figures(10_000, 400, 8), "bounce"),  # both: the bounce rate is named
    ],
)
def test_the_thresholds(figures: Figures, paused: str | None) -> None:
    reason = breach(figures, LIMITS, scope="topic")
    if paused is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(f"topic {paused} rate")


def test_rates() -> None:
    assert Figures(0, 0, 0).bounce_rate == 0.0
    assert Figures(250, 10, 1).bounce_rate == 0.04
    assert Figures(250, 10, 1).complaint_rate == 0.004


@pytest.mark.parametrize(
    ("written", "key"),
    [
        ("d@example.com", "d@example.com"),
        ("D@example.com", "d@example.com"),
        ("  D@Example.COM ", "d@example.com"),
        ("ann@bücher.de", "ann@xn--bcher-kva.de"),
        ("Ann@BÜCHER.de", "ann@xn--bcher-kva.de"),
        ("ann@xn--bcher-kva.de", "ann@xn--bcher-kva.de"),
        ("STRASSE@example.com", "strasse@example.com"),
        ("not an address ẞ", "not an address ss"),  # cannot be normalised: case-folded as is
    ],
)
def test_the_normalisation_table(written: str, key: str) -> None:
    assert address_key(written) == key


def test_one_address_is_one_recipient_as_first_written() -> None:
    assert unique_addresses(["D@example.com", "d@example.com", "e@x.com", "d@EXAMPLE.com"]) == [
        "D@example.com", "e@x.com",
    ]


async def _sent(
    store: Store, topic: str, n: int, now: datetime, first: int = 0
) -> list[Sent]:
    """``n`` requests of ``topic`` (addresses numbered from ``first``), sent at ``now``."""
    emails = [f"{topic}{i}@example.com" for i in range(first, first + n)]
    await store.insert_messages([NewMessage(topic, "s", "c", emails)], now)
    claimed = await store.claim_due(now, n)
    await store.record_outcomes(
        [Outcome(c.id, Status.SENT, f"ses-{topic}-{c.id}", attempts=1) for c in claimed], now
    )
    return [Sent(c.id, c.to, f"ses-{topic}-{c.id}", 2, None) for c in claimed]


async def _bounce(store: Store, sent: Sent, now: datetime, kind: str = "Bounce") -> None:
    event = parse_ses_event(json.dumps(ses_record("event", kind, sent, hints=False)))
    await store.record_feedback(f"sns-{kind}-{sent.id}", event, now)


async def test_the_window_rolls_exactly_on_both_stores(where: str | Path) -> None:
    async with open_store(where) as store:
        sent = await _sent(store, "t", 10, T0)
        await _sent(store, "other", 5, T0)
        for s in sent[:2]:
            await _bounce(store, s, T0 + timedelta(hours=1))
        await _bounce(store, sent[2], T0 + timedelta(hours=1), "Complaint")
        await _bounce(store, sent[3], T0 + timedelta(hours=1), "Delivery")
        day = timedelta(hours=24)
        assert await store.reputation("t", window_start(T0 + day, 24)) == Figures(10, 2, 1)
        assert await store.reputation(None, window_start(T0 + day, 24)) == Figures(15, 2, 1)
        later = T0 + day + timedelta(microseconds=1)  # the sends just left the window
        assert await store.reputation("t", window_start(later, 24)) == Figures(0, 2, 1)
        gone = T0 + timedelta(hours=25, microseconds=1)
        assert await store.reputation(None, window_start(gone, 24)) == Figures(0, 0, 0)


async def test_a_paused_topic_is_not_claimed_until_resumed(where: str | Path) -> None:
    async with open_store(where) as store:
        await store.insert_messages([NewMessage("p", "s", "c", ["a@x.com", "b@x.com"]),
                                     NewMessage("q", "s", "c", ["c@x.com"])], T0)
        pause = Pause("by hand", "user", T0, Figures(1, 0, 0))
        assert await store.pause_topic("p", pause)
        assert not await store.pause_topic("p", Pause("again", "auto", T0, Figures()))
        assert [c.to for c in await store.claim_due(T0, 10)] == ["c@x.com"]
        assert await store.next_scheduled_at() is None  # nothing claimable waits
        assert await store.topic_pause("p") == pause  # the first pause is kept
        assert await store.paused_topics() == ["p"]
    async with open_store(where) as store:  # stored: a restart keeps it
        assert await store.topic_pause("p") == pause
        assert await store.claim_due(T0, 10) == []
        assert await store.resume_topic("p")
        assert not await store.resume_topic("p")
        assert sorted(c.to for c in await store.claim_due(T0, 10)) == ["a@x.com", "b@x.com"]
        stats = await store.topic_stats("p")
        assert stats.requests[Status.PROCESSING] == 2 and stats.requests[Status.FAILED] == 0


async def test_the_account_pause_is_stored(where: str | Path) -> None:
    async with open_store(where) as store:
        pause = Pause("too many bounces", "auto", T0, Figures(1000, 50, 0))
        assert await store.pause_account(pause)
        assert not await store.pause_account(pause)
    async with open_store(where) as store:
        assert await store.account_pause() == pause
        assert await store.resume_account()
        assert await store.account_pause() is None


async def test_early_feedback_is_matched_when_the_message_id_is_written(
    where: str | Path,
) -> None:
    async with open_store(where) as store:
        await store.insert_messages([NewMessage("e", "s", "c", ["a@x.com"])], T0)
        (claimed,) = await store.claim_due(T0, 1)
        early = Sent(claimed.id, "a@x.com", "ses-early", 2, None)
        await _bounce(store, early, T0)  # before the send's message id is recorded
        assert (await store.topic_stats("e")).results == {}
        await store.record_outcomes([Outcome(claimed.id, Status.SENT, "ses-early")], T0)
        assert (await store.topic_stats("e")).results == {"Bounce": 1}
        assert await store.reputation("e", T0) == Figures(1, 1, 0)


class _FakePauses:
    """Records the guard's pauses (the store and the pipeline are not the subject here)."""

    def __init__(self) -> None:
        self.topics: list[tuple[str, Figures, datetime]] = []

    async def pause_topic(
        self, topic_id: str, reason: str, by: str, figures: Figures, now: datetime
    ) -> bool:
        self.topics.append((topic_id, figures, now))
        return True

    async def pause_account(self, reason: str, by: str, figures: Figures, now: datetime) -> bool:
        return True

    def resumed_at(self, topic_id: str) -> float | None:
        return None

    account_resumed_at = None


async def test_the_guard_rechecks_a_watched_topic_on_its_interval(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """199 sends and 8 bounces decide nothing; the 200th send pauses the topic at
    the guard's next check, exactly one interval later."""
    # The store's SQL runs in worker threads, which autojump would count as idle
    # time: the clock jumps only after 50 ms of real idleness, far beyond them.
    autojump_clock.autojump_threshold = 0.05
    start = trio.current_time()

    def clock() -> datetime:
        return T0 + timedelta(seconds=trio.current_time() - start)

    async with open_store(tmp_path / "app.db") as store:
        sent = await _sent(store, "g", 199, T0)
        for s in sent[:8]:
            await _bounce(store, s, T0)
        pauses = _FakePauses()
        guard = ReputationGuard(
            store, pauses, Metrics(),  # type: ignore[arg-type]
            topic=LIMITS, account=Thresholds(10**6, 1.0, 1.0),
            window_h=24, interval=10.0, now=clock,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(guard.run)
            guard.feedback([s.id for s in sent[:8]])
            await trio.sleep(25)  # two more checks: still 199 sends
            assert pauses.topics == []
            await _sent(store, "g", 1, clock(), first=199)  # the 200th send, at 25 s
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
        ((topic, figures, when),) = pauses.topics
        assert (topic, figures) == ("g", Figures(200, 8, 0))
        assert when == T0 + timedelta(seconds=30)  # the check after the send
