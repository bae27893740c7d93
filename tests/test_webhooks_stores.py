"""The outbox on both stores: written in the transaction of the change it reports,
nothing for an uncommitted change or when no endpoint wants it, claimed once
across instances (PostgreSQL ``SKIP LOCKED``); and every source end to end."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pgkit
import pytest
import trio
from feedbackkit import TOPIC, Harness, Sent, ses_record, shared_key
from snskit import SnsSigner
from trackingkit import tracking_service
from webhookkit import Receiver, register

from mailpipe.feedback import CertUnavailable
from mailpipe.feedback.ses_events import parse_ses_event
from mailpipe.model import Outcome
from mailpipe.status import Status
from mailpipe.store import NewMessage, Store, open_store
from mailpipe.timeutil import utcnow
from mailpipe.webhooks.events import build
from mailpipe.webhooks.model import Endpoint


def endpoint(endpoint_id: str, events: tuple[str, ...]) -> Endpoint:
    now = utcnow()
    return Endpoint(
        endpoint_id, "https://hooks.example.com/", events, None, None, True, None, None,
        now, now, "whsec_" + "A" * 43 + "=",
    )


async def sent_request(store: Store) -> int:
    now = utcnow()
    await store.insert_messages([NewMessage("t", "Hi", "<p>x</p>", ["a@example.com"])], now)
    (claimed,) = await store.claim_due(now, 10)
    return claimed.id


async def events_in(store: Store) -> list[str]:
    (view_types) = [v.type for v in await store.webhooks.deliveries("wh_a", 100, 1)]
    return sorted(view_types)


async def test_outbox_rows_only_with_a_committed_change_an_endpoint_wants(
    where: str | Path,
) -> None:
    async with open_store(where) as store:
        rid = await sent_request(store)
        # No endpoint: the outcome is stored, and no outbox row at all.
        await store.record_outcomes([Outcome(rid, Status.SENT, "m-1", attempts=1)], utcnow())
        assert await store.webhooks.oldest_undelivered() is None
        await store.webhooks.create(endpoint("wh_a", ("bounced",)))
        await store.record_result(rid, "Open", "{}", utcnow())  # not wanted: nothing
        assert await store.webhooks.oldest_undelivered() is None
        record = ses_record("event", "Bounce", Sent(rid, "a@example.com", "m-1", 2, None))
        event = parse_ses_event(json.dumps(record))
        outcome = await store.record_feedback("sns-1", event, utcnow())
        assert outcome.matched == 1
        assert await events_in(store) == ["bounced"]
        await store.record_feedback("sns-1", event, utcnow())  # a duplicate: no second event
        assert await events_in(store) == ["bounced"]


async def test_an_event_is_not_stored_when_its_change_rolls_back(tmp_path: Path) -> None:
    """SQLite's group commit: a write that fails rolls back its savepoint, outbox row too."""
    async with open_store(tmp_path / "app.db") as store:
        rid = await sent_request(store)
        await store.webhooks.create(endpoint("wh_a", ("*",)))

        def failing(conn: object) -> None:
            from mailpipe.store.tracking import record_result

            assert record_result(conn, rid, "Open", "{}", utcnow())  # type: ignore[arg-type]
            raise RuntimeError("the change fails after its event was written")

        with pytest.raises(Exception, match="database error"):
            await store._group.write(failing)  # type: ignore[attr-defined]
        assert await store.webhooks.oldest_undelivered() is None
        assert await store.record_result(rid, "Open", "{}", utcnow())
        assert await events_in(store) == ["opened"]


async def test_postgres_claims_each_delivery_from_one_instance(pg_url: str) -> None:
    async with open_store(pg_url) as one, open_store(pg_url) as two:
        await one.webhooks.create(endpoint("wh_a", ("*",)))
        now = utcnow()
        events = [build("sent", now, "t", {"n": i}) for i in range(60)]
        assert await one.webhooks.enqueue(events, now) == 60
        claims: list[list[int]] = []

        async def claim_all(store: Store) -> None:
            got: list[int] = []
            while batch := await store.webhooks.claim(utcnow(), 7, utcnow() + timedelta(60)):
                got += [c.delivery_id for c in batch]
                await trio.lowlevel.checkpoint()
            claims.append(got)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claim_all, one)
            nursery.start_soon(claim_all, two)
    first, second = claims
    assert not set(first) & set(second)
    assert len(first) + len(second) == 60


