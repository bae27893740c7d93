"""Done when: a topic of 1,000 recipients whose first sends bounce is paused before
400 sends, the rest pending, and sent after a resume; feedback over signed SNS
(HTTP) and through an SQS queue on moto's server. SES is the fake SES endpoint.

Phase one sends at EMAIL_RATE=20 (about ten seconds, to the pause). The pause
is then checked to survive a restart, and the service restarts at 500/s for
the tail (800 sends), which would take 40 s more at 20/s.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import api_client, running_service, ses_config
from fake_ses import FakeSES
from feedbackkit import TOPIC, Progress, Sent, ses_record, shared_key
from snskit import SnsSigner, encode
from sqskit import moto_queue

TOPIC_ID = "newsletter"


def recipients() -> tuple[list[str], set[str]]:
    """1,000 addresses, and the 60 among the first 180 that bounce."""
    emails = [f"r{i:04d}@example.com" for i in range(1000)]
    return emails, set(emails[0:180:3])


async def post_sns(client: httpx.AsyncClient, msg: dict[str, Any]) -> None:
    """Deliver ``msg`` as SNS does over HTTP."""
    response = await client.post(
        "/v1/events/results", content=encode(msg),
        headers={"content-type": "text/plain; charset=UTF-8", "x-api-key": ""},
    )
    assert response.status_code == 200, response.text


async def bounce_as_sent(
    fake: FakeSES, progress: Progress, bouncing: set[str],
    deliver: Callable[[dict[str, Any]], Awaitable[None]], signer: SnsSigner,
) -> None:
    """Each time SES received mail for a bouncing address, deliver its signed bounce."""
    seen = 0
    left = set(bouncing)
    while left:
        await progress.until(partial(_more, fake, seen))
        fresh = fake.received[seen:]
        seen += len(fresh)
        for msg in fresh:
            if msg.to[0] in left:
                left.discard(msg.to[0])
                record = ses_record("event", "Bounce", Sent(0, msg.to[0], msg.message_id, 2, None),
                                    hints=False)
                await deliver(signer.notification(TOPIC, record))


async def _more(fake: FakeSES, seen: int) -> bool:
    return len(fake.received) > seen


def env(tmp_path: Path, extra: dict[str, Any]) -> dict[str, Any]:
    return {"SNS_TOPIC_ARNS": TOPIC, "SNS_CERT_CACHE_DIR": str(tmp_path / "certs"),
            "REPUTATION_CHECK_S": 0.2, **extra}


@pytest.mark.parametrize("via", ["sns", "sqs"])
async def test_a_bouncing_topic_pauses_before_400_sends_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeSES, via: str
) -> None:
    emails, bouncing = recipients()
    signer = SnsSigner(tmp_path / "certs", key=shared_key())
    with moto_queue(monkeypatch) as queue, trio.fail_after(90):
        extra: dict[str, Any] = {}
        if via == "sqs":
            extra = {"SQS_QUEUE_URL": queue.url, "SQS_WAIT_S": 1}
        config = ses_config(tmp_path, monkeypatch, fake.url, EMAIL_RATE=20, **env(tmp_path, extra))
        async with running_service(config) as svc, api_client(svc) as client:
            progress = Progress(svc)

            async def deliver(msg: dict[str, Any]) -> None:
                if via == "sns":
                    await post_sns(client, msg)
                else:
                    await trio.to_thread.run_sync(queue.send, json.dumps(msg))

            body = {"messages": [{"topicId": TOPIC_ID, "emails": emails, "subject": "Hi",
                                  "content": "<p>Hello</p>"}]}
            assert (await client.post("/v1/messages", json=body)).status_code == 200
            await bounce_as_sent(fake, progress, bouncing, deliver, signer)

            async def settled() -> bool:
                stats = (await client.get(f"/v1/topics/{TOPIC_ID}")).json()
                return bool(stats["paused"] and stats["request"]["processing"] == 0
                            and stats["reputation"]["bounces"] == len(bouncing))

            await progress.until(settled)
            topic = (await client.get(f"/v1/topics/{TOPIC_ID}")).json()
        sent = len(fake.received)
        print(f"\n{via}: paused after {sent} sends; pause: {topic['paused']}")
        assert 200 <= sent < 400
        assert topic["request"]["sent"] == sent
        assert topic["request"]["created"] == 1000 - sent  # pending, not failed
        assert topic["request"]["failed"] == topic["request"]["stopped"] == 0
        paused = topic["paused"]
        assert paused["by"] == "auto" and "bounce rate" in paused["reason"]
        assert paused["sends"] >= 200 and paused["bounceRate"] >= 0.04
        assert paused["bounceRate"] == paused["bounces"] / paused["sends"]
        assert topic["reputation"] == {
            "windowHours": 24.0, "sends": sent, "bounces": 60, "complaints": 0,
            "bounceRate": 60 / sent, "complaintRate": 0.0,
        }

        # The pause is stored: a restart (now at 500/s) keeps it until the resume.
        config = ses_config(tmp_path, monkeypatch, fake.url, EMAIL_RATE=500,
                            **env(tmp_path, extra))
        async with running_service(config) as svc, api_client(svc) as client:
            progress = Progress(svc)
            again = (await client.get(f"/v1/topics/{TOPIC_ID}")).json()
            assert again["paused"] == paused
            assert await svc.store.claim_due(svc.scheduler._now(), 10) == []
            resumed = await client.post(f"/v1/topics/{TOPIC_ID}/resume")
            assert resumed.status_code == 200 and resumed.json()["paused"] is None

            async def all_sent() -> bool:
                stats = (await client.get(f"/v1/topics/{TOPIC_ID}")).json()["request"]
                return bool(stats["sent"] == 1000)

            await progress.until(all_sent)
        assert sorted(m.to[0] for m in fake.received) == emails  # each once
