"""Group commit: concurrent small writes share transactions; a failing one fails alone."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from mailpipe.errors import StoreError
from mailpipe.store.group import GroupCommit


async def test_concurrent_writes_share_transactions_and_fail_alone(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "g.db", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (x INTEGER UNIQUE)")
    conn.execute("INSERT INTO t VALUES (1000)")
    limiter = trio.CapacityLimiter(1)
    transactions = 0

    async def run(fn: Callable[[sqlite3.Connection], None]) -> None:
        nonlocal transactions
        transactions += 1
        await trio.to_thread.run_sync(fn, conn, limiter=limiter)

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

    async def run(fn: Callable[[sqlite3.Connection], None]) -> None:
        await trio.to_thread.run_sync(fn, conn)

    group = GroupCommit(run)
    with pytest.raises(StoreError):
        await group.write(lambda c: c.execute("INSERT INTO t VALUES (1)").rowcount)
