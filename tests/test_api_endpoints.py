"""The REST API end to end: keys, counts, cancel, schedules, probes, docs, idempotency.

A real service on port 0 with a real SQLite file; SES is the outbox or the
project's fake SES endpoint (``scripts/fake_ses.py``) over real HTTP.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import api_client, make_config, running_service, ses_config
from fake_ses import FakeSES, Received
from prometheus_client.parser import text_string_to_metric_families

from mailpipe.http.openapi import spec
from mailpipe.store import NewMessage
from mailpipe.store.idempotency import IdempotencyKey, KeyReused
from mailpipe.timeutil import utcnow

SCHEDULE_AHEAD = float(os.environ.get("MAILPIPE_TEST_SCHEDULE_AHEAD", "2"))
"""How far ahead the scheduled-send test schedules (the issue's check uses 4 s)."""


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def send(topic: str, emails: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "messages": [
            {
                "topicId": topic,
                "emails": emails,
                "subject": "Hi",
                "content": "<p>Hello</p>",
                **extra,
            }
        ]
    }


async def until(check: Callable[[], Awaitable[bool]], interval: float = 0.02) -> None:
    """Poll ``check`` until true (bounded by the caller's ``fail_after``)."""
    while True:
        if await check():
            return
        await trio.sleep(interval)


async def first_call(ses: FakeSES) -> None:
    """Return as soon as the first call has reached ``ses``."""

    async def arrived() -> bool:
        return len(ses.received) >= 1

    await until(arrived, interval=0.005)


async def stats(client: httpx.AsyncClient, topic: str) -> dict[str, int]:
    response = await client.get(f"/v1/topics/{topic}")
    assert response.status_code == 200
    counts: dict[str, int] = response.json()["request"]
    return counts


def request_counts(db: Path) -> int:
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM email_requests").fetchone()[0])


def request_ids(db: Path, topic: str, status: int) -> set[int]:
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        rows = conn.execute(
            "SELECT id FROM email_requests WHERE topic_id = ? AND status = ?", (topic, status)
        ).fetchall()
    return {int(r[0]) for r in rows}


def request_id(message: Received) -> int:
    return int(dict(message.headers)["X-Request-ID"])


def keyed_operations() -> list[tuple[str, str]]:
    """(method, concrete path) of every operation the OpenAPI document says needs the key."""
    samples = {"{topicId}": "t1", "{email}": "a@example.com"}
    found = []
    for path, item in spec()["paths"].items():
        for method, op in item.items():
            if isinstance(op, dict) and op.get("security"):
                for name, value in samples.items():
                    path = path.replace(name, value)
                found.append((method.upper(), path))
    return found


# -- authentication --------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "wrong-key", ""])
async def test_every_keyed_endpoint_answers_401_without_or_with_a_wrong_key(
    tmp_path: Path, key: str | None
) -> None:
    operations = keyed_operations()
    assert len(operations) >= 7  # messages, topic get/delete, counts, suppressions x3
    with trio.fail_after(15):
        async with running_service(make_config(tmp_path)) as svc, api_client(svc, key) as client:
            for method, path in operations:
                body = send("t1", ["a@example.com"]) if method == "POST" else None
                response = await client.request(method, path, json=body)
                assert response.status_code == 401, (method, path, response.text)
                assert response.json() == {"error": "missing or invalid x-api-key"}
            assert request_counts(svc.config.db_path) == 0


# -- counts of sent requests ---------------------------------------------------------


@pytest.mark.parametrize("hours", ["0", "169", "abc", "-1", "1.5", "", "24h"])
async def test_hours_out_of_range_or_not_an_integer_is_400(tmp_path: Path, hours: str) -> None:
    with trio.fail_after(10):
        async with running_service(make_config(tmp_path)) as svc, api_client(svc) as client:
            response = await client.get("/v1/events/counts/sent", params={"hours": hours})
    assert response.status_code == 400
    assert "hours" in response.json()["error"]


async def test_sent_counts_default_to_24_hours_and_accept_168(tmp_path: Path) -> None:
    config = make_config(tmp_path, EMAIL_RATE=100)
    with trio.fail_after(15):
        async with running_service(config) as svc, api_client(svc) as client:
            assert (
                await client.post(
                    "/v1/messages", json=send("c", ["a@example.com", "b@example.com"])
                )
            ).is_success
            await until(lambda: _sent(client, "c", 2))
            before = utcnow()
            default = (await client.get("/v1/events/counts/sent")).json()
            week = await client.get("/v1/events/counts/sent", params={"hours": "168"})
            one = await client.get("/v1/events/counts/sent", params={"hours": "1"})
    assert default["count"] == 2 and default["hours"] == 24
    assert week.status_code == 200 and week.json()["hours"] == 168 and week.json()["count"] == 2
    assert one.json()["count"] == 2
    since = datetime.fromisoformat(default["since"].replace("Z", "+00:00"))
    assert abs((before - timedelta(hours=24) - since).total_seconds()) < 5
    assert default["since"].endswith("Z")


async def _sent(client: httpx.AsyncClient, topic: str, n: int) -> bool:
    return (await stats(client, topic))["sent"] >= n


# -- stopping a topic ----------------------------------------------------------------


async def test_delete_stops_fifty_recipients_scheduled_two_minutes_ahead(tmp_path: Path) -> None:
    emails = [f"s{i}@example.com" for i in range(50)]
    later = rfc3339(utcnow() + timedelta(minutes=2))
    with trio.fail_after(15):
        async with running_service(make_config(tmp_path)) as svc, api_client(svc) as client:
            assert (
                await client.post("/v1/messages", json=send("stop", emails, scheduledAt=later))
            ).is_success
            response = await client.delete("/v1/topics/stop")
            counts = await stats(client, "stop")
            again = await client.delete("/v1/topics/stop")
            # A send posted after the stop is a new one: it is not stopped.
            assert (
                await client.post(
                    "/v1/messages", json=send("stop", ["new@example.com"], scheduledAt=later)
                )
            ).is_success
            after = await stats(client, "stop")
            unknown = await client.delete("/v1/topics/never-posted")
    assert response.status_code == 200 and response.json() == {"stopped": 50}
    assert counts == {
        "total": 50,
        "created": 0,
        "processing": 0,
        "sent": 0,
        "failed": 0,
        "stopped": 50,
    }
    assert again.json() == {"stopped": 0}
    assert after["stopped"] == 50 and after["created"] == 1
    assert unknown.json() == {"stopped": 0}
    assert request_ids(config_db(tmp_path), "stop", 4) and not list(_outbox(tmp_path))


def config_db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "app.db"


def _outbox(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "data" / "outbox").glob("*.eml"))


