"""Group commit: concurrent small writes share transactions; a failing one fails alone."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from mailpipe.errors import StoreError
from mailpipe.store.group import GroupCommit


async def test_concurrent_writes_share_transactions_and_fail_alone(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "g.db", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (x INTEGER UNIQUE)")
    conn.execute("INSERT INTO t VALUES (1000)")
    limiter = trio.CapacityLimiter(1)
    transactions = 0

    async def run(fn: Callable[[sqlite3.Connection], bool]) -> bool:
        nonlocal transactions
        transactions += 1
        return await trio.to_thread.run_sync(fn, conn, limiter=limiter)

    group = GroupCommit(run)
    results: dict[int, object] = {}

    async def write(i: int) -> None:
        value = 1000 if i == 13 else i  # 13 collides with a stored row: it fails
        try:
            results[i] = await group.write(
                lambda c: c.execute("INSERT INTO t VALUES (?)", (value,)).rowcount
            )
        except StoreError as exc:
            results[i] = exc

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(write, i)
    assert isinstance(results.pop(13), StoreError)
    assert results == dict.fromkeys(results, 1)
    assert len(results) == 39
    stored = {x for (x,) in conn.execute("SELECT x FROM t")}
    assert stored == (set(range(40)) - {13}) | {1000}
    assert transactions < 40  # batched


async def test_a_failed_commit_fails_every_write_in_it(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "g.db", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("BEGIN")  # a transaction already open: BEGIN IMMEDIATE fails

    async def run(fn: Callable[[sqlite3.Connection], bool]) -> bool:
        return await trio.to_thread.run_sync(fn, conn)

    group = GroupCommit(run)
    with pytest.raises(StoreError):
        await group.write(lambda c: c.execute("INSERT INTO t VALUES (1)").rowcount)


async def _transactions_for_staggered_writes(tmp_path: Path, gather: int) -> int:
    """Transactions used by 12 inline writes whose tasks reach ``write`` over 3 passes."""
    conn = sqlite3.connect(tmp_path / f"g{gather}.db", isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    transactions = 0

    async def inline(fn: Callable[[sqlite3.Connection], bool]) -> bool:
        nonlocal transactions
        transactions += 1
        return fn(conn)  # on the event loop, as the store runs small batches

    group = GroupCommit(inline, inline=inline, inline_max=32, gather=gather)

    async def write(i: int) -> None:
        for _ in range(i % 3):  # as requests still reading their bodies
            await trio.lowlevel.checkpoint()
        await group.write(lambda c: c.execute("INSERT INTO t VALUES (?)", (i,)).rowcount)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(write, i)
    assert sorted(x for (x,) in conn.execute("SELECT x FROM t")) == list(range(12))
    return transactions


async def test_inline_batches_gather_writes_arriving_in_the_next_passes(tmp_path: Path) -> None:
    # A batch run on the loop holds it: without gathering, writes that come a
    # pass later need a transaction of their own.
    assert await _transactions_for_staggered_writes(tmp_path, gather=0) > 1
    assert await _transactions_for_staggered_writes(tmp_path, gather=4) == 1


async def test_a_batch_that_cannot_run_fails_every_write_in_it(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    conn.execute("CREATE TABLE t (x)")

    async def busy(fn: Callable[[sqlite3.Connection], bool]) -> bool:
        return False  # as if another process held the write lock

    calls = 0

    async def broken_once(fn: Callable[[sqlite3.Connection], bool]) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreError("no worker thread")
        return fn(conn)

    group = GroupCommit(broken_once, inline=busy, inline_max=32, gather=2)
    outcomes: list[object] = []

    async def write(i: int) -> None:
        try:
            outcomes.append(await group.write(
                lambda c: c.execute("INSERT INTO t VALUES (?)", (i,)).rowcount))
        except StoreError as exc:
            outcomes.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(write, i)
    assert len(outcomes) == 3
    # The three shared the batch that could not run: nobody is told "stored".
    assert all(isinstance(o, StoreError) for o in outcomes)
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)


async def test_a_writer_cancelled_while_queued_is_not_committed(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "g.db", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (x)")
    release = trio.Event()

    async def run(fn: Callable[[sqlite3.Connection], bool]) -> bool:
        await release.wait()  # the first batch holds the lock until told
        return await trio.to_thread.run_sync(fn, conn)

    group = GroupCommit(run)

    async def write(x: int) -> None:
        await group.write(lambda c: c.execute("INSERT INTO t VALUES (?)", (x,)).rowcount)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, 1)  # takes the lock, its batch waits in run()
            await trio.testing.wait_all_tasks_blocked()
            cancelled = trio.CancelScope()

            async def write_then_give_up() -> None:
                with cancelled:
                    await write(3)  # queued behind the first batch

            nursery.start_soon(write_then_give_up)
            await trio.testing.wait_all_tasks_blocked()
            cancelled.cancel()  # its caller gives up while it is queued
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(write, 4)  # queued behind the first batch too
            await trio.testing.wait_all_tasks_blocked()
            release.set()
    assert sorted(x for (x,) in conn.execute("SELECT x FROM t")) == [1, 4]
