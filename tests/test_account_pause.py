"""The account-level pause: a bounce rate over ACCOUNT_MIN_SENDS sends pauses all
sending (``/ready`` 503 with the reason) until ``POST /v1/account/resume``, across
a restart; ``GET /v1/account`` shows GetAccount's quota and EnforcementStatus
(the fake SES endpoint), and a status other than HEALTHY is reported and logged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import api_client, running_service, ses_config
from fake_ses import FakeSES
from feedbackkit import TOPIC, Progress, Sent, ses_record, shared_key
from snskit import SnsSigner
from test_reputation_e2e import post_sns


def settings(tmp_path: Path) -> dict[str, Any]:
    return {"SNS_TOPIC_ARNS": TOPIC, "SNS_CERT_CACHE_DIR": str(tmp_path / "certs"),
            "EMAIL_RATE": 200, "REPUTATION_MIN_SENDS": 1_000_000, "ACCOUNT_MIN_SENDS": 10,
            "REPUTATION_CHECK_S": 0.2}


async def _stats(client: Any, topic: str) -> dict[str, int]:
    counts: dict[str, int] = (await client.get(f"/v1/topics/{topic}")).json()["request"]
    return counts


async def test_the_account_pauses_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeSES
) -> None:
    signer = SnsSigner(tmp_path / "certs", key=shared_key())
    config = ses_config(tmp_path, monkeypatch, fake.url, **settings(tmp_path))
    emails = [f"a{i}@example.com" for i in range(10)]
    with trio.fail_after(30):
        async with running_service(config) as svc, api_client(svc) as client:
            progress = Progress(svc)
            body = {"messages": [{"topicId": "a", "emails": emails, "subject": "s",
                                  "content": "c"}]}
            assert (await client.post("/v1/messages", json=body)).status_code == 200

            async def sent_all() -> bool:
                return (await _stats(client, "a"))["sent"] == 10

            await progress.until(sent_all)
            first = fake.received[0]
            bounce = ses_record("event", "Bounce", Sent(0, first.to[0], first.message_id, 2, None),
                                hints=False)
            await post_sns(client, signer.notification(TOPIC, bounce))
            await svc.gate.wait_paused()
            ready = await client.get("/ready")
            assert ready.status_code == 503
            assert "account bounce rate 10.00%" in ready.json()["error"]
            account = (await client.get("/v1/account")).json()
            assert account["paused"]["by"] == "auto"
            assert (account["paused"]["sends"], account["paused"]["bounces"]) == (10, 1)
            assert account["quota"] == {"max24HourSend": 1e6, "maxSendRate": 1000.0,
                                        "sentLast24Hours": 10.0}
            assert (account["enforcementStatus"], account["sendingEnabled"]) == ("HEALTHY", True)
            assert account["reputation"]["bounceRate"] == 0.1
            assert "mailpipe_reputation_bounce_rate 0.1" in (await client.get("/metrics")).text
        # Stored: after a restart all sending is still held.
        async with running_service(config) as svc, api_client(svc) as client:
            progress = Progress(svc)
            assert (await client.get("/ready")).status_code == 503
            later = {"messages": [{"topicId": "b", "emails": ["b@example.com"], "subject": "s",
                                   "content": "c"}]}
            assert (await client.post("/v1/messages", json=later)).status_code == 200
            assert (await _stats(client, "b"))["created"] == 1
            resumed = await client.post("/v1/account/resume")
            assert resumed.status_code == 200 and resumed.json()["paused"] is None
            assert (await client.get("/ready")).status_code == 200

            async def b_sent() -> bool:
                return (await _stats(client, "b"))["sent"] == 1

            await progress.until(b_sent)
            await svc.guard.check([])  # the figures are as bad, but no feedback came since
            assert (await client.get("/ready")).status_code == 200


async def test_an_enforcement_status_other_than_healthy_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeSES,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = ses_config(tmp_path, monkeypatch, fake.url, **settings(tmp_path))
    with trio.fail_after(30):
        async with running_service(config) as svc, api_client(svc) as client:
            assert (await client.get("/ready")).status_code == 200
            fake.configure(enforcement_status="PROBATION")
            with caplog.at_level(logging.ERROR, logger="mailpipe.service"):
                account = (await client.get("/v1/account")).json()
            assert account["enforcementStatus"] == "PROBATION"
            assert "SES EnforcementStatus is PROBATION" in caplog.text
            ready = await client.get("/ready")
            assert ready.status_code == 503
            assert ready.json() == {"status": "enforcement",
                                    "error": "SES EnforcementStatus is PROBATION"}


async def test_a_topic_paused_by_hand(tmp_path: Path) -> None:
    from conftest import make_config

    with trio.fail_after(20):
        async with running_service(make_config(tmp_path)) as svc, api_client(svc) as client:
            body = {"messages": [{"topicId": "later", "emails": ["a@example.com"],
                                  "subject": "s", "content": "c",
                                  "scheduledAt": "2099-01-01T00:00:00Z"}]}
            assert (await client.post("/v1/messages", json=body)).status_code == 200
            paused = await client.post("/v1/topics/later/pause", json={"reason": "wrong list"})
            assert paused.status_code == 200
            topic = paused.json()
            assert topic["paused"]["reason"] == "wrong list" and topic["paused"]["by"] == "user"
            assert topic["request"]["created"] == 1
            again = await client.post("/v1/topics/later/pause")  # the first pause is kept
            assert again.json()["paused"]["reason"] == "wrong list"
            assert (await client.post("/v1/topics/nothing/pause")).status_code == 404
            assert (await client.post("/v1/topics/nothing/resume")).status_code == 404
            bad = await client.post("/v1/topics/later/pause", content=b"[1]")
            assert bad.status_code == 400
            bad = await client.post("/v1/topics/later/pause", json={"reason": "a\nb"})
            assert bad.status_code == 400
            resumed = await client.post("/v1/topics/later/resume")
            assert resumed.status_code == 200 and resumed.json()["paused"] is None
