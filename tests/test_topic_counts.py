"""A deep backlog costs nothing: claims and wake-ups read due rows only (their
plans, on both engines), and a topic's counts are counters that always equal
``COUNT(*)`` over its rows, after every kind of change, a crash included."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pgkit
import psycopg
import trio
from countkit import assert_counters_match, stats_match
from fake_ses import FakeSES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from procs import ServiceProcess, killed_mid_send, wait_until

from mailpipe.feedback.ses_events import SesEvent
from mailpipe.model import Figures, NewMessage, Outcome, Pause
from mailpipe.status import Status
from mailpipe.store import Store, guard_sql, open_store
from mailpipe.store import postgres as pg_store
from mailpipe.store import sqlite as sqlite_store
from mailpipe.store.pg_counts import fold_count_deltas
from mailpipe.store.pg_schema import MIGRATIONS as PG_MIGRATIONS
from mailpipe.store.pg_schema import migrate as pg_migrate
from mailpipe.store.schema import MIGRATIONS
from mailpipe.timeutil import to_db, utcnow

TOPICS = ["a", "b"]


def event(kind: str, ses_id: str | None, to: str, hint: int | None = None) -> SesEvent:
    """An SES record of ``kind`` (``Delivery``, ``Bounce`` permanent, ``Complaint``)."""
    return SesEvent(kind, ses_id, (to,), hint, "Permanent" if kind == "Bounce" else None,
                    "General" if kind == "Bounce" else None, kind == "Bounce",
                    kind == "Complaint", None, "{}")


def backlog_messages(now: datetime, later: int) -> list[NewMessage]:
    """``later`` recipients due tomorrow, then one due now."""
    return [
        NewMessage("later", "s", "c", [f"l{i}@x.com" for i in range(later)],
                   scheduled_at=now + timedelta(days=1)),
        NewMessage("now", "s", "c", ["n@x.com"]),
    ]


# -- plans: only due rows are read -------------------------------------------------


async def test_sqlite_claims_and_wake_ups_walk_the_pending_index(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    now = utcnow()
    async with open_store(path) as store:
        await store.insert_messages(backlog_messages(now, 20_000), now)
    conn = sqlite3.connect(path)
    conn.execute("ANALYZE")  # the planner's statistics of a real backlog
    queries: list[tuple[str, tuple[Any, ...]]] = [
        (sqlite_store._CLAIM + "NULL", (to_db(now), 500)),
        (sqlite_store._CLAIM + '(SELECT reason FROM suppressions WHERE address = lower("to"))',
         (to_db(now), 500)),
        (sqlite_store._ANY_DUE, (to_db(now),)),
        (sqlite_store._NEXT_SCHEDULED, ()),
    ]
    for sql, params in queries:
        plan = " / ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
        assert "USING INDEX idx_email_requests_pending_due" in plan, plan
        assert "SCAN email_requests" not in plan, plan  # neither the table nor a whole index
        assert "TEMP B-TREE" not in plan, plan  # the index's order is the claim's: no sort
    conn.close()


async def test_postgres_claims_and_wake_ups_walk_the_pending_index(pg_url: str) -> None:
    now = utcnow()
    async with open_store(pg_url) as store:
        await store.insert_messages(backlog_messages(now, 20_000), now)
    pgkit.execute(pg_url, "ANALYZE email_requests")
    queries: list[tuple[str, Any]] = [
        (pg_store._CLAIM, {"me": "x", "now": now, "n": 500}),
        (pg_store._NEXT_SCHEDULED, None),
    ]
    with psycopg.connect(pg_url) as conn:
        for sql, params in queries:
            plan = "\n".join(r[0] for r in conn.execute(("EXPLAIN " + sql).encode(), params))
            assert "idx_email_requests_pending" in plan, plan
            assert "Seq Scan on email_requests" not in plan, plan
            assert "Sort" not in plan, plan  # the index's order is the claim's


async def test_due_rows_go_earliest_due_first_then_by_id(where: str | Path) -> None:
    now = utcnow()
    async with open_store(where) as store:
        await store.insert_messages([
            NewMessage("t", "s", "c", ["late@x.com"], scheduled_at=now + timedelta(minutes=2)),
            NewMessage("t", "s", "c", ["early1@x.com", "early2@x.com"],
                       scheduled_at=now + timedelta(minutes=1)),
            NewMessage("t", "s", "c", ["now@x.com"]),
        ], now)
        later = now + timedelta(minutes=3)
        assert [c.to for c in await store.claim_due(later, 1)] == ["now@x.com"]
        assert [c.to for c in await store.claim_due(later, 2)] == ["early1@x.com", "early2@x.com"]
        assert [c.to for c in await store.claim_due(later, 5)] == ["late@x.com"]


# -- counters equal COUNT(*) -------------------------------------------------------


async def lapse_other_instances(store: Store, where: str | Path) -> None:
    """PostgreSQL: every other instance's lease lapsed (as after a kill -9)."""
    if store.cluster is not None:
        pgkit.execute(str(where), "UPDATE instances SET heartbeat_at = now() - interval '1 day'"
                      " WHERE id <> %s", (store.cluster.instance_id,))


