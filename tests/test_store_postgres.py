"""The PostgreSQL store as several instances see it: disjoint claims, leases,
events, keys and the rate row shared through one real database."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pgkit
import psycopg
import pytest
import trio
from conftest import api_client, make_config, running_service
from test_service_outbox import wait_for_sent
from test_store import bounce

from mailpipe.compose import Composer
from mailpipe.errors import LeaseLost, StoreError
from mailpipe.http.api import topic_stats_json
from mailpipe.model import Figures, IdempotencyKey, Outcome, Pause, Recovery
from mailpipe.pipeline.cluster import ClusterSync
from mailpipe.pipeline.jobs import Handed, Job
from mailpipe.pipeline.limiter import RateLimiter
from mailpipe.pipeline.metrics import Metrics
from mailpipe.pipeline.pause import REPUTATION, Announcement, PauseGate
from mailpipe.pipeline.pauses import Pauses
from mailpipe.pipeline.scheduler import Scheduler
from mailpipe.pipeline.sender import SenderPool
from mailpipe.status import Status
from mailpipe.store import Cluster, NewMessage, Store, open_store
from mailpipe.store.pg_schema import MIGRATIONS
from mailpipe.store.postgres import PostgresStore
from mailpipe.timeutil import utcnow
from mailpipe.transport.mock import MockTransport

LEASE_S = 10.0


def cluster_of(store: Store) -> Cluster:
    """The store's cluster (a PostgreSQL store has one)."""
    assert store.cluster is not None
    return store.cluster


@asynccontextmanager
async def two_instances(url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one database, as two mailpipe instances have."""
    async with open_store(url, lease_s=LEASE_S) as a, open_store(url, lease_s=LEASE_S) as b:
        yield a, b


def lapse(url: str, store: Store) -> None:
    """Make the store's instance look dead: its heartbeat an hour old."""
    pgkit.execute(
        url,
        "UPDATE instances SET heartbeat_at = now() - interval '1 hour' WHERE id = %s",
        (cluster_of(store).instance_id,),
    )


def owners(url: str) -> dict[int, str | None]:
    """Each request's owner, by id."""
    return dict(pgkit.execute(url, "SELECT id, owner FROM email_requests ORDER BY id"))


def held(url: str) -> dict[int, str]:
    """The owner of each PROCESSING request, by id."""
    return dict(
        pgkit.execute(url, "SELECT id, owner FROM email_requests WHERE status = 1 ORDER BY id")
    )


async def test_two_instances_claim_disjoint_rows(pg_url: str) -> None:
    now = utcnow()
    claims: dict[str, list[int]] = {}
    async with two_instances(pg_url) as (a, b):
        emails = [f"{i}@x.com" for i in range(300)]
        await a.insert_messages([NewMessage("t", "s", "c", emails)], now)

        async def drain(store: Store) -> None:
            mine = claims.setdefault(cluster_of(store).instance_id, [])
            while batch := await store.claim_due(now, 7):
                assert [c.id for c in batch] == sorted(c.id for c in batch)
                mine.extend(c.id for c in batch)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, a)
                nursery.start_soon(drain, b)
        got_a, got_b = (claims[cluster_of(s).instance_id] for s in (a, b))
        assert not set(got_a) & set(got_b)
        assert sorted(got_a + got_b) == list(range(1, 301))
        assert held(pg_url) == {
            **dict.fromkeys(got_a, cluster_of(a).instance_id),
            **dict.fromkeys(got_b, cluster_of(b).instance_id),
        }


async def test_outcomes_of_a_row_another_instance_holds_change_nothing(pg_url: str) -> None:
    now = utcnow()
    async with two_instances(pg_url) as (a, b):
        await a.insert_messages([NewMessage("t", "s", "c", ["a@x.com", "b@x.com"])], now)
        assert [c.id for c in await a.claim_due(now, 1)] == [1]
        assert [c.id for c in await b.claim_due(now, 1)] == [2]
        assert await b.record_outcomes([Outcome(1, Status.SENT, "ses-x", attempts=1)], now) == 0
        assert await a.record_outcomes([Outcome(1, Status.CREATED, attempts=1)], now) == 1
        assert owners(pg_url)[1] is None  # requeued: held by no one
        assert await b.record_outcomes([Outcome(2, Status.FAILED, error="bad")], now) == 1
        stats = topic_stats_json(await a.topic_stats("t"))["request"]
        assert (stats["created"], stats["failed"], stats["sent"]) == (1, 1, 0)


