"""End to end against moto's SES server over real HTTP (boto3 via AWS_ENDPOINT_URL_SESV2)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import trio
from conftest import api_client, make_config, running_service
from moto.core import DEFAULT_ACCOUNT_ID
from moto.server import ThreadedMotoServer
from moto.ses.models import ses_backends
from test_service_outbox import wait_for_sent


@pytest.fixture
def moto_ses(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    for name, value in {
        "AWS_ENDPOINT_URL_SESV2": url, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("sesv2", region_name="us-east-1")
    client.create_email_identity(EmailIdentity="sender@example.com")
    ses_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages.clear()
    try:
        yield url
    finally:
        server.stop()


async def test_sends_through_moto_and_stores_message_ids(tmp_path: Path, moto_ses: str) -> None:
    config = make_config(tmp_path, EMAIL_TRANSPORT="ses", EMAIL_RATE=50)
    emails = [f"user{i}@example.com" for i in range(30)]
    with trio.fail_after(30):
        async with running_service(config) as svc, api_client(svc) as client:
            assert svc.transport.name == "ses"
            response = await client.post("/v1/messages", json={"messages": [{
                "topicId": "moto", "emails": emails, "subject": "Hello", "content": "<b>x</b>"}]})
            assert response.status_code == 200
            await wait_for_sent(client, "moto", 30)
    sent = ses_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages
    assert sorted(m.destinations["ToAddresses"][0] for m in sent) == sorted(emails)
    db = sqlite3.connect(tmp_path / "data" / "app.db")
    ids = {row[0] for row in db.execute('SELECT message_id FROM email_requests WHERE status = 2')}
    assert ids == {m.id for m in sent}


async def test_unverified_sender_fails_permanently_with_the_reason(
    tmp_path: Path, moto_ses: str
) -> None:
    config = make_config(tmp_path, EMAIL_TRANSPORT="ses", EMAIL_SENDER="nobody@unverified.example")
    with trio.fail_after(30):
        async with running_service(config) as svc, api_client(svc) as client:
            await client.post("/v1/messages", json={"messages": [{
                "topicId": "bad", "emails": ["a@example.com"], "subject": "s", "content": "c"}]})
            while (await client.get("/v1/topics/bad")).json()["request"]["failed"] < 1:
                await trio.sleep(0.05)
    db = sqlite3.connect(tmp_path / "data" / "app.db")
    (error,) = db.execute("SELECT error FROM email_requests").fetchone()
    assert error.startswith("MessageRejected")
