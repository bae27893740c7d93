"""Delivery under SES faults, end to end through the project's fault-injecting endpoint."""

from __future__ import annotations

import collections
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import api_client, running_service, ses_config
from fake_ses import FakeSES


def rows(tmp_path: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(tmp_path / "data" / "app.db")
    try:
        return db.execute('SELECT "to", status, error, attempts FROM email_requests').fetchall()
    finally:
        db.close()


async def send_and_settle(client: Any, topic: str, emails: list[str]) -> dict[str, int]:
    response = await client.post("/v1/messages", json={"messages": [{
        "topicId": topic, "emails": emails, "subject": "s", "content": "<p>c</p>"}]})
    assert response.status_code == 200
    while True:
        stats: dict[str, int] = (await client.get(f"/v1/topics/{topic}")).json()["request"]
        if stats["sent"] + stats["failed"] + stats["stopped"] == len(emails):
            return stats
        await trio.sleep(0.05)


async def test_throttling_storm_delivers_everything_and_fails_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emails = [f"t{i}@example.com" for i in range(240)]
    with FakeSES(throttle_rate=20, max_send_rate=1000) as ses:
        config = ses_config(tmp_path, monkeypatch, ses.url, EMAIL_RATE=40)
        with trio.fail_after(60):
            async with running_service(config) as svc, api_client(svc) as client:
                assert svc.limiter.target == 40  # the quota did not cap it
                stats = await send_and_settle(client, "storm", emails)
                throttled = ses.stats()["throttled"]
                assert svc.limiter.rate < 40 or throttled == 0
                metrics = (await client.get("/metrics")).text
    assert stats["sent"] == 240 and stats["failed"] == 0
    assert throttled > 0  # the storm really happened
    assert collections.Counter(m.to[0] for m in ses.received) == dict.fromkeys(emails, 1)
    # Each throttled call counts its recipients.
    counted = re.search(r"^mailpipe_throttled_total (\S+)$", metrics, re.M)
    assert counted is not None and float(counted.group(1)) >= throttled


async def test_a_fifth_of_calls_failing_delivers_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emails = [f"e{i}@example.com" for i in range(150)]
    with FakeSES(error_every=5) as ses:
        # 20/s: bulk calls of 20 recipients, so the 150 take several calls.
        config = ses_config(tmp_path, monkeypatch, ses.url, EMAIL_RATE=20)
        with trio.fail_after(60):
            async with running_service(config) as svc, api_client(svc) as client:
                stats = await send_and_settle(client, "flaky", emails)
    assert stats["sent"] == 150 and stats["failed"] == 0
    assert ses.stats()["errors"] >= 1
    assert sorted(m.to[0] for m in ses.received) == sorted(emails)
    retried = [r for r in rows(tmp_path) if r[3] > 1]
    assert retried  # attempts are recorded per request


async def test_dropped_connections_are_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emails = [f"d{i}@example.com" for i in range(40)]
    with FakeSES(drop_every=2) as ses:
        config = ses_config(tmp_path, monkeypatch, ses.url, EMAIL_RATE=10)
        with trio.fail_after(60):
            async with running_service(config) as svc, api_client(svc) as client:
                stats = await send_and_settle(client, "drops", emails)
                metrics = (await client.get("/metrics")).text
    assert stats["sent"] == 40 and stats["failed"] == 0
    assert ses.stats()["dropped"] >= 2
    # SES has no idempotency token: a dropped reply may hide a send. Counted.
    assert "mailpipe_retried_maybe_sent_total 0.0" not in metrics


async def test_transient_errors_fail_after_max_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeSES(error_every=1) as ses:
        config = ses_config(tmp_path, monkeypatch, ses.url, EMAIL_RATE=50, MAX_ATTEMPTS=2)
        with trio.fail_after(60):
            async with running_service(config) as svc, api_client(svc) as client:
                stats = await send_and_settle(client, "dead", ["x@example.com"])
    assert stats["failed"] == 1
    ((_, status, error, attempts),) = rows(tmp_path)
    assert (status, attempts) == (3, 2)
    assert error.startswith("InternalFailure")


async def test_rejected_address_fails_with_the_reason_and_the_other_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeSES(reject_addresses={"bad@example.com"}) as ses:
        config = ses_config(tmp_path, monkeypatch, ses.url, EMAIL_RATE=50)
        with trio.fail_after(30):
            async with running_service(config) as svc, api_client(svc) as client:
                stats = await send_and_settle(client, "rej", ["good@example.com",
                                                             "bad@example.com"])
    assert (stats["sent"], stats["failed"]) == (1, 1)
    by_address = {r[0]: r for r in rows(tmp_path)}
    assert by_address["good@example.com"][1] == 2
    assert by_address["bad@example.com"][1] == 3
    assert by_address["bad@example.com"][2].startswith("MessageRejected: ")
    assert by_address["bad@example.com"][3] == 1  # not retried


async def test_paused_account_holds_sends_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emails = [f"p{i}@example.com" for i in range(30)]
    with FakeSES(paused=True) as ses:
        config = ses_config(tmp_path, monkeypatch, ses.url, EMAIL_RATE=50, PAUSE_PROBE_S=2)
        with trio.fail_after(60):
            async with running_service(config) as svc, api_client(svc) as client:
                await client.post("/v1/messages", json={"messages": [{
                    "topicId": "held", "emails": emails, "subject": "s", "content": "c"}]})
                await svc.gate.wait_paused()
                ready = await client.get("/ready")
                assert ready.status_code == 503
                assert "SendingPausedException" in ready.json()["error"]
                # Held, not failed: everything returns to pending.
                while (await client.get("/v1/topics/held")).json()["request"]["created"] < 30:
                    await trio.sleep(0.05)
                stats = (await client.get("/v1/topics/held")).json()["request"]
                assert stats["failed"] == 0 and stats["sent"] == 0
                ses.configure(paused=False)
                while (await client.get("/v1/topics/held")).json()["request"]["sent"] < 30:
                    await trio.sleep(0.05)
                assert (await client.get("/ready")).status_code == 200
    assert sorted(m.to[0] for m in ses.received) == sorted(emails)


async def test_rate_above_the_account_quota_is_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeSES(max_send_rate=10) as ses:
        config = ses_config(tmp_path, monkeypatch, ses.url, EMAIL_RATE=40)
        with trio.fail_after(30):
            async with running_service(config) as svc, api_client(svc) as client:
                assert svc.limiter.target == 10
                account = (await client.get("/v1/account")).json()
    assert (account["rate"], account["emailRate"]) == (10, 40)
    assert any("MaxSendRate" in r.getMessage() for r in caplog.records)


async def test_a_transport_bug_fails_the_request_not_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import make_config

    config = make_config(tmp_path, EMAIL_RATE=50, MAX_ATTEMPTS=1)
    with trio.fail_after(30):
        async with running_service(config) as svc, api_client(svc) as client:
            def broken(emails: object, release_at: object = None) -> object:
                raise KeyError("MessageId")

            monkeypatch.setattr(svc.transport, "send", broken)
            stats = await send_and_settle(client, "bug", ["a@example.com"])
            assert (await client.get("/health")).status_code == 200
    assert stats["failed"] == 1
    ((_, status, error, _),) = rows(tmp_path)
    assert status == 3
    assert error.startswith("KeyError")
