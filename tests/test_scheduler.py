"""The scheduler's claims and wake-ups, against a real SQLite store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import trio
import trio.testing

from mailpipe.http.api import topic_stats_json
from mailpipe.pipeline.jobs import Job
from mailpipe.pipeline.pause import PauseGate
from mailpipe.pipeline.scheduler import Scheduler
from mailpipe.store import NewMessage, open_store
from mailpipe.timeutil import utcnow


async def test_nudge_wakes_it_long_before_the_poll(tmp_path: Path) -> None:
    async with open_store(tmp_path / "app.db") as store:
        send, recv = trio.open_memory_channel[list[Job]](100)
        scheduler = Scheduler(store, send, poll=3600)
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            await store.insert_messages([NewMessage("t", "s", "c", ["a@x.com", "b@x.com"])],
                                        utcnow())
            scheduler.nudge()
            with trio.fail_after(5):  # the poll is an hour: only the nudge can do this
                jobs = await recv.receive()  # one chunk: same content
            assert [j.to for j in jobs] == ["a@x.com", "b@x.com"]
            assert jobs[0].content is jobs[1].content  # loaded once
            scheduler.stop()
        # The scheduler owns the channel and closes it when it stops.
        with trio.fail_after(1):
            async with recv:
                assert [j async for j in recv] == []


async def test_wakes_at_the_next_scheduled_time_not_before(tmp_path: Path) -> None:
    async with open_store(tmp_path / "app.db") as store:
        send, recv = trio.open_memory_channel[list[Job]](100)
        scheduler = Scheduler(store, send, poll=3600)
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            due = utcnow() + timedelta(seconds=0.5)
            await store.insert_messages([NewMessage("t", "s", "c", ["a@x.com"], due)], utcnow())
            scheduler.nudge()  # rows not due: it must go back to sleep until `due`
            with trio.fail_after(5):
                (job,) = await recv.receive()
            assert utcnow() >= due
            assert job.to == "a@x.com"
            scheduler.stop()


async def test_poll_finds_rows_inserted_without_a_nudge(tmp_path: Path) -> None:
    async with open_store(tmp_path / "app.db") as store:
        send, recv = trio.open_memory_channel[list[Job]](100)
        scheduler = Scheduler(store, send, poll=0.2)
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            await store.insert_messages([NewMessage("t", "s", "c", ["a@x.com"])], utcnow())
            with trio.fail_after(5):
                assert [j.to for j in await recv.receive()] == ["a@x.com"]
            scheduler.stop()


async def test_backpressure_claims_no_more_than_the_channel_takes(tmp_path: Path) -> None:
    async with open_store(tmp_path / "app.db") as store:
        emails = [f"u{i}@x.com" for i in range(1000)]
        await store.insert_messages([NewMessage("t", "s", "c", emails)], utcnow())
        send, recv = trio.open_memory_channel[list[Job]](10)
        scheduler = Scheduler(store, send, batch=10, chunk=5, poll=3600)
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            with trio.fail_after(5):
                while recv.statistics().current_buffer_used < 10:
                    await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked(0.05)
            # Ten chunks of 5 in the channel, at most one more batch claimed.
            stats = (topic_stats_json(await store.topic_stats("t")))["request"]
            assert stats["processing"] <= 60
            assert stats["created"] >= 940
            assert scheduler.queued >= 50
            scheduler.stop()


async def test_paused_scheduler_claims_nothing(tmp_path: Path) -> None:
    async with open_store(tmp_path / "app.db") as store:
        send, recv = trio.open_memory_channel[list[Job]](100)
        gate = PauseGate()
        gate.pause("test")
        scheduler = Scheduler(store, send, poll=0.05, gate=gate)
        await store.insert_messages([NewMessage("t", "s", "c", ["a@x.com"])], utcnow())
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            with trio.move_on_after(0.3):
                await recv.receive()
                raise AssertionError("claimed while paused")
            gate.resume()
            with trio.fail_after(5):
                assert [j.to for j in await recv.receive()] == ["a@x.com"]
            scheduler.stop()


async def test_chunks_share_one_content_and_respect_the_size(tmp_path: Path) -> None:
    async with open_store(tmp_path / "app.db") as store:
        await store.insert_messages([
            NewMessage("t", "a", "a", [f"a{i}@x.com" for i in range(12)]),
            NewMessage("t", "b", "b", [f"b{i}@x.com" for i in range(3)]),
        ], utcnow())
        send, recv = trio.open_memory_channel[list[Job]](100)
        scheduler = Scheduler(store, send, chunk=5, poll=3600)
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            with trio.fail_after(5):
                chunks = [await recv.receive() for _ in range(4)]
            scheduler.stop()
    assert [len(c) for c in chunks] == [5, 5, 2, 3]
    assert all(len({j.content.id for j in c}) == 1 for c in chunks)
    assert [j.request_id for c in chunks for j in c] == list(range(1, 16))