async def test_delete_racing_the_sender_stops_every_row_not_yet_handed_to_ses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claimed rows waiting in memory for a permit are stopped; none of them reaches SES."""
    emails = [f"race{i}@example.com" for i in range(40)]
    with FakeSES(latency=0.3) as ses:
        # 5/s in calls of 5: one SendBulkEmail a second, each taking 0.3 s.
        config = ses_config(tmp_path, monkeypatch, ses.url, EMAIL_RATE=5)
        with trio.fail_after(30):
            async with running_service(config) as svc, api_client(svc) as client:
                assert (await client.post("/v1/messages", json=send("race", emails))).is_success
                await first_call(ses)
                # Right after a call reached SES the next one is ~1 s away: every row
                # is either handed (in that call) or claimed and waiting in memory.
                waiting = await stats(client, "race")
                response = await client.delete("/v1/topics/race")
                answered = trio.current_time()
                arrived_by_then = len(ses.received)

                async def settled() -> bool:
                    counts = await stats(client, "race")
                    return counts["processing"] == 0 and counts["created"] == 0

                await until(settled)
                final = await stats(client, "race")
                # One more second: the next call would have started by now.
                await trio.sleep_until(answered + 1.5)
                received = ses.received
    assert waiting["processing"] >= 30  # most rows were claimed and waiting, not handed
    assert response.status_code == 200
    stopped = response.json()["stopped"]
    assert len(received) == arrived_by_then  # nothing reached SES after the 200
    assert 0 < stopped <= 40 - len(received)
    assert final["stopped"] == stopped
    assert final["sent"] == len(received)
    assert final["stopped"] + final["sent"] == final["total"] == 40
    db = config.db_path
    sent_ids, stopped_ids = request_ids(db, "race", 2), request_ids(db, "race", 4)
    assert {request_id(m) for m in received} == sent_ids
    assert not sent_ids & stopped_ids


async def test_an_unsubscribe_withholds_rows_already_claimed_for_that_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim-time suppression check has passed for rows waiting for a permit."""
    emails = [f"wait{i}@example.com" for i in range(20)]
    with FakeSES(latency=0.3) as ses:
        config = ses_config(tmp_path, monkeypatch, ses.url, EMAIL_RATE=5)  # a call a second
        with trio.fail_after(30):
            async with running_service(config) as svc, api_client(svc) as client:
                assert (await client.post("/v1/messages", json=send("wait", emails))).is_success
                await first_call(ses)
                first = {request_id(m) for m in ses.received}
                claimed = request_ids(config.db_path, "wait", 1) - first
                rid = max(claimed)  # claimed, waiting for a later permit
                to = emails[rid - 1]
                link = svc.tokens.unsubscribe_url("", rid, to)
                response = await client.post(
                    link, data={"List-Unsubscribe": "One-Click"}, headers={"x-api-key": ""}
                )
                assert response.status_code == 200

                async def settled() -> bool:
                    counts = await stats(client, "wait")
                    return counts["sent"] + counts["stopped"] == 20

                await until(settled)
                received = [m.to[0] for m in ses.received]
                with closing(sqlite3.connect(config.db_path)) as db:
                    rows = dict(db.execute(
                        'SELECT "to", error FROM email_requests WHERE id = ?', (rid,)).fetchall())
    assert len(claimed) >= 5  # the next call's recipients were claimed already
    assert to not in received
    assert sorted(received) == sorted(set(emails) - {to})
    assert rows == {to: "suppressed: unsubscribe"}


