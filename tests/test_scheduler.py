"""The scheduler's claims and wake-ups, against a real SQLite store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import trio
import trio.testing

from mailpipe.jobs import Job
from mailpipe.scheduler import Scheduler
from mailpipe.store import NewMessage, open_store
from mailpipe.timeutil import utcnow


async def test_nudge_wakes_it_long_before_the_poll(tmp_path: Path) -> None:
    async with open_store(tmp_path / "app.db") as store:
        send, recv = trio.open_memory_channel[Job](100)
        scheduler = Scheduler(store, send, poll=3600)
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            await store.insert_messages([NewMessage("t", "s", "c", ["a@x.com", "b@x.com"])],
                                        utcnow())
            scheduler.nudge()
            with trio.fail_after(5):  # the poll is an hour: only the nudge can do this
                jobs = [await recv.receive(), await recv.receive()]
            assert [j.to for j in jobs] == ["a@x.com", "b@x.com"]
            assert jobs[0].content is jobs[1].content  # loaded once
            scheduler.stop()
        # The scheduler owns the channel and closes it when it stops.
        with trio.fail_after(1):
            async with recv:
                assert [j async for j in recv] == []


async def test_wakes_at_the_next_scheduled_time_not_before(tmp_path: Path) -> None:
    async with open_store(tmp_path / "app.db") as store:
        send, recv = trio.open_memory_channel[Job](100)
        scheduler = Scheduler(store, send, poll=3600)
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            due = utcnow() + timedelta(seconds=0.5)
            await store.insert_messages([NewMessage("t", "s", "c", ["a@x.com"], due)], utcnow())
            scheduler.nudge()  # rows not due: it must go back to sleep until `due`
            with trio.fail_after(5):
                job = await recv.receive()
            assert utcnow() >= due
            assert job.to == "a@x.com"
            scheduler.stop()


async def test_poll_finds_rows_inserted_without_a_nudge(tmp_path: Path) -> None:
    async with open_store(tmp_path / "app.db") as store:
        send, recv = trio.open_memory_channel[Job](100)
        scheduler = Scheduler(store, send, poll=0.2)
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            await store.insert_messages([NewMessage("t", "s", "c", ["a@x.com"])], utcnow())
            with trio.fail_after(5):
                assert (await recv.receive()).to == "a@x.com"
            scheduler.stop()


async def test_backpressure_claims_no_more_than_the_channel_takes(tmp_path: Path) -> None:
    async with open_store(tmp_path / "app.db") as store:
        emails = [f"u{i}@x.com" for i in range(1000)]
        await store.insert_messages([NewMessage("t", "s", "c", emails)], utcnow())
        send, recv = trio.open_memory_channel[Job](10)
        scheduler = Scheduler(store, send, batch=10, poll=3600)
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            with trio.fail_after(5):
                while recv.statistics().current_buffer_used < 10:
                    await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked(0.05)
            # One batch in the channel, at most one more held by the blocked send.
            stats = (await store.topic_stats("t"))["request"]
            assert stats["processing"] <= 20  # type: ignore[index]
            assert stats["created"] >= 980  # type: ignore[index]
            scheduler.stop()


async def test_paused_scheduler_claims_nothing(tmp_path: Path) -> None:
    async with open_store(tmp_path / "app.db") as store:
        send, recv = trio.open_memory_channel[Job](100)
        scheduler = Scheduler(store, send, poll=0.05)
        paused = [True]
        scheduler.paused = lambda: paused[0]
        await store.insert_messages([NewMessage("t", "s", "c", ["a@x.com"])], utcnow())
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            with trio.move_on_after(0.3):
                await recv.receive()
                raise AssertionError("claimed while paused")
            paused[0] = False
            with trio.fail_after(5):
                assert (await recv.receive()).to == "a@x.com"
            scheduler.stop()