def no_network(url: str) -> bytes:
    raise CertUnavailable(f"tests do not reach the network ({url})")


async def test_every_source_reaches_the_receiver_on_both_stores(
    tmp_path: Path, store_env: dict[str, str]
) -> None:
    cert_dir = tmp_path / "certs"
    signer = SnsSigner(cert_dir, key=shared_key())
    env = {
        "SNS_TOPIC_ARNS": TOPIC, "SNS_CERT_CACHE_DIR": str(cert_dir),
        "WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_POLL_S": "0.02", **store_env,
    }
    with trio.fail_after(60), Receiver() as rx:
        async with tracking_service(tmp_path, **env) as h:
            h.svc.sns_get = no_network
            fb = Harness(h.svc, h.client, signer, h.progress, h.svc.config.db_path)
            created = await register(h.client, rx.url, ["*"])
            emails = ["a@example.com", "b@example.com", "c@example.com"]
            message = {"topicId": "t", "emails": emails, "subject": "Hi", "content": "<p>x</p>"}
            assert (await h.post(message)).status_code == 200
            await h.settled("t")
            mails = {d.to: d for _, d in h.delivered()}
            ids = {d.to: rid for rid, d in h.delivered()}
            pixel = h.local(mails["a@example.com"].pixel_url)
            assert (await h.public.get(pixel)).status_code == 200
            unsubscribe = h.local(mails["b@example.com"].unsubscribe_url)
            answer = await h.public.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
            assert answer.status_code == 200
            bounce = ses_record("event", "Bounce", Sent(ids["c@example.com"], "c@example.com",
                                                        None, 2, None))
            assert (await fb.post(signer.notification(TOPIC, bounce))).status_code == 200
            while len(rx.delivered_ids()) < 8:
                await trio.sleep(0.02)
    types = Counter(json.loads(r.body)["type"] for r in rx.received)
    assert types == Counter(
        {"sent": 3, "opened": 1, "unsubscribed": 1, "suppressed": 2, "bounced": 1}
    )
    assert all(r.verifies(created["secret"]) for r in rx.received)
    by_type = {json.loads(r.body)["type"]: json.loads(r.body)["data"] for r in rx.received}
    assert by_type["unsubscribed"]["recipient"] == "b@example.com"
    assert by_type["opened"]["requestId"] == ids["a@example.com"]
    assert by_type["bounced"]["topicId"] == "t"


async def test_settled_events_are_pruned_after_a_week_pending_ones_kept(
    where: str | Path,
) -> None:
    async with open_store(where) as store:
        await store.webhooks.create(endpoint("wh_a", ("*",)))
        old = utcnow() - timedelta(days=8)
        settled, pending = build("sent", old, "t", {}), build("failed", old, "t", {})
        await store.webhooks.enqueue([settled, pending], old)
        (claim,) = [c for c in await store.webhooks.claim(utcnow(), 10, utcnow())
                    if c.event_id == settled.id]
        from mailpipe.webhooks.model import Attempt, Verdict

        await store.webhooks.record(
            claim, Attempt(200, 1.0), Verdict("delivered", "delivered", None), utcnow()
        )
        assert await store.webhooks.prune(utcnow() - timedelta(days=7)) == 1
        assert [v.event_id for v in await store.webhooks.deliveries("wh_a", 10, 1)] == [
            pending.id
        ]


async def test_a_topic_pause_writes_its_event_in_the_same_transaction(
    where: str | Path,
) -> None:
    """The store's topic pause stores its ``topic.paused`` event with it, on both
    engines; a second pause of the same topic (kept as the first) adds none."""
    from mailpipe.model import Figures, Pause

    figures = Figures(sends=200, bounces=12, complaints=0)
    first = Pause("topic bounce rate 6.00%", "auto", utcnow(), figures)
    async with open_store(where) as store:
        await store.webhooks.create(replace_events(endpoint("wh_a", ("topic.paused",)), "t"))
        assert await store.pause_topic("other", Pause("by hand", "user", utcnow(), Figures()))
        assert await store.pause_topic("t", first)
        assert not await store.pause_topic("t", Pause("again", "user", utcnow(), figures))
        claims = await store.webhooks.claim(utcnow(), 10, utcnow() + timedelta(minutes=1))
        assert (await store.topic_pause("t")) is not None
    (claim,) = claims  # "other" is not this endpoint's topic; the second pause wrote nothing
    body = json.loads(claim.body)
    assert body["type"] == "topic.paused"
    assert body["data"] == {
        "topicId": "t", "reason": "topic bounce rate 6.00%", "by": "auto",
        "figures": {"sends": 200, "bounces": 12, "complaints": 0, "bounceRate": 0.06,
                    "complaintRate": 0.0},
    }