# -- scheduled sends ------------------------------------------------------------------


async def test_a_scheduled_send_goes_out_within_a_second_after_its_time(tmp_path: Path) -> None:
    config = make_config(tmp_path, EMAIL_RATE=100)
    with trio.fail_after(SCHEDULE_AHEAD + 10):
        async with running_service(config) as svc, api_client(svc) as client:
            due = utcnow() + timedelta(seconds=SCHEDULE_AHEAD)
            started = trio.current_time()
            assert (
                await client.post(
                    "/v1/messages", json=send("later", ["a@example.com"], scheduledAt=rfc3339(due))
                )
            ).is_success
            for check in sorted({min(1.5, SCHEDULE_AHEAD - 0.5), SCHEDULE_AHEAD - 0.5}):
                await trio.sleep_until(started + check)  # checking absence: nothing to wait on
                assert (await stats(client, "later"))["sent"] == 0, f"sent before {check}s"
                assert not _outbox(tmp_path)
            await until(lambda: _sent(client, "later", 1))
            seen = utcnow()
    written = datetime.fromtimestamp(_outbox(tmp_path)[0].stat().st_mtime, UTC)
    assert due <= written + timedelta(milliseconds=50)  # file clocks are coarse
    assert (written - due).total_seconds() < 1.0
    assert (seen - due).total_seconds() < 1.5


async def test_a_send_scheduled_an_hour_ago_goes_out_at_once(tmp_path: Path) -> None:
    config = make_config(tmp_path, EMAIL_RATE=100)
    with trio.fail_after(10):
        async with running_service(config) as svc, api_client(svc) as client:
            past = rfc3339(utcnow() - timedelta(hours=1))
            posted = trio.current_time()
            assert (
                await client.post(
                    "/v1/messages",
                    json=send("past", ["a@example.com", "b@example.com"], scheduledAt=past),
                )
            ).is_success
            await until(lambda: _sent(client, "past", 2))
            took = trio.current_time() - posted
    assert took < 1.0
    assert len(_outbox(tmp_path)) == 2


# -- topic statistics -------------------------------------------------------------


async def test_topic_stats_count_every_status_including_processing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    later = rfc3339(utcnow() + timedelta(hours=1))
    with FakeSES(latency=0.05, reject_addresses={"reject@example.com"}) as ses:
        config = ses_config(tmp_path, monkeypatch, ses.url, EMAIL_RATE=1)
        with trio.fail_after(20):
            async with running_service(config) as svc, api_client(svc) as client:
                post = client.post
                assert (
                    await post(
                        "/v1/messages",
                        json=send("all", ["x1@example.com", "x2@example.com"], scheduledAt=later),
                    )
                ).is_success
                assert (await client.delete("/v1/topics/all")).json() == {"stopped": 2}
                assert (
                    await post(
                        "/v1/messages",
                        json=send(
                            "all",
                            ["c1@example.com", "c2@example.com", "c3@example.com"],
                            scheduledAt=later,
                        ),
                    )
                ).is_success
                now = ["reject@example.com"] + [f"ok{i}@example.com" for i in range(6)]
                assert (await post("/v1/messages", json=send("all", now))).is_success
                seen: dict[str, int] = {}

                async def every_status() -> bool:
                    seen.update(await stats(client, "all"))
                    return all(
                        seen[s] > 0 for s in ("created", "processing", "sent", "failed", "stopped")
                    )

                await until(every_status)
                assert len(ses.received) >= 1
    assert seen["created"] == 3 and seen["stopped"] == 2 and seen["failed"] == 1
    assert seen["processing"] >= 1 and seen["sent"] >= 1
    assert seen["total"] == 12 == sum(v for k, v in seen.items() if k != "total")