async def test_only_a_lapsed_instance_loses_its_rows_and_then_its_lease(pg_url: str) -> None:
    now = utcnow()
    async with two_instances(pg_url) as (a, b):
        await a.insert_messages([NewMessage("t", "s", "c", [f"{i}@x.com" for i in range(6)])], now)
        await a.claim_due(now, 2)
        await b.claim_due(now, 3)
        # Both alive: nothing to take back, whoever asks.
        assert await cluster_of(a).recover_lapsed(LEASE_S, now) == Recovery()
        assert await b.recover_claims(now) == Recovery()
        lapse(pg_url, a)
        assert await b.recover_claims(now) == Recovery(stopped=0, requeued=2)
        assert held(pg_url) == dict.fromkeys([3, 4, 5], cluster_of(b).instance_id)
        assert [i for i, o in owners(pg_url).items() if o is None] == [1, 2, 6]
        with pytest.raises(LeaseLost):
            await cluster_of(a).heartbeat()
        assert await a.claim_due(now, 10) == []  # a taken-over instance claims nothing
        await cluster_of(b).heartbeat()
        assert [c.id for c in await b.claim_due(now, 10)] == [1, 2, 6]


async def test_rows_of_an_unregistered_owner_are_recovered_and_stops_kept(pg_url: str) -> None:
    now = utcnow()
    async with two_instances(pg_url) as (a, b):
        await a.insert_messages([NewMessage("t", "s", "c", [f"{i}@x.com" for i in range(4)])], now)
        await a.claim_due(now, 4)
        # Rows 1 and 2 were in an SES call when the topic was stopped.
        assert await a.stop_topic("t", 4, exclude=[1, 2], now=now) == 2
        pgkit.execute(pg_url, "DELETE FROM instances WHERE id = %s", (cluster_of(a).instance_id,))
        assert await b.recover_claims(now) == Recovery(stopped=2, requeued=0)
        assert topic_stats_json(await b.topic_stats("t"))["request"]["stopped"] == 4
        # The stop stays stored: another instance may hold rows it covers.
        assert pgkit.execute(pg_url, "SELECT topic_id, upto_id FROM topic_stops") == [("t", 4)]


async def test_a_stop_and_suppressions_reach_the_other_instance_once(pg_url: str) -> None:
    now = utcnow()
    async with two_instances(pg_url) as (a, b):
        events, cursor = await cluster_of(b).events_since(None)
        assert events == []
        await a.insert_messages([NewMessage("t", "s", "c", ["x@x.com"])], now)
        await b.claim_due(now, 1)
        assert await a.stop_topic("t", 1, exclude=(), now=now) == 0  # b holds row 1
        await a.add_suppression("Q@x.com", "bounce", None)
        await a.delete_suppression("q@x.com")
        await a.unsubscribe(1, "link", "{}", now)
        await a.record_feedback("sns-1", bounce(("X@x.com", "Y@x.com"), None, hint=1), now)
        events, cursor = await cluster_of(b).events_since(cursor)
        assert [(e.kind, e.payload) for e in events] == [
            ("stop", {"topic": "t", "upto": 1}),
            ("suppress", {"entries": [["q@x.com", "bounce"]]}),
            ("lift", {"address": "q@x.com"}),
            ("suppress", {"entries": [["x@x.com", "unsubscribe"]]}),
            ("suppress", {"entries": [["y@x.com", "bounce"]]}),  # x@ was suppressed already
        ]
        assert await cluster_of(b).events_since(cursor) == ([], cursor)
        assert await cluster_of(b).stop_own_claims("t", 1, exclude=(), now=now) == 1


