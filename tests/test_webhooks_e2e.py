"""Webhooks end to end: a send through FakeSES, signed SNS feedback, opens and clicks,
delivered to a real local receiver that fails each event's first two attempts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import trio
from feedbackkit import TOPIC, Harness, ses_record, shared_key
from snskit import SnsSigner
from trackingkit import tracking_service
from webhookkit import Receiver, register

from mailpipe.feedback import CertUnavailable

RECIPIENTS = 200
BOUNCES = 20
COMPLAINTS = 5
OPENS = 15
CLICKS = 10
LINK = "https://shop.example.com/sale"
FAST_RETRIES = {
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "WEBHOOK_BACKOFF_S": "0.02",
    "WEBHOOK_POLL_S": "0.02",
    "WEBHOOK_MAX_CONCURRENT": "16",
}


def no_network(url: str) -> bytes:
    raise CertUnavailable(f"tests do not reach the network ({url})")


async def test_every_event_delivered_once_signed_after_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert_dir = tmp_path / "certs"
    signer = SnsSigner(cert_dir, key=shared_key())
    env = {"SNS_TOPIC_ARNS": TOPIC, "SNS_CERT_CACHE_DIR": str(cert_dir), **FAST_RETRIES}
    with (
        trio.fail_after(90),
        Receiver(fail_first=2) as rx,
        Receiver() as bounces_rx,
        Receiver() as other_topic_rx,
    ):
        async with tracking_service(tmp_path, monkeypatch, **env) as h:
            h.svc.sns_get = no_network
            fb = Harness(h.svc, h.client, signer, h.progress, h.svc.config.db_path)
            everything = await register(h.client, rx.url, ["*"], description="all")
            only_bounces = await register(h.client, bounces_rx.url, ["bounced", "complained"])
            await register(h.client, other_topic_rx.url, ["*"], topicId="another-topic")

            emails = [f"r{i}@example.com" for i in range(RECIPIENTS)]
            content = f'<p>Hello</p><a href="{LINK}">Sale</a>'
            mails = await h.send("spring", emails=emails, content=content)
            sent = {row.to: row for row in fb.requests("spring")}
            assert len(sent) == RECIPIENTS and all(s.message_id for s in sent.values())

            async def post(kind: str, to: str) -> None:
                record = ses_record("event", kind, sent[to])
                response = await fb.post(signer.notification(TOPIC, record, version=2))
                assert response.status_code == 200, response.text

            async with trio.open_nursery() as nursery:
                for i, to in enumerate(emails):
                    nursery.start_soon(post, "Delivery", to)
                    if i < BOUNCES:
                        nursery.start_soon(post, "Bounce", to)
                    elif i < BOUNCES + COMPLAINTS:
                        nursery.start_soon(post, "Complaint", to)
            for to in emails[:OPENS]:
                assert (await h.public.get(h.local(mails[to].pixel_url))).status_code == 200
            for to in emails[-CLICKS:]:
                (url,) = [u for u in mails[to].hrefs if "/v1/events/click?" in u]
                assert (await h.public.get(h.local(url))).status_code == 302

            expected = Counter({
                "sent": RECIPIENTS, "delivered": RECIPIENTS, "bounced": BOUNCES,
                "complained": COMPLAINTS, "suppressed": BOUNCES + COMPLAINTS,
                "opened": OPENS, "clicked": CLICKS,
                # 20 bounces of 200 sends reach PAUSE_BOUNCE_RATE: the guard pauses the topic.
                "topic.paused": 1,
            })
            total = sum(expected.values())
            while len(rx.delivered_ids()) < total or len(bounces_rx.delivered_ids()) < 25:
                await trio.sleep(0.05)
            # Nothing more is pending: a late duplicate would show up in the store.
            while (await h.svc.store.webhooks.oldest_undelivered()) is not None:
                await trio.sleep(0.05)

            deliveries = (
                await h.client.get(f"/v1/webhooks/{everything['id']}/deliveries?limit=500")
            ).json()["deliveries"]
            metrics = (await h.client.get("/metrics")).text

    # Every event delivered once, by distinct webhook-id; each tried three times.
    delivered = rx.delivered_ids()
    assert len(delivered) == total and set(delivered.values()) == {1}
    assert set(rx.attempts().values()) == {3}
    types = Counter(json.loads(r.body)["type"] for r in rx.received if r.status == 200)
    assert types == expected
    assert all(r.verifies(everything["secret"]) for r in rx.received)
    assert not any(r.verifies(only_bounces["secret"]) for r in rx.received)
    # The filters: types, and a topic no request has.
    assert all(r.verifies(only_bounces["secret"]) for r in bounces_rx.received)
    assert Counter(json.loads(r.body)["type"] for r in bounces_rx.received) == Counter(
        {"bounced": BOUNCES, "complained": COMPLAINTS}
    )
    assert other_topic_rx.received == []
    # A payload has what the issue lists.
    bounce = next(json.loads(r.body) for r in rx.received if b'"bounced"' in r.body)
    data = bounce["data"]
    assert data["topicId"] == "spring" and data["recipient"] in emails
    assert data["sesMessageId"] == sent[data["recipient"]].message_id
    assert data["requestId"] == sent[data["recipient"]].id
    assert data["details"]["bounce"]["bounceType"] == "Permanent"
    # The deliveries API shows the retries.
    assert len(deliveries) == total
    for d in deliveries:
        assert d["status"] == "delivered" and d["attempts"] == 3
        assert [a["outcome"] for a in d["history"]] == ["delivered", "retry", "retry"]
        assert [a["statusCode"] for a in d["history"]] == [200, 500, 500]
        assert d["history"][0]["response"] == "ok" and d["nextRetryAt"] is None
    assert f'mailpipe_webhook_attempts_total{{outcome="retry"}} {2.0 * total}' in metrics
    assert "mailpipe_webhook_oldest_undelivered_seconds 0.0" in metrics
    print(f"\nwebhooks e2e: {total} events, {len(rx.received)} attempts, "
          f"{len(delivered)} distinct ids delivered once each, types {dict(types)}")