async def fold(where: str | Path) -> None:
    """PostgreSQL: fold the counters' deltas (what the upkeep does every few seconds)."""
    if not isinstance(where, Path):
        with psycopg.connect(where) as conn:
            fold_count_deltas(conn)


async def test_counters_equal_counts_after_every_kind_of_change(where: str | Path) -> None:
    now = utcnow()
    emails = [f"a{i}@x.com" for i in range(10)]
    async with open_store(where) as store:
        async def check() -> None:
            await assert_counters_match(store, where, TOPICS)

        await check()
        await store.insert_messages([  # insert: ids 1-10 (a), 11-12 (b, later), 13 (a)
            NewMessage("a", "s", "c", emails),
            NewMessage("b", "s", "c", ["b0@x.com", "b1@x.com"],
                       scheduled_at=now + timedelta(hours=1)),
            NewMessage("a", "s", "c", ["Sup@x.com"], data=['{"x": 1}']),
        ], now)
        await check()
        assert [c.id for c in await store.claim_due(now, 4)] == [1, 2, 3, 4]  # claim
        await check()
        assert await store.record_outcomes([  # outcomes: sent, failed, retry later
            Outcome(1, Status.SENT, "ses-1", attempts=1),
            Outcome(2, Status.FAILED, None, "MessageRejected: no", attempts=1),
            Outcome(3, Status.CREATED, None, "throttled", attempts=0),
            Outcome(12, Status.SENT, "ses-x", attempts=1),  # not held: changes nothing
        ], now) == 3
        await check()
        await store.add_suppression("sup@x.com", "bounce", None, now=now)
        held = [c.id for c in await store.claim_due(now, 20)]  # 13 is suppressed: stopped
        assert held == [3, 5, 6, 7, 8, 9, 10]
        await check()
        # stop: 5 was handed to SES when the DELETE came, so it is left out
        assert await store.stop_topic("a", 13, exclude=[5], now=now) == 7  # 4 too
        await check()
        await store.release_claims((), now)  # requeue (shutdown); the kept stop covers 5
        await check()
        # feedback: results count distinct requests per type
        await store.record_feedback("sns-1", event("Delivery", "ses-1", "a0@x.com"), now)
        await store.record_feedback("sns-2", event("Delivery", "ses-1", "a0@x.com"), now)
        await store.record_feedback("sns-3", event("Bounce", "ses-1", "a0@x.com"), now)
        await store.record_feedback("sns-4", event("Complaint", "nope", "z@x.com"), now)
        assert await store.record_result(1, "Open", "{}", now)
        assert await store.record_result(1, "Open", "{}", now)
        assert await store.record_result(11, "Click", "{}", now)
        assert not await store.record_result(99, "Open", "{}", now)
        assert await store.unsubscribe(11, "link", "{}", now)
        await check()
        assert topic_counts(await store.topic_stats("a")) == {"sent": 1, "failed": 1,
                                                              "stopped": 9}
        assert (await store.topic_stats("a")).results == {"Delivery": 1, "Bounce": 1, "Open": 1}
        assert (await store.topic_stats("b")).results == {"Click": 1, "Unsubscribe": 1}
    async with open_store(where) as store:  # the next run (PostgreSQL: instance)
        tomorrow = now + timedelta(days=1)
        # b0 unsubscribed: stopped at its claim; b1 is held when the process dies
        assert [c.id for c in await store.claim_due(tomorrow, 10)] == [12]
        await assert_counters_match(store, where, TOPICS)
    async with open_store(where) as store:  # the next start recovers them (requeue)
        await lapse_other_instances(store, where)
        assert (await store.recover_claims(now)).requeued == 1
        await assert_counters_match(store, where, TOPICS)
        await fold(where)
        await assert_counters_match(store, where, TOPICS)
        assert topic_counts(await store.topic_stats("b")) == {"created": 1, "stopped": 1}


def topic_counts(stats: Any) -> dict[str, int]:
    """The statuses of a :class:`TopicStats` with a count above 0, by name."""
    return {Status(s).name.lower(): n for s, n in stats.requests.items() if n}