async def test_an_event_committed_late_with_a_lower_id_is_not_lost(pg_url: str) -> None:
    async with two_instances(pg_url) as (a, b):
        _, cursor = await cluster_of(b).events_since(None)
        late = psycopg.connect(pg_url)
        try:
            late.execute("INSERT INTO cluster_events (kind, payload) VALUES ('pause', '{}')")
            await cluster_of(a).publish("resume", {})
            first, cursor = await cluster_of(b).events_since(cursor)
            late.commit()
        finally:
            late.close()
        second, cursor = await cluster_of(b).events_since(cursor)
        assert [e.kind for e in first] == ["resume"] and [e.kind for e in second] == ["pause"]
        assert second[0].id < first[0].id
        assert await cluster_of(b).events_since(cursor) == ([], cursor)


async def test_a_published_event_wakes_a_waiting_instance(pg_url: str) -> None:
    async with two_instances(pg_url) as (a, b):
        await cluster_of(b).wait_for_events(0.01)  # the listener is ready
        with trio.fail_after(3):  # well before the 30 s wait ends
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cluster_of(b).wait_for_events, 30.0)
                await trio.sleep(0.05)
                await cluster_of(a).publish("pause", {"reason": "test"})


async def test_an_idempotency_key_is_shared_by_the_instances(pg_url: str) -> None:
    now = utcnow()
    msgs = [NewMessage("t", "s", "c", ["a@x.com"])]
    key = IdempotencyKey("k", "d", lambda n: {"count": n})
    async with two_instances(pg_url) as (a, b):
        results = []

        async def post(store: Store) -> None:
            results.append(await store.insert_messages(msgs, now, key=key))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for store in (a, b, a, b):
                    nursery.start_soon(post, store)
        assert sorted(r.replayed for r in results) == [False, True, True, True]
        assert all(r.answer == {"count": 1} for r in results)
        assert await b.idempotent_answer(key, now) == {"count": 1}
        assert topic_stats_json(await a.topic_stats("t"))["request"]["total"] == 1


async def test_instances_starting_together_migrate_once() -> None:
    pgkit.reachable_or_skip()
    name, url = pgkit.create_database("migrate_together")
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(open_and_ping, url)
        versions = pgkit.execute(url, "SELECT version FROM schema_version ORDER BY version")
        assert versions == [(v,) for v in sorted(MIGRATIONS)]
    finally:
        pgkit.drop_database(name)


async def open_and_ping(url: str) -> None:
    async with open_store(url, lease_s=LEASE_S) as store:
        await store.ping()


async def test_a_dropped_connection_does_not_poison_the_pool(
    pg_database: tuple[str, str], pg_url: str
) -> None:
    now = utcnow()
    async with two_instances(pg_url) as (a, b):
        await cluster_of(b).wait_for_events(0.01)  # b listens on its own connection
        for _ in range(2):
            assert pgkit.terminate_backends(pg_database[0]) >= 2
            await a.ping()
            await a.insert_messages([NewMessage("t", "s", "c", ["a@x.com"])], now)
            await cluster_of(b).wait_for_events(0.01)  # reconnects, or polls
            await cluster_of(b).wait_for_events(0.01)
        assert topic_stats_json(await b.topic_stats("t"))["request"]["total"] == 2


async def test_an_unreachable_server_is_a_store_error() -> None:
    with trio.fail_after(30), pytest.raises(StoreError, match="database unavailable"):
        async with open_store("postgresql://postgres@127.0.0.1:1/none", lease_s=LEASE_S):
            pass


async def test_the_rate_row_round_trip_reports_the_clock_offset(pg_url: str) -> None:
    seen: list[str | None] = []

    def update(state: str | None, db_now: float) -> tuple[str, float]:
        seen.append(state)
        return json.dumps({"tat": db_now}), db_now

    async with two_instances(pg_url) as (a, b):
        db_now, offset = await cluster_of(a).rate_transaction(update)
        # Both clocks are this host's: perf = db + offset within a few ms.
        assert abs(offset - (time.perf_counter() - time.time())) < 0.5
        assert abs(db_now - time.time()) < 5
        await cluster_of(b).rate_transaction(update)
        assert seen[0] is None and json.loads(seen[1] or "{}") == {"tat": db_now}