async def test_a_pause_whose_event_cannot_be_written_is_not_stored(where: str | Path) -> None:
    """One transaction: when the outbox refuses the ``topic.paused`` event, the pause
    is not stored either (a trigger makes the outbox refuse, then goes)."""
    from mailpipe.model import Figures, Pause

    async with open_store(where) as store:
        await store.webhooks.create(endpoint("wh_a", ("topic.paused",)))
        refuse(where, True)
        try:
            with pytest.raises(Exception, match="webhook_deliveries refused"):
                await store.pause_topic("t", Pause("bounces", "auto", utcnow(), Figures(200, 12)))
        finally:
            refuse(where, False)
        assert await store.topic_pause("t") is None
        assert await store.pause_topic("t", Pause("bounces", "auto", utcnow(), Figures(200, 12)))


def refuse(where: str | Path, on: bool) -> None:
    """Make inserts into ``webhook_deliveries`` fail (``on``), or work again."""
    if isinstance(where, str):
        pgkit.execute(where, (
            "CREATE FUNCTION refuse_delivery() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'webhook_deliveries refused'; END $$;"
            " CREATE TRIGGER refuse BEFORE INSERT ON webhook_deliveries"
            " FOR EACH ROW EXECUTE FUNCTION refuse_delivery()"
        ) if on else (
            "DROP TRIGGER refuse ON webhook_deliveries; DROP FUNCTION refuse_delivery()"
        ))  # fmt: skip
        return
    with sqlite3.connect(where) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON webhook_deliveries"
            " BEGIN SELECT RAISE(ABORT, 'webhook_deliveries refused'); END"
            if on else "DROP TRIGGER refuse"
        )


async def test_early_feedback_goes_out_once_with_its_request_once_matched(
    where: str | Path,
) -> None:
    """A bounce stored before its send's message id has no request and no topic:
    no endpoint gets it then, not even one for every topic; once the send is
    recorded each gets it once, with its request and topic."""
    async with open_store(where) as store:
        await store.webhooks.create(replace_events(endpoint("wh_a", ("bounced",)), "t"))
        await store.webhooks.create(endpoint("wh_b", ("bounced", "suppressed")))
        request_id = await sent_request(store)
        early = Sent(request_id, "a@example.com", "ses-early", 2, None)
        record = parse_ses_event(json.dumps(ses_record("event", "Bounce", early, hints=False)))
        await store.record_feedback("sns-early", record, utcnow())
        lease = utcnow() + timedelta(minutes=1)
        before = await store.webhooks.claim(utcnow(), 10, lease)
        await store.record_outcomes([Outcome(request_id, Status.SENT, "ses-early")], utcnow())
        claims = await store.webhooks.claim(utcnow(), 10, lease)
        assert await store.webhooks.claim(utcnow(), 10, lease) == []
    # The address's suppression is news at once (to the endpoint for every topic).
    assert [(c.endpoint.id, json.loads(c.body)["type"]) for c in before] == [("wh_b", "suppressed")]
    assert sorted((c.endpoint.id, json.loads(c.body)["type"]) for c in claims) == [
        ("wh_a", "bounced"), ("wh_b", "bounced")]
    for claim in claims:
        body = json.loads(claim.body)
        assert body["type"] == "bounced"
        assert (body["data"]["requestId"], body["data"]["topicId"]) == (request_id, "t")
        assert body["data"]["sesMessageId"] == "ses-early"


def replace_events(ep: Endpoint, topic_id: str) -> Endpoint:
    from dataclasses import replace

    return replace(ep, topic_id=topic_id)
