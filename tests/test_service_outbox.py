"""End to end through the outbox transport: POST, send, files, stats, auth."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import trio
from conftest import api_client, make_config, running_service


async def wait_for_sent(client, topic: str, n: int) -> dict:  # type: ignore[no-untyped-def]
    """Poll the topic stats until ``n`` are sent (bounded by the caller's fail_after)."""
    while True:
        stats = (await client.get(f"/v1/topics/{topic}")).json()
        if stats["request"]["sent"] >= n:
            return stats
        await trio.sleep(0.05)


async def test_twenty_recipients_end_as_twenty_files(
    tmp_path: Path, store_env: dict[str, str]
) -> None:
    config = make_config(tmp_path, EMAIL_RATE=100, **store_env)
    with trio.fail_after(20):
        async with running_service(config) as svc, api_client(svc) as client:
            emails = [f"user{i}@example.com" for i in range(20)]
            body = {"messages": [{"topicId": "t", "emails": emails, "subject": "Hi",
                                  "content": "<p>Hello</p>"}]}
            response = await client.post("/v1/messages", json=body)
            assert response.status_code == 200
            assert response.json()["count"] == 20
            stats = await wait_for_sent(client, "t", 20)
    assert stats["request"] == {"total": 20, "created": 0, "processing": 0, "sent": 20,
                                "failed": 0, "stopped": 0}
    files = sorted((tmp_path / "data" / "outbox").glob("*.eml"))
    assert len(files) == 20
    received = set()
    for f in files:
        msg = email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
        assert msg["X-Request-ID"].isdigit()
        assert msg["From"] == "sender@example.com"
        received.add(msg["To"])
    assert received == set(emails)


async def test_keyed_endpoints_refuse_missing_and_wrong_key(config) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(10):
        async with running_service(config) as svc:
            for key in (None, "wrong"):
                async with api_client(svc, key) as client:
                    for method, path in [("POST", "/v1/messages"), ("GET", "/v1/topics/t")]:
                        response = await client.request(method, path, json={})
                        assert response.status_code == 401
                        assert "error" in response.json()
            async with api_client(svc, None) as client:
                assert (await client.get("/health")).status_code == 200


async def test_generated_api_key_is_stored_private_and_reused(tmp_path: Path) -> None:
    config = make_config(tmp_path, API_KEY="")
    with trio.fail_after(10):
        async with running_service(config) as svc:
            first = svc.api_key
        async with running_service(config) as svc:
            assert svc.api_key == first
    key_file = tmp_path / "data" / "api_key"
    assert key_file.read_text().strip() == first
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(first) >= 32


async def test_a_stop_cut_off_by_a_crash_applies_at_the_next_start(tmp_path: Path) -> None:
    # The state a kill -9 leaves: a DELETE stopped the topic while two of its
    # rows were handed to SES (left PROCESSING), and nothing applied the stop.
    from mailpipe.store import NewMessage, open_store
    from mailpipe.timeutil import utcnow

    config = make_config(tmp_path, EMAIL_RATE=100)
    now = utcnow()
    with trio.fail_after(20):
        async with open_store(config.db_path) as store:
            await store.insert_messages([NewMessage("t", "s", "<p>c</p>", ["a@x.com", "b@x.com"]),
                                         NewMessage("other", "s", "<p>c</p>", ["c@x.com"])], now)
            await store.claim_due(now, 3)
            await store.stop_topic("t", 2, exclude=[1, 2], now=now)
        async with running_service(config) as svc, api_client(svc) as client:
            other = await wait_for_sent(client, "other", 1)
            stopped = (await client.get("/v1/topics/t")).json()
    assert other["request"]["sent"] == 1  # re-queued and sent, as after any crash
    assert stopped["request"]["stopped"] == 2 and stopped["request"]["sent"] == 0
    files = list((tmp_path / "data" / "outbox").glob("*.eml"))
    assert len(files) == 1