async def test_the_first_stored_secret_is_everyones(pg_url: str) -> None:
    async with two_instances(pg_url) as (a, b):
        assert await cluster_of(a).shared_secret("tracking", "one") == "one"
        assert await cluster_of(b).shared_secret("tracking", "two") == "one"


async def test_shutdown_lets_go_of_this_instances_rows_only(pg_url: str) -> None:
    now = utcnow()
    async with two_instances(pg_url) as (a, b):
        await a.insert_messages([NewMessage("t", "s", "c", [f"{i}@x.com" for i in range(4)]),
                                 NewMessage("u", "s", "c", ["u@x.com"])], now)
        await a.claim_due(now, 2)
        await b.claim_due(now, 3)
        assert await a.release_claims([("t", 1)], now) == Recovery(stopped=1, requeued=1)
        assert held(pg_url) == dict.fromkeys([3, 4, 5], cluster_of(b).instance_id)
        registered = pgkit.execute(pg_url, "SELECT id FROM instances")
        assert registered == [(cluster_of(b).instance_id,)]
        later = now + timedelta(days=8)
        await b.stop_topic("u", 5, exclude=[5], now=now)
        assert await b.release_claims((), later) == Recovery(stopped=1, requeued=2)
        assert pgkit.execute(pg_url, "SELECT topic_id FROM topic_stops") == []


async def test_upkeep_prunes_old_events_and_sns_message_ids(pg_url: str) -> None:
    now = utcnow()
    async with open_store(pg_url, lease_s=LEASE_S) as store:
        await cluster_of(store).publish("pause", {"reason": "old"})
        await cluster_of(store).publish("resume", {})
        pgkit.execute(pg_url, "UPDATE cluster_events SET created_at = now() - interval '2 hours'"
                      " WHERE kind = 'pause'")
        pgkit.execute(pg_url, "INSERT INTO sns_messages VALUES ('old', now() - interval '8 days'),"
                      " ('new', now())")
        assert isinstance(store, PostgresStore)
        await store.prune(now)
        assert pgkit.execute(pg_url, "SELECT kind FROM cluster_events") == [("resume",)]
        assert pgkit.execute(pg_url, "SELECT message_id FROM sns_messages") == [("new",)]


async def test_two_services_on_one_database_send_each_recipient_once(
    tmp_path: Path, pg_url: str
) -> None:
    emails = [f"user{i}@example.com" for i in range(40)]
    body = {"messages": [{"topicId": "t", "emails": emails, "subject": "Hi",
                          "content": "<p>Hello</p>"}]}
    configs = [make_config(tmp_path / name, EMAIL_RATE=50, DATABASE_URL=pg_url)
               for name in ("a", "b")]
    with trio.fail_after(30):
        async with running_service(configs[0]) as a, running_service(configs[1]) as b:
            async with api_client(a) as client:
                assert (await client.post("/v1/messages", json=body)).status_code == 200
                await wait_for_sent(client, "t", 40)
            async with api_client(b) as client:
                stats = (await client.get("/v1/topics/t")).json()
    assert stats["request"]["sent"] == 40
    files = [f for name in ("a", "b") for f in (tmp_path / name / "data" / "outbox").glob("*.eml")]
    assert len(files) == 40


def cluster_sync(store: Store) -> ClusterSync:
    """The cluster actor of ``store``, wired to a pipeline that sends nowhere."""
    jobs_send, jobs_recv = trio.open_memory_channel[list[Job]](10)
    outcomes_send, _ = trio.open_memory_channel[Outcome](100)
    announce_send, announce_recv = trio.open_memory_channel[Announcement](10)
    gate = PauseGate(announce_send)
    pool = SenderPool(
        MockTransport(), RateLimiter(10), Composer("s@x.com"), jobs_recv, outcomes_send,
        Metrics(), max_concurrent=1, handed=Handed(), gate=gate,
    )
    scheduler = Scheduler(store, jobs_send, gate=gate)
    return ClusterSync(
        cluster_of(store), lease_s=LEASE_S, gate=gate, pool=pool, scheduler=scheduler,
        pauses=Pauses(store, pool, gate, scheduler), announcements=announce_recv,
    )


