"""SendBulkEmail batching against the project's SES-compatible endpoint."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
from conftest import api_client, running_service, ses_config
from fake_ses import FakeSES

from mailpipe.errors import PermanentSendError, Throttled
from mailpipe.transport import Email, request_headers, request_tags
from mailpipe.transport.ses import MAX_REPLACEMENT_DATA, SesTransport, make_client


def email(i: int, **kw: object) -> Email:
    fields: dict[str, object] = {
        "request_id": i, "sender": "sender@example.com", "to": f"r{i}@example.com",
        "subject": f"Hi {i}", "html": f"<p>Dear {i} &amp; co</p>", "text": f"Dear {i}",
        "headers": (*request_headers(i), ("List-Unsubscribe", f"<https://x.test/u?r={i}>")),
        "tags": request_tags(i),
    }
    fields.update(kw)
    return Email(**fields)  # type: ignore[arg-type]


def test_one_call_carries_every_entry_with_its_own_headers_tags_and_content(
    fake: FakeSES,
) -> None:
    transport = SesTransport(make_client("us-east-1", 4))
    emails = [email(i) for i in range(1, 6)]
    results = transport.send(emails)
    assert fake.calls == 1
    received = fake.received
    assert [r.api for r in received] == ["SendBulkEmail"] * 5
    by_to = {r.to[0]: r for r in received}
    for sent, result in zip(emails, results, strict=True):
        got = by_to[sent.to]
        assert result.error is None
        assert result.message_id == got.message_id  # entry results map back in order
        assert dict(got.headers)["X-Request-ID"] == str(sent.request_id)
        assert dict(got.headers)["List-Unsubscribe"] == dict(sent.headers)["List-Unsubscribe"]
        assert got.tags == {"request_id": str(sent.request_id)}
        assert (got.subject, got.html, got.text) == (sent.subject, sent.html, sent.text)


def test_a_rejected_entry_fails_alone(fake: FakeSES) -> None:
    fake.configure(reject_addresses={"r2@example.com"})
    transport = SesTransport(make_client("us-east-1", 4))
    results = transport.send([email(i) for i in range(1, 4)])
    assert [r.error is None for r in results] == [True, False, True]
    assert isinstance(results[1].error, PermanentSendError)
    assert results[1].error.code == "MessageRejected"
    assert {r.to[0] for r in fake.received} == {"r1@example.com", "r3@example.com"}


def test_a_throttled_call_throttles_every_entry(fake: FakeSES) -> None:
    fake.configure(throttle_rate=2)
    transport = SesTransport(make_client("us-east-1", 4))
    results = transport.send([email(i) for i in range(1, 4)])
    assert all(isinstance(r.error, Throttled) for r in results)
    assert fake.received == []


def test_an_entry_too_large_for_bulk_goes_alone(fake: FakeSES) -> None:
    transport = SesTransport(make_client("us-east-1", 4))
    big = email(2, html="<p>" + "x" * MAX_REPLACEMENT_DATA + "</p>")
    results = transport.send([email(1), big, email(3)])
    assert all(r.error is None for r in results)
    assert sorted((r.api, r.to[0]) for r in fake.received) == [
        ("SendBulkEmail", "r1@example.com"), ("SendBulkEmail", "r3@example.com"),
        ("SendEmail", "r2@example.com")]


async def test_service_sends_in_bulk_and_maps_each_entry_to_its_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeSES
) -> None:
    emails = [f"b{i}@example.com" for i in range(200)]
    config = ses_config(tmp_path, monkeypatch, fake.url, EMAIL_RATE=100)
    with trio.fail_after(30):
        async with running_service(config) as svc, api_client(svc) as client:
            assert svc.pool.max_batch == 50
            await client.post("/v1/messages", json={"messages": [{
                "topicId": "bulk", "emails": emails, "subject": "s", "content": "<p>c</p>"}]})
            while (await client.get("/v1/topics/bulk")).json()["request"]["sent"] < 200:
                await trio.sleep(0.05)
    received = fake.received
    assert sorted(r.to[0] for r in received) == sorted(emails)
    assert fake.calls < 20  # bulk calls, not 200 single sends
    db = sqlite3.connect(tmp_path / "data" / "app.db")
    stored = dict(db.execute('SELECT "to", message_id FROM email_requests'))
    for r in received:
        assert stored[r.to[0]] == r.message_id
        request_id = dict(r.headers)["X-Request-ID"]
        (to,) = db.execute('SELECT "to" FROM email_requests WHERE id = ?', (request_id,)).fetchone()
        assert to == r.to[0]
