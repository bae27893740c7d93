"""A running service wired for SNS feedback, and SES records in both payload forms.

    async with feedback_service(tmp_path) as h:          # signer's cert pinned in the cache
        sent = await h.send("t", ["a@example.com"])      # through the outbox; waits for the outcome
        record = ses_record("event", "Bounce", sent["a@example.com"])
        response = await h.post(h.signer.notification(TOPIC, record, version=2))

``h.fetched`` lists every URL the service tried to GET (nothing goes to the network).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import trio
from conftest import api_client, make_config, running_service
from cryptography.hazmat.primitives.asymmetric import rsa
from snskit import SnsSigner, encode, new_key, sns_time

from mailpipe.feedback import CertUnavailable
from mailpipe.http.api import topic_stats_json
from mailpipe.service import Service

TOPIC = "arn:aws:sns:us-east-1:123456789012:mailpipe-feedback"


@functools.cache
def shared_key() -> rsa.RSAPrivateKey:
    """One RSA key for every test of a run (generating one costs ~50 ms)."""
    return new_key()


@dataclass(frozen=True)
class Sent:
    """A request as stored after its send attempt."""

    id: int
    to: str
    message_id: str | None
    status: int
    error: str | None


class Progress:
    """Wakes waiters whenever the scheduler claimed, the recorder wrote outcomes or
    feedback was stored."""

    def __init__(self, svc: Service) -> None:
        self._changed = trio.Event()
        for name in ("claim_due", "record_outcomes", "record_feedback"):
            setattr(svc.store, name, self._wrap(getattr(svc.store, name)))

    def _wrap(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            finally:
                self._changed.set()
                self._changed = trio.Event()

        return wrapped

    async def until(self, check: Callable[[], Awaitable[bool]]) -> None:
        """Return once ``check()`` is true, re-checking after each store change."""
        while True:
            changed = self._changed
            if await check():
                return
            await changed.wait()


@dataclass
class Harness:
    """A running service, a keyed client, an SNS signer and the URLs the service fetched."""

    svc: Service
    client: httpx.AsyncClient
    signer: SnsSigner
    progress: Progress
    db: Path
    fetched: list[str] = field(default_factory=list)

    async def post(self, msg: dict[str, Any] | bytes) -> httpx.Response:
        """POST ``msg`` to the SNS endpoint as SNS does (text/plain JSON, no API key)."""
        body = msg if isinstance(msg, bytes) else encode(msg)
        kind = "" if isinstance(msg, bytes) else str(msg.get("Type", ""))
        return await self.client.post(
            "/v1/events/results",
            content=body,
            headers={
                "content-type": "text/plain; charset=UTF-8",
                "x-amz-sns-message-type": kind,
                "x-api-key": "",
            },
        )

    async def send(self, topic: str, emails: list[str]) -> dict[str, Sent]:
        """POST a send to ``emails`` and wait until every request of ``topic`` is final."""
        body = {
            "messages": [
                {"topicId": topic, "emails": emails, "subject": "Hi", "content": "<p>Hello</p>"}
            ]
        }
        response = await self.client.post("/v1/messages", json=body)
        assert response.status_code == 200, response.text

        async def final() -> bool:
            stats = topic_stats_json(await self.svc.store.topic_stats(topic))
            counts = stats["request"]
            assert isinstance(counts, dict)
            return bool(counts["created"] == 0 and counts["processing"] == 0)

        await self.progress.until(final)
        return {row.to: row for row in self.requests(topic)}

    def requests(self, topic: str) -> list[Sent]:
        """The topic's requests, oldest first."""
        return [
            Sent(*row)
            for row in self.query(
                'SELECT id, "to", message_id, status, error FROM email_requests'
                " WHERE topic_id = ? ORDER BY id",
                topic,
            )
        ]

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` read from the service's database file."""
        with closing(sqlite3.connect(self.db, timeout=10)) as conn:
            return conn.execute(sql, args).fetchall()

    def count(self, table: str) -> int:
        """How many rows ``table`` has."""
        return int(self.query(f"SELECT COUNT(*) FROM {table}")[0][0])

    def outbox(self) -> list[Path]:
        """The ``.eml`` files the outbox transport wrote so far."""
        return sorted(self.svc.config.outbox_dir.glob("*.eml"))


@asynccontextmanager
async def feedback_service(tmp_path: Path, **env: Any) -> AsyncIterator[Harness]:
    """A service accepting SNS messages for ``TOPIC``, its signer's certificate pinned."""
    cert_dir = tmp_path / "certs"
    signer = SnsSigner(cert_dir, key=shared_key())
    env = {"SNS_TOPIC_ARNS": TOPIC, "SNS_CERT_CACHE_DIR": str(cert_dir), "EMAIL_RATE": 200, **env}
    config = make_config(tmp_path, **env)
    async with running_service(config) as svc, api_client(svc) as client:
        harness = Harness(svc, client, signer, Progress(svc), config.db_path)

        def no_network(url: str) -> bytes:
            harness.fetched.append(url)
            raise CertUnavailable(f"tests do not reach the network ({url})")

        svc.sns_get = no_network
        yield harness


def ses_record(
    form: str,
    kind: str,
    sent: Sent,
    *,
    hints: bool = True,
    bounce_type: str = "Permanent",
    bounce_subtype: str = "General",
    recipient: str | None = None,
) -> dict[str, Any]:
    """An SES record about ``sent``: ``form`` "identity" (``notificationType``, as
    identity notifications) or "event" (``eventType``, as configuration-set event
    publishing). ``hints`` adds the ``X-Request-ID`` header and ``request_id`` tag."""
    now = sns_time(datetime.now(UTC))
    to = recipient or sent.to
    mail: dict[str, Any] = {
        "timestamp": now,
        "source": "sender@example.com",
        "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/example.com",
        "sendingAccountId": "123456789012",
        "messageId": sent.message_id,
        "destination": [to],
    }
    if hints:
        mail["headersTruncated"] = False
        mail["headers"] = [
            {"name": "From", "value": "sender@example.com"},
            {"name": "To", "value": to},
            {"name": "Subject", "value": "Hi"},
            {"name": "X-Request-ID", "value": str(sent.id)},
        ]
        mail["commonHeaders"] = {"from": ["sender@example.com"], "to": [to], "subject": "Hi"}
    if form == "event":
        mail["tags"] = {"ses:configuration-set": ["mailpipe"], "ses:operation": ["SendEmail"]}
        if hints:
            mail["tags"]["request_id"] = [str(sent.id)]
    record: dict[str, Any] = {("eventType" if form == "event" else "notificationType"): kind}
    record["mail"] = mail
    record.update(_payload(kind, to, now, bounce_type, bounce_subtype))
    return record


def _payload(kind: str, to: str, now: str, bounce_type: str, bounce_subtype: str) -> dict[str, Any]:
    if kind == "Delivery":
        return {
            "delivery": {
                "timestamp": now,
                "processingTimeMillis": 812,
                "recipients": [to],
                "smtpResponse": "250 2.6.0 Message received",
                "reportingMTA": "a8-70.smtp-out.amazonses.com",
            }
        }
    if kind == "Bounce":
        return {
            "bounce": {
                "bounceType": bounce_type,
                "bounceSubType": bounce_subtype,
                "bouncedRecipients": [
                    {
                        "emailAddress": to,
                        "action": "failed",
                        "status": "5.1.1",
                        "diagnosticCode": "smtp; 550 5.1.1 no such user",
                    }
                ],
                "timestamp": now,
                "feedbackId": "0100018f-bounce-000000",
                "reportingMTA": "dsn; a8-70.smtp-out.amazonses.com",
            }
        }
    if kind == "Complaint":
        return {
            "complaint": {
                "complainedRecipients": [{"emailAddress": to}],
                "timestamp": now,
                "feedbackId": "0100018f-complaint-000000",
                "complaintSubType": None,
                "complaintFeedbackType": "abuse",
                "userAgent": "ExampleCorp Feedback Loop (V0.01)",
            }
        }
    if kind == "Open":
        return {"open": {"timestamp": now, "userAgent": "Mozilla/5.0", "ipAddress": "192.0.2.1"}}
    if kind == "Click":
        return {
            "click": {
                "timestamp": now,
                "userAgent": "Mozilla/5.0",
                "ipAddress": "192.0.2.1",
                "link": "https://example.com/",
                "linkTags": {},
            }
        }
    return {}