async def test_the_cluster_actor_renews_the_lease_and_takes_back_lapsed_rows(
    pg_url: str,
) -> None:
    now = utcnow()
    async with two_instances(pg_url) as (a, b):
        await a.insert_messages([NewMessage("t", "s", "c", ["1@x.com", "2@x.com"])], now)
        await b.claim_due(now, 2)
        lapse(pg_url, b)
        pgkit.execute(pg_url, "UPDATE instances SET heartbeat_at = now() - interval '5 s'"
                      " WHERE id = %s", (cluster_of(a).instance_id,))
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(cluster_sync(a).run)
                while held(pg_url):
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
        (age,) = pgkit.execute(pg_url, "SELECT extract(epoch FROM now() - heartbeat_at)"
                               " FROM instances WHERE id = %s", (cluster_of(a).instance_id,))[0]
        assert age < 4  # renewed
        with pytest.raises(LeaseLost):
            await cluster_of(b).heartbeat()
        # The instance whose lease was taken over ends its actor with LeaseLost.
        with trio.fail_after(10), pytest.raises(LeaseLost):
            await cluster_sync(b).run()


async def test_a_failing_migration_leaves_the_previous_version(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_store(pg_url, lease_s=LEASE_S):
        pass  # migrated to the latest version
    latest = max(MIGRATIONS)
    broken = {**MIGRATIONS, latest + 1: "CREATE TABLE ok_table (x int); THIS IS NOT SQL;"}
    monkeypatch.setattr("mailpipe.store.pg_schema.MIGRATIONS", broken)
    with pytest.raises(StoreError, match="syntax"):
        async with open_store(pg_url, lease_s=LEASE_S):
            pytest.fail("opened")
    assert pgkit.execute(pg_url, "SELECT max(version) FROM schema_version") == [(latest,)]
    assert pgkit.execute(pg_url, "SELECT to_regclass('ok_table')") == [(None,)]


async def test_a_newer_database_is_refused(pg_url: str) -> None:
    async with open_store(pg_url, lease_s=LEASE_S):
        pass
    pgkit.execute(pg_url, "INSERT INTO schema_version (version) VALUES (%s)",
                  (max(MIGRATIONS) + 1,))
    try:
        with pytest.raises(RuntimeError, match="newer"):
            async with open_store(pg_url, lease_s=LEASE_S):
                pytest.fail("opened")
    finally:
        pgkit.execute(pg_url, "DELETE FROM schema_version WHERE version > %s", (max(MIGRATIONS),))


async def test_topic_and_account_pauses_reach_the_other_instances(pg_url: str) -> None:
    """A pause stored by one instance is applied by another's cluster actor (its
    claimed rows held back, or all its sending held), and so is the resume."""
    async with two_instances(pg_url) as (a, b):
        sync = cluster_sync(b)
        pool, gate = sync._pool, sync._gate
        figures = Figures(200, 20, 0)

        async def until(check: Callable[[], bool]) -> None:
            with trio.fail_after(10):
                while not check():
                    await trio.sleep(0.02)  # the event comes by LISTEN, within a second

        async with trio.open_nursery() as nursery:
            await nursery.start(sync.run)
            assert await a.pause_topic("t", Pause("bounces", "auto", utcnow(), figures))
            await until(lambda: pool.topic_pauses.paused("t"))
            assert await a.resume_topic("t")
            await until(lambda: not pool.topic_pauses.paused("t"))
            assert await a.pause_account(Pause("account bounces", "auto", utcnow(), figures))
            await until(lambda: gate.paused_for(REPUTATION))
            assert gate.reason == "account bounces"
            assert await a.resume_account()
            await until(lambda: not gate.paused)
            nursery.cancel_scope.cancel()
