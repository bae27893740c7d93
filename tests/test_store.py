"""The store contract on both backends (a real SQLite file, a real PostgreSQL
database): inserts, claims, outcomes, stops, feedback, suppressions, keys.
SQLite's own parts (migrations, WAL, its lock) are tested on SQLite only."""

from __future__ import annotations

import os
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
import trio

from mailpipe.errors import KeyReused, StoreError, StoreInUse
from mailpipe.feedback.ses_events import SesEvent
from mailpipe.http.api import topic_stats_json
from mailpipe.model import IdempotencyKey, Recovery
from mailpipe.status import Status
from mailpipe.store import NewMessage, Outcome, open_store
from mailpipe.store.schema import MIGRATIONS, migrate
from mailpipe.timeutil import utcnow


def test_migrations_reach_the_latest_version_and_are_idempotent(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    assert migrate(conn) == (0, max(MIGRATIONS))
    assert migrate(conn) == (max(MIGRATIONS), max(MIGRATIONS))
    columns = {row[1] for row in conn.execute("PRAGMA table_info(email_requests)")}
    assert {"id", "topic_id", "message_id", "to", "content_id", "scheduled_at", "status",
            "error", "created_at", "updated_at", "deleted_at"} <= columns
    assert {row[1] for row in conn.execute("PRAGMA table_info(email_contents)")} >= {
        "id", "subject", "content"}
    assert {row[1] for row in conn.execute("PRAGMA table_info(email_results)")} >= {
        "id", "request_id", "status", "raw", "created_at"}


def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    conn = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    latest = max(MIGRATIONS)
    broken = dict(MIGRATIONS)
    broken[latest + 1] = "CREATE TABLE ok_table (x); THIS IS NOT SQL;"
    monkeypatch.setattr("mailpipe.store.schema.MIGRATIONS", broken)
    with pytest.raises(sqlite3.Error):
        migrate(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == latest
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "ok_table" not in tables


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    conn.execute(f"PRAGMA user_version = {max(MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        migrate(conn)


async def test_pragmas_and_directory_creation(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "app.db"
    async with open_store(path):
        pass
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_claims_in_id_order_in_batches_and_only_due(where: str | Path) -> None:
    now = utcnow()
    async with open_store(where) as store:
        await store.insert_messages([
            NewMessage("t", "s", "c", [f"a{i}@example.com" for i in range(5)]),
            NewMessage("t", "s2", "c2", ["later@example.com"], now + timedelta(minutes=5)),
            NewMessage("t", "s3", "c3", ["past@example.com"], now - timedelta(hours=1)),
        ], now)
        first = await store.claim_due(now, 3)
        second = await store.claim_due(now, 10)
        assert [c.id for c in first] == [1, 2, 3]
        assert [c.to for c in second] == ["a3@example.com", "a4@example.com", "past@example.com"]
        assert await store.claim_due(now, 10) == []
        assert await store.next_scheduled_at() == now + timedelta(minutes=5)
        later = await store.claim_due(now + timedelta(minutes=5), 10)
        assert [c.to for c in later] == ["later@example.com"]
        contents = await store.load_contents({c.content_id for c in first + later})
        assert {c.subject for c in contents.values()} == {"s", "s2"}


async def test_outcomes_only_change_processing_rows_and_requeue(where: str | Path) -> None:
    now = utcnow()
    async with open_store(where) as store:
        await store.insert_messages([NewMessage("t", "s", "c", ["a@x.com", "b@x.com",
                                                                "c@x.com"])], now)
        await store.claim_due(now, 2)
        changed = await store.record_outcomes([
            Outcome(1, Status.SENT, "ses-1", attempts=1),
            Outcome(3, Status.SENT, "ses-3", attempts=1),  # not claimed: ignored
        ], now)
        assert changed == 1
        assert (await store.release_claims((), now)).requeued == 1
        stats = topic_stats_json(await store.topic_stats("t"))
        assert stats["request"] == {"total": 3, "created": 2, "processing": 0, "sent": 1,
                                    "failed": 0, "stopped": 0}
        assert await store.count_sent_since(now - timedelta(hours=1)) == 1


async def test_a_stop_is_kept_until_applied_and_covers_rows_left_out(tmp_path: Path) -> None:
    now = utcnow()
    async with open_store(tmp_path / "app.db") as store:
        await store.insert_messages([NewMessage("t", "s", "c", [f"{i}@x.com" for i in range(4)]),
                                     NewMessage("u", "s", "c", ["u@x.com"])], now)
        await store.claim_due(now, 5)  # all five PROCESSING
        # Rows 1 and 2 were handed to SES when the DELETE came: left out.
        assert await store.stop_topic("t", 4, exclude=[1, 2], now=now) == 2
    # The process dies here. At the next start the kept stop covers the two
    # rows still PROCESSING; the other topic's row is not touched.
    async with open_store(tmp_path / "app.db") as store:
        assert await store.apply_saved_stops(now) == 2
        assert await store.apply_saved_stops(now) == 0  # forgotten once applied
        assert await store.requeue_processing(now) == 1
        stats = topic_stats_json(await store.topic_stats("t"))
        assert stats["request"]["stopped"] == 4


async def test_insert_is_all_or_nothing(where: str | Path) -> None:
    now = utcnow()
    async with open_store(where) as store:
        bad = NewMessage("t", "s", "c", ["a@x.com", None])  # type: ignore[list-item]
        with pytest.raises(StoreError):
            await store.insert_messages([NewMessage("t", "s", "c", ["ok@x.com"]), bad], now)
        assert (topic_stats_json(await store.topic_stats("t")))["request"]["total"] == 0


async def test_large_insert_is_one_transaction(where: str | Path) -> None:
    now = utcnow()
    emails = [f"u{i}@example.com" for i in range(20_000)]
    async with open_store(where) as store:
        with trio.fail_after(30):
            result = await store.insert_messages([NewMessage("big", "s", "c", emails)], now)
        assert result.count == 20_000 and result.due_now
        assert (topic_stats_json(await store.topic_stats("big")))["request"]["created"] == 20_000


async def test_a_lock_held_elsewhere_does_not_stall_the_event_loop(tmp_path: Path) -> None:
    # Small writes run on the event loop; if another process (a backup, the
    # sqlite3 shell) holds the write lock, they must wait in a thread instead.
    now = utcnow()
    async with open_store(tmp_path / "app.db") as store:
        await store.insert_messages([NewMessage("t", "s", "c", ["a@x.com"])], now)
        other = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        ticks = 0
        recorded: list[bool] = []

        async def ticker() -> None:
            nonlocal ticks
            while not recorded:
                ticks += 1
                await trio.sleep(0.01)

        async def record() -> None:
            recorded.append(await store.record_result(1, "Open", "{}", now))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker)
                nursery.start_soon(record)
                await trio.sleep(0.3)
                assert not recorded  # waiting for the lock ...
                assert ticks >= 10  # ... while the loop kept running
                other.execute("COMMIT")
        other.close()
        assert recorded == [True]
        stats = topic_stats_json(await store.topic_stats("t"))
        assert stats["result"] == {"statuses": {"Open": 1}}


def bounce(recipients: tuple[str, ...], ses_id: str | None, hint: int | None = None) -> SesEvent:
    """A permanent bounce of ``recipients``."""
    return SesEvent("Bounce", ses_id, recipients, hint, "Permanent", "General", True, False,
                    None, "{}")


async def test_an_idempotency_key_replays_its_answer_and_refuses_another_body(
    where: str | Path,
) -> None:
    now = utcnow()
    key = IdempotencyKey("k1", "digest-a", lambda n: {"count": n})
    msgs = [NewMessage("t", "s", "c", ["a@x.com", "b@x.com"])]
    async with open_store(where) as store:
        assert await store.idempotent_answer(key, now) is None
        first = await store.insert_messages(msgs, now, key=key)
        assert (first.count, first.answer, first.replayed) == (2, {"count": 2}, False)
        again = await store.insert_messages(msgs, now, key=key)
        assert (again.count, again.answer, again.replayed) == (0, {"count": 2}, True)
        assert await store.idempotent_answer(key, now) == {"count": 2}
        other = IdempotencyKey("k1", "digest-b", lambda n: {"count": n})
        with pytest.raises(KeyReused):
            await store.insert_messages(msgs, now, key=other)
        with pytest.raises(KeyReused):
            await store.idempotent_answer(other, now)
        # A day later the key is free again.
        later = now + timedelta(hours=25)
        assert (await store.insert_messages(msgs, later, key=other)).count == 2
        assert topic_stats_json(await store.topic_stats("t"))["request"]["total"] == 4


async def test_feedback_is_stored_once_and_correlated_by_message_id_then_hint(
    where: str | Path,
) -> None:
    now = utcnow()
    async with open_store(where) as store:
        await store.insert_messages([NewMessage("t", "s", "c", ["a@x.com", "b@x.com"])], now)
        await store.claim_due(now, 10)
        outcomes = [Outcome(i, Status.SENT, "ses-1", attempts=1) for i in (1, 2)]
        assert await store.record_outcomes(outcomes, now) == 2
        # Bulk: two requests share the SES id; the recipient picks one.
        got = await store.record_feedback("sns-1", bounce((" B@X.com",), "ses-1"), now)
        assert (got.duplicate, got.results, got.matched, got.suppressed) == (False, 1, 1, 1)
        assert got.suppressions == ((" B@X.com", "bounce"),)
        assert (await store.record_feedback("sns-1", bounce(("b@x.com",), "ses-1"), now)).duplicate
        # No SES id known: the hint counts when its recipient matches.
        hinted = await store.record_feedback("sns-2", bounce(("A@x.com",), "ses-9", hint=1), now)
        assert (hinted.matched, hinted.suppressed) == (1, 1)
        wrong = await store.record_feedback("sns-3", bounce(("c@x.com",), None, hint=1), now)
        assert (wrong.results, wrong.matched) == (1, 0)
        suppressed = await store.get_suppression("b@x.com")
        assert suppressed is not None and suppressed.request_id == 2
        assert suppressed.source == "ses-1" and suppressed.created_at == now
        stats = topic_stats_json(await store.topic_stats("t"))
        assert stats["result"] == {"statuses": {"Bounce": 2}}


async def test_suppressions_are_trimmed_lower_case_and_paged(where: str | Path) -> None:
    async with open_store(where) as store:
        assert await store.add_suppression(" Bob@X.com ", "complaint", "src")
        assert not await store.add_suppression("bob@x.COM", "bounce", None)
        found = await store.get_suppression("BOB@x.com ")
        assert found is not None and (found.address, found.reason) == ("bob@x.com", "complaint")
        with pytest.raises(ValueError, match="reason"):
            await store.add_suppression("a@x.com", "dislike", None)
        for i in range(5):
            await store.add_suppression(f"u{i}@x.com", "bounce", None)
        page, cursor = await store.list_suppressions(4)
        assert [s.address for s in page] == ["u4@x.com", "u3@x.com", "u2@x.com", "u1@x.com"]
        rest, end = await store.list_suppressions(4, cursor)
        assert [s.address for s in rest] == ["u0@x.com", "bob@x.com"] and end is None
        assert await store.delete_suppression(" BOB@x.com")
        assert not await store.delete_suppression("bob@x.com")
        assert await store.get_suppression("bob@x.com") is None


async def test_opens_clicks_and_unsubscribes(where: str | Path) -> None:
    now = utcnow()
    async with open_store(where) as store:
        await store.insert_messages([NewMessage("t", "s", "c", ["Ann@x.com"])], now)
        assert await store.recipient_of(1) == "Ann@x.com"
        assert await store.recipient_of(99) is None
        assert await store.record_result(1, "Open", "{}", now)
        assert not await store.record_result(99, "Open", "{}", now)
        assert await store.unsubscribe(1, "link", "{}", now)
        assert not await store.unsubscribe(1, "link", "{}", now)
        assert not await store.unsubscribe(99, "link", "{}", now)
        found = await store.get_suppression("ann@x.com")
        assert found is not None and found.reason == "unsubscribe"
        stats = topic_stats_json(await store.topic_stats("t"))
        assert stats["result"] == {"statuses": {"Open": 1, "Unsubscribe": 1}}
        assert await store.claim_due(now, 10) == []  # suppressed: stopped, not claimed


async def test_a_stop_covers_queued_and_held_rows_and_shutdown_settles_the_rest(
    where: str | Path,
) -> None:
    now = utcnow()
    async with open_store(where) as store:
        await store.insert_messages([NewMessage("t", "s", "c", [f"{i}@x.com" for i in range(4)]),
                                     NewMessage("u", "s", "c", ["u@x.com"])], now)
        assert await store.max_request_id("t") == 4
        assert await store.max_request_id("none") is None
        await store.claim_due(now, 2)  # rows 1 and 2 held
        await store.claim_due(now, 0)
        # Row 1 was handed to SES: left out; rows 2 (held), 3 and 4 (queued) stop.
        assert await store.stop_topic("t", 4, exclude=[1], now=now) == 3
        assert [c.id for c in await store.claim_due(now, 10)] == [5]
        # At shutdown row 1 is still held: the stored stop covers it.
        assert await store.release_claims((), now) == Recovery(stopped=1, requeued=1)
        stats = topic_stats_json(await store.topic_stats("t"))
        assert stats["request"]["stopped"] == 4 and stats["request"]["processing"] == 0


async def test_a_second_open_of_a_sqlite_file_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.db"
    now = utcnow()
    async with open_store(path) as store:
        await store.insert_messages([NewMessage("t", "s", "c", ["a@x.com"])], now)
        before = path.read_bytes(), (tmp_path / "app.db.lock").read_text()
        with pytest.raises(StoreInUse, match=f"pid {os.getpid()}"):
            async with open_store(path):
                pytest.fail("opened twice")
        assert (path.read_bytes(), (tmp_path / "app.db.lock").read_text()) == before
        assert [c.to for c in await store.claim_due(now, 10)] == ["a@x.com"]


async def test_addresses_and_data_are_stored_exactly_as_given(where: str | Path) -> None:
    now = utcnow()
    odd = ["back\\slash@x.com", "tab\there@x.com", "cr\r\nlf@x.com", "\\N"]
    data = [None, '{"k": "\\t\\\\"}', "\t", "\\N"]
    async with open_store(where) as store:
        await store.insert_messages([NewMessage("t", "s", "c", odd),
                                     NewMessage("d", "s", "c", odd, data=data)], now)
        claimed = await store.claim_due(now, 10)
        assert [c.to for c in claimed] == odd + odd
        assert [c.data for c in claimed] == [None] * 4 + data
        with pytest.raises(StoreError):
            await store.insert_messages([NewMessage("t", "s", "c", [None])], now)  # type: ignore[list-item]
        assert topic_stats_json(await store.topic_stats("t"))["request"]["total"] == 4