# -- probes -------------------------------------------------------------------------


async def test_ready_is_200_and_503_while_sending_is_paused(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running_service(make_config(tmp_path)) as svc, api_client(svc, None) as client:
            ready = await client.get("/ready")
            svc.gate.pause("test")
            paused = await client.get("/ready")
            health = await client.get("/health")
            svc.gate.resume()
            resumed = await client.get("/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert paused.status_code == 503
    assert paused.json()["status"] == "paused" and "test" in paused.json()["error"]
    assert health.status_code == 200
    assert resumed.status_code == 200


async def test_metrics_are_prometheus_text_with_mailpipe_names(tmp_path: Path) -> None:
    config = make_config(tmp_path, EMAIL_RATE=100)
    with trio.fail_after(15):
        async with running_service(config) as svc, api_client(svc, None) as client:
            async with api_client(svc) as keyed:
                assert (
                    await keyed.post("/v1/messages", json=send("m", ["a@example.com"]))
                ).is_success
                await until(lambda: _sent(keyed, "m", 1))
            response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert all(name.startswith("mailpipe_") for name in families)
    for counter in ("mailpipe_sent", "mailpipe_failed", "mailpipe_throttled", "mailpipe_retried"):
        assert families[counter].type == "counter"
    assert families["mailpipe_provider_call_seconds"].type == "histogram"
    for gauge in ("mailpipe_queue_depth", "mailpipe_in_flight", "mailpipe_effective_rate"):
        assert families[gauge].type == "gauge"
    samples = {s.name: s.value for f in families.values() for s in f.samples if not s.labels}
    assert samples["mailpipe_sent_total"] == 1
    assert samples["mailpipe_provider_call_seconds_count"] >= 1
    assert samples["mailpipe_effective_rate"] == 100


async def test_openapi_lists_the_api_and_docs_render_it(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running_service(make_config(tmp_path)) as svc, api_client(svc, None) as client:
            document = await client.get("/openapi.json")
            docs = await client.get("/docs")
    assert document.status_code == 200
    assert document.json()["openapi"].startswith("3.1")
    assert "/v1/messages" in document.json()["paths"]
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in docs.text and "/v1/messages" in docs.text


# -- Idempotency-Key ----------------------------------------------------------------


async def test_idempotency_key_replays_the_first_answer_and_stores_nothing(
    tmp_path: Path,
) -> None:
    body = send("idem", ["a@example.com", "b@example.com"], scheduledAt="2099-01-01T00:00:00Z")
    headers = {"Idempotency-Key": "order-42"}
    with trio.fail_after(10):
        async with running_service(make_config(tmp_path)) as svc, api_client(svc) as client:
            first = await client.post("/v1/messages", json=body, headers=headers)
            second = await client.post("/v1/messages", json=body, headers=headers)
            third = await client.post("/v1/messages", json=body, headers=headers)
            other_key = await client.post(
                "/v1/messages", json=body, headers={"Idempotency-Key": "order-43"}
            )
            no_key = await client.post("/v1/messages", json=body)
            db = svc.config.db_path
            assert request_counts(db) == 6
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    assert second.status_code == third.status_code == 200
    assert second.json() == third.json() == first.json()  # the same elapsed too
    assert second.headers["Idempotent-Replayed"] == "true"
    assert other_key.json()["count"] == no_key.json()["count"] == 2


async def test_idempotency_key_with_a_different_body_is_409(tmp_path: Path) -> None:
    headers = {"Idempotency-Key": "k-1"}
    first_body = send("idem", ["a@example.com"], scheduledAt="2099-01-01T00:00:00Z")
    with trio.fail_after(10):
        async with running_service(make_config(tmp_path)) as svc, api_client(svc) as client:
            first = await client.post("/v1/messages", json=first_body, headers=headers)
            other = await client.post(
                "/v1/messages",
                headers=headers,
                json=send("idem", ["b@example.com"], scheduledAt="2099-01-01T00:00:00Z"),
            )
            invalid = await client.post("/v1/messages", headers=headers, json={"messages": []})
            assert request_counts(svc.config.db_path) == 1
    assert first.status_code == 200
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["error"]
    assert invalid.status_code == 409


async def test_identical_idempotent_requests_racing_store_once(tmp_path: Path) -> None:
    emails = [f"r{i}@example.com" for i in range(3000)]
    body = send("race", emails, scheduledAt="2099-01-01T00:00:00Z")
    answers: list[httpx.Response] = []
    with trio.fail_after(20):
        async with running_service(make_config(tmp_path)) as svc, api_client(svc) as client:

            async def post() -> None:
                answers.append(
                    await client.post(
                        "/v1/messages", json=body, headers={"Idempotency-Key": "same"}
                    )
                )

            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(post)
            assert request_counts(svc.config.db_path) == 3000
    assert [a.status_code for a in answers] == [200] * 4
    assert len({a.text for a in answers}) == 1
    assert sum("Idempotent-Replayed" in a.headers for a in answers) == 3


@pytest.mark.parametrize("key", ["", "k" * 256])
async def test_idempotency_key_empty_or_over_255_characters_is_400(
    tmp_path: Path, key: str
) -> None:
    body = send("idem", ["a@example.com"])
    with trio.fail_after(10):
        async with running_service(make_config(tmp_path)) as svc, api_client(svc) as client:
            response = await client.post(
                "/v1/messages", json=body, headers={"Idempotency-Key": key}
            )
            longest = await client.post(
                "/v1/messages", json=body, headers={"Idempotency-Key": "k" * 255}
            )
            assert request_counts(svc.config.db_path) == 1
    assert response.status_code == 400 and "Idempotency-Key" in response.json()["error"]
    assert longest.status_code == 200


async def test_idempotency_keys_older_than_24_hours_are_ignored_and_pruned(
    tmp_path: Path,
) -> None:
    message = NewMessage("old", "Hi", "<p>Hi</p>", ["a@example.com"])
    digest = hashlib.sha256(b"body").hexdigest()
    key = IdempotencyKey("reused", digest, lambda n: {"count": n})
    with trio.fail_after(10):
        async with running_service(make_config(tmp_path)) as svc:
            now = utcnow()
            first = await svc.store.insert_messages([message], now - timedelta(hours=25), key=key)
            fresh = await svc.store.insert_messages([message], now, key=key)
            replay = await svc.store.insert_messages([message], now, key=key)
            with closing(sqlite3.connect(svc.config.db_path)) as conn:
                keys = conn.execute("SELECT key, created_at FROM idempotency_keys").fetchall()
    assert not first.replayed and not fresh.replayed and replay.replayed
    assert fresh.count == 1 and replay.count == 0
    assert len(keys) == 1 and keys[0][0] == "reused"
    assert keys[0][1].startswith(now.strftime("%Y-%m-%d"))


async def test_a_key_reused_with_another_body_inside_the_transaction_stores_nothing(
    tmp_path: Path,
) -> None:
    """The atomic check (what a request racing past the early check meets)."""
    message = NewMessage("k", "Hi", "<p>Hi</p>", ["a@example.com", "b@example.com"])
    first = IdempotencyKey("k", hashlib.sha256(b"one").hexdigest(), lambda n: {"count": n})
    other = IdempotencyKey("k", hashlib.sha256(b"two").hexdigest(), lambda n: {"count": n})
    with trio.fail_after(10):
        async with running_service(make_config(tmp_path)) as svc:
            await svc.store.insert_messages([message], utcnow(), key=first)
            with pytest.raises(KeyReused):
                await svc.store.insert_messages([message], utcnow(), key=other)
            # The writer connection is not left inside the failed transaction.
            after = await svc.store.insert_messages([message], utcnow())
            assert request_counts(svc.config.db_path) == 4
    assert after.count == 2


# -- content of what is sent ---------------------------------------------------------


async def test_accepted_send_arrives_as_posted(tmp_path: Path) -> None:
    config = make_config(tmp_path, EMAIL_RATE=100)
    with trio.fail_after(10):
        async with running_service(config) as svc, api_client(svc) as client:
            response = await client.post("/v1/messages", json=send("c", ["Ann@Example.com"]))
            await until(lambda: _sent(client, "c", 1))
    assert response.json()["count"] == 1 and response.json()["elapsed"]
    msg = email.message_from_bytes(_outbox(tmp_path)[0].read_bytes(), policy=email.policy.default)
    assert msg["To"] == "Ann@example.com" and msg["Subject"] == "Hi"