Op = tuple[str, int]
OPS = st.lists(
    st.tuples(st.sampled_from(["insert", "insert_later", "claim", "sent", "failed", "retry",
                               "stop", "requeue", "feedback", "open", "unsubscribe",
                               "suppress", "fold"]),
              st.integers(0, 6)),
    min_size=1, max_size=14,
)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=OPS)
def test_counters_equal_counts_after_any_sequence_of_changes(
    where: str | Path, ops: list[Op]
) -> None:
    trio.run(run_ops, where, ops)


async def run_ops(where: str | Path, ops: list[Op]) -> None:
    """Apply ``ops`` to the store at ``where``, checking the counters after each one."""
    now = utcnow()
    async with open_store(where) as store:
        held: list[int] = []
        steps: dict[str, Callable[[int], Awaitable[None]]] = {}

        async def insert(k: int, later: bool = False) -> None:
            when = now + timedelta(hours=1) if later else None
            await store.insert_messages(
                [NewMessage(TOPICS[k % 2], "s", "c", [f"r{k}-{i}@x.com" for i in range(k + 1)],
                            scheduled_at=when)], now)

        async def claim(k: int) -> None:
            held.extend(c.id for c in await store.claim_due(now, k + 1))

        def outcome(status: Status) -> Callable[[int], Awaitable[None]]:
            async def record(k: int) -> None:
                done, rest = held[: k + 1], held[k + 1:]
                held[:] = rest
                await store.record_outcomes(
                    [Outcome(i, status, f"ses-{i}" if status == Status.SENT else None)
                     for i in done], now)
            return record

        async def stop(k: int) -> None:
            topic = TOPICS[k % 2]
            upto = await store.max_request_id(topic)
            if upto is not None:
                await store.stop_topic(topic, upto, exclude=held[:1], now=now)
                held[:] = held[:1]

        async def requeue(k: int) -> None:
            await store.release_claims((), now)
            held.clear()

        async def feedback(k: int) -> None:
            kind = ["Delivery", "Bounce", "Complaint"][k % 3]
            await store.record_feedback(f"sns-{utcnow().timestamp()}-{k}",
                                        event(kind, f"ses-{k + 1}", "x@x.com", hint=k + 1), now)

        async def opened(k: int) -> None:
            await store.record_result(k + 1, ["Open", "Click"][k % 2], "{}", now)

        async def unsubscribe(k: int) -> None:
            await store.unsubscribe(k + 1, "link", "{}", now)

        async def suppress(k: int) -> None:
            await store.add_suppression(f"r{k}-0@x.com", "complaint", None, now=now)

        async def folded(k: int) -> None:
            await fold(where)

        steps.update({
            "insert": insert, "insert_later": lambda k: insert(k, later=True), "claim": claim,
            "sent": outcome(Status.SENT), "failed": outcome(Status.FAILED),
            "retry": outcome(Status.CREATED), "stop": stop, "requeue": requeue,
            "feedback": feedback, "open": opened, "unsubscribe": unsubscribe,
            "suppress": suppress, "fold": folded,
        })
        for name, k in ops:
            await steps[name](k)
            await assert_counters_match(store, where, TOPICS)
        await store.release_claims((), now)
        await assert_counters_match(store, where, TOPICS)


async def test_postgres_counters_stay_exact_with_instances_counting_at_once(pg_url: str) -> None:
    """Two instances claim, record and fold at once: no counter row to wait on, no
    deadlock, and the counts are exact."""
    now = utcnow()
    async with open_store(pg_url) as one, open_store(pg_url) as two:
        await one.insert_messages([NewMessage(t, "s", "c", [f"{t}{i}@x.com" for i in range(600)])
                                   for t in TOPICS], now)

        async def work(store: Store) -> None:
            while rows := await store.claim_due(now, 25):
                await store.record_outcomes(
                    [Outcome(r.id, Status.SENT if r.id % 3 else Status.FAILED) for r in rows], now)
                await fold(pg_url)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for store in (one, two, one, two):
                    nursery.start_soon(work, store)
        await assert_counters_match(one, pg_url, TOPICS)
        stats = await two.topic_stats("a")
        assert stats.requests[Status.SENT] + stats.requests[Status.FAILED] == 600
        await fold(pg_url)
        await assert_counters_match(two, pg_url, TOPICS)
        assert pgkit.execute(pg_url, "SELECT count(*) FROM topic_count_deltas") == [(0,)]


def test_counters_equal_counts_after_a_kill_9_mid_send_and_restart(
    tmp_path: Path, store_env: dict[str, str]
) -> None:
    where: str | Path = store_env.get("DATABASE_URL") or tmp_path / "data" / "app.db"
    emails = [f"k{i}@example.com" for i in range(2000)]
    env = {"EMAIL_TRANSPORT": "ses", "EMAIL_RATE": 200, "MAX_CONCURRENT": 20, "LEASE_S": 2,
           **store_env}
    with FakeSES(latency=0.05) as ses:
        env["AWS_ENDPOINT_URL_SESV2"] = ses.url
        killed_mid_send(tmp_path, env, ses, "crash", emails)

        async def right_after_the_kill() -> None:
            # Nothing runs: the counters as the kill left them, rows still processing.
            async with open_store(where) as store:
                await assert_counters_match(store, where, ["crash"])

        trio.run(right_after_the_kill)
        again = ServiceProcess(tmp_path, env)
        try:
            # And once everyone is sent (the rows the dead one held were requeued).
            wait_until(lambda: again.stats("crash")["sent"] == 2000, timeout=90)
            assert stats_match(again.stats_full("crash"), where, "crash")
        finally:
            assert again.stop() == 0
    assert any("re-queued" in line for _, line in again.lines)


# -- migrations backfill the counters ------------------------------------------------


async def test_sqlite_migration_counts_the_rows_already_there(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path, isolation_level=None)
    before = {v: sql for v, sql in MIGRATIONS.items() if v < 8}
    for version, script in before.items():
        conn.executescript(f"BEGIN;{script}\nPRAGMA user_version = {version}; COMMIT;")
    seed_rows(conn.execute, "?")
    conn.close()
    async with open_store(path) as store:
        await assert_counters_match(store, path, TOPICS)
        assert topic_counts(await store.topic_stats("a")) == {"created": 1, "sent": 2}


async def test_postgres_migration_counts_the_rows_already_there(pg_url: str) -> None:
    pgkit.execute(pg_url, "DROP SCHEMA public CASCADE")
    pgkit.execute(pg_url, "CREATE SCHEMA public")
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE schema_version (version integer PRIMARY KEY,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")
        for version in (1, 2):
            conn.execute(PG_MIGRATIONS[version].encode())
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        seed_rows(conn.execute, "%s")
        conn.commit()
        assert pg_migrate(conn) == (2, max(PG_MIGRATIONS))
    async with open_store(pg_url) as store:
        await assert_counters_match(store, pg_url, TOPICS)
        assert topic_counts(await store.topic_stats("a")) == {"created": 1, "sent": 2}
        assert (await store.topic_stats("a")).results == {"Open": 1, "Delivery": 2}


def seed_rows(execute: Callable[..., Any], p: str) -> None:
    """Rows as an older schema held them: topic a (1 created, 2 sent, one opened
    twice), topic b (1 failed), a soft-deleted row and one without a topic."""
    execute(f"INSERT INTO email_contents (subject, content) VALUES ({p}, {p})", ("s", "c"))
    for topic, status, deleted in (("a", 0, None), ("a", 2, None), ("a", 2, None),
                                   ("b", 3, None), ("a", 0, "2026-01-01T00:00:00Z"),
                                   (None, 0, None)):
        execute(f'INSERT INTO email_requests (topic_id, "to", content_id, scheduled_at,'
                f" status, deleted_at) VALUES ({p}, 'x@x.com', 1, '2026-01-01T00:00:00Z',"
                f" {p}, {p})", (topic, status, deleted))
    for request, kind in ((2, "Open"), (2, "Open"), (2, "Delivery"), (3, "Delivery"),
                          (None, "Bounce")):
        execute(f"INSERT INTO email_results (request_id, status) VALUES ({p}, {p})",
                (request, kind))


async def test_while_a_topic_is_paused_claims_still_walk_the_pending_index(
    where: str | Path,
) -> None:
    """The paused twins of the claim and next-due queries use the pending index too."""
    now = utcnow()
    async with open_store(where) as store:
        await store.insert_messages(backlog_messages(now, 20_000), now)
        await store.pause_topic("nobody", Pause("by hand", "user", now, Figures()))
    if isinstance(where, Path):
        conn = sqlite3.connect(where)
        conn.execute("ANALYZE")
        for sql, params in [
            (sqlite_store._CLAIM_PAUSED + "NULL", (to_db(now), 500)),
            (sqlite_store._ANY_DUE_PAUSED, (to_db(now),)),
            (guard_sql.NEXT_SCHEDULED_PAUSED, ()),
        ]:
            plan = " / ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
            assert "USING INDEX idx_email_requests_pending_due" in plan, plan
            assert "TEMP B-TREE" not in plan, plan
        conn.close()
        return
    pgkit.execute(where, "ANALYZE")
    with psycopg.connect(where) as pg:
        for sql, params in [
            (pg_store._CLAIM_PAUSED, {"me": "x", "now": now, "n": 500}),
            (guard_sql.NEXT_SCHEDULED_PAUSED, None),
        ]:
            plan = "\n".join(r[0] for r in pg.execute(("EXPLAIN " + sql).encode(), params))
            assert "idx_email_requests_pending" in plan, plan
            assert "Seq Scan on email_requests" not in plan, plan
