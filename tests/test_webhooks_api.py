"""The webhooks API on a real service: registration, filters' validation, the SSRF
guard, rotation (with a real receiver), retries by hand, and secrets kept out of logs."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import api_client, make_config, running_service
from webhookkit import Receiver, register

from mailpipe.webhooks.poster import KEEP_RESPONSE, HttpPoster, Limits
from mailpipe.webhooks.targets import TargetRefused, check_target, refused_address

FAST = {"WEBHOOK_BACKOFF_S": "0.02", "WEBHOOK_POLL_S": "0.02"}


async def wait_for(check: Any) -> None:
    with trio.fail_after(20):
        while not check():
            await trio.sleep(0.02)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://metadata.google.internal/",
        "http://0.0.0.0/",
    ],
)
async def test_private_targets_are_refused_without_the_setting(tmp_path: Path, url: str) -> None:
    async with running_service(make_config(tmp_path)) as svc, api_client(svc) as client:
        response = await client.post("/v1/webhooks", json={"url": url, "events": ["*"]})
        assert response.status_code == 400, response.text
        assert "WEBHOOK_ALLOW_PRIVATE" in response.json()["error"] or "metadata" in response.json()[
            "error"
        ]
        assert (await client.get("/v1/webhooks")).json() == {"webhooks": []}


def test_the_guard_refuses_at_delivery_too_when_dns_changed() -> None:
    """An endpoint registered while its name was public, resolving to loopback now:
    the attempt is refused before anything is sent."""
    with Receiver() as rx:
        poster = HttpPoster(Limits(timeout_s=2, allow_private=False), max_connections=1)
        try:
            attempt = poster(rx.url, {"webhook-id": "evt_1"}, b"{}")
        finally:
            poster.close()
    assert attempt.status_code is None and "loopback" in (attempt.error or "")
    assert rx.received == []
    assert refused_address("8.8.8.8") is None and refused_address("fe80::1") is not None
    with pytest.raises(TargetRefused, match="does not resolve"):
        check_target("http://no-such-host.invalid/", allow_private=False)


def test_a_name_rebound_to_loopback_after_the_check_gets_nowhere() -> None:
    """DNS rebinding: the name resolves to a public address for the check before the
    attempt, and to loopback when the connection is made. The connection goes only
    to an address checked as it is made, so nothing reaches the local receiver."""
    answers = iter([["93.184.215.14"]])

    def rebinding(host: str) -> list[str]:
        assert host == "localhost"
        return next(answers, ["127.0.0.1"])

    with Receiver() as rx:
        url = rx.url.replace("127.0.0.1", "localhost")
        poster = HttpPoster(Limits(timeout_s=2, allow_private=False), max_connections=1,
                            resolver=rebinding)
        try:
            attempt = poster(url, {"webhook-id": "evt_rebind"}, b"{}")
        finally:
            poster.close()
    assert attempt.status_code is None
    assert "resolves to a loopback address (127.0.0.1)" in (attempt.error or "")
    assert rx.received == []


def test_the_checked_connection_still_reaches_an_allowed_receiver() -> None:
    """The same poster with private targets allowed (as the tests run): delivered."""
    with Receiver() as rx:
        poster = HttpPoster(Limits(timeout_s=2, allow_private=True), max_connections=1)
        try:
            attempt = poster(rx.url.replace("127.0.0.1", "localhost"), {"webhook-id": "e"}, b"{}")
        finally:
            poster.close()
    assert attempt.status_code == 200 and len(rx.received) == 1


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"events": ["*"]}, "url is required"),
        ({"url": "https://hooks.example.com/"}, "events is required"),
        ({"url": "ftp://hooks.example.com/", "events": ["*"]}, "http:// or https://"),
        ({"url": "https://u:p@hooks.example.com/", "events": ["*"]}, "credentials"),
        ({"url": "https://hooks.example.com/", "events": []}, "non-empty array"),
        ({"url": "https://hooks.example.com/", "events": ["opened", "nope"]}, "'nope'"),
        ({"url": "https://hooks.example.com/", "events": ["*"], "topicId": 7}, "topicId"),
        ({"url": "https://hooks.example.com/", "events": ["*"], "secret": "x"}, "'secret'"),
    ],
)
async def test_bad_registrations_are_refused_and_change_nothing(
    tmp_path: Path, body: dict[str, Any], error: str
) -> None:
    config = make_config(tmp_path, WEBHOOK_ALLOW_PRIVATE="true")
    async with running_service(config) as svc, api_client(svc) as client:
        response = await client.post("/v1/webhooks", json=body)
        assert response.status_code == 400 and error in response.json()["error"], response.text
        assert (await client.get("/v1/webhooks")).json() == {"webhooks": []}


async def test_https_only_in_production(tmp_path: Path) -> None:
    config = make_config(tmp_path, ENV="production", WEBHOOK_ALLOW_PRIVATE="true")
    async with running_service(config) as svc, api_client(svc) as client:
        response = await client.post(
            "/v1/webhooks", json={"url": "http://127.0.0.1/x", "events": ["*"]}
        )
        assert response.status_code == 400 and "https://" in response.json()["error"]


async def test_manage_rotate_and_retry_with_both_signatures_and_no_secret_in_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, WEBHOOK_ALLOW_PRIVATE="true", **FAST)
    with caplog.at_level(logging.DEBUG), Receiver() as rx, trio.fail_after(60):
        async with running_service(config) as svc, api_client(svc) as client:
            created = await register(client, rx.url, ["sent"], description="CRM")
            old = created["secret"]
            assert old.startswith("whsec_")
            wid = created["id"]
            listed = (await client.get("/v1/webhooks")).json()["webhooks"]
            assert [w["id"] for w in listed] == [wid]
            assert "secret" not in json.dumps(listed) and old not in json.dumps(listed)
            one = (await client.get(f"/v1/webhooks/{wid}")).json()
            assert one["description"] == "CRM" and "secret" not in one

            rotated = (await client.post(f"/v1/webhooks/{wid}/rotate-secret")).json()
            new = rotated["secret"]
            assert new != old and rotated["previousSecretExpiresAt"]
            body = {"messages": [{"topicId": "t", "emails": ["a@example.com"],
                                  "subject": "Hi", "content": "<p>x</p>"}]}
            assert (await client.post("/v1/messages", json=body)).status_code == 200
            await wait_for(lambda: len(rx.received) == 1)
            first = rx.received[0]
            assert len(first.headers["webhook-signature"].split(" ")) == 2
            assert first.verifies(old) and first.verifies(new)

            # Resend by hand: the same webhook-id, signed again.
            retry = await client.post(f"/v1/webhooks/{wid}/deliveries/{first.id}/retry")
            assert retry.status_code == 202, retry.text
            await wait_for(lambda: len(rx.received) == 2)
            assert rx.received[1].id == first.id and rx.received[1].body == first.body
            missing = await client.post(f"/v1/webhooks/{wid}/deliveries/evt_nope/retry")
            assert missing.status_code == 404

            patched = await client.patch(f"/v1/webhooks/{wid}", json={"events": ["bounced"]})
            assert patched.json()["events"] == ["bounced"]
            bad = await client.patch(f"/v1/webhooks/{wid}", json={"enabled": "yes"})
            assert bad.status_code == 400
            assert (await client.delete(f"/v1/webhooks/{wid}")).json() == {"deleted": True}
            assert (await client.get(f"/v1/webhooks/{wid}")).status_code == 404
            assert (await client.get(f"/v1/webhooks/{wid}/deliveries")).status_code == 404
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "registered" in logged and "rotated" in logged
    assert old not in logged and new not in logged
    assert old[6:20] not in logged and new[6:20] not in logged


def test_an_oversized_answer_is_read_only_up_to_the_bound() -> None:
    big = b"x" * (4 * 1024 * 1024)
    with Receiver(body=big) as rx:
        poster = HttpPoster(
            Limits(timeout_s=10, max_response_bytes=8192, allow_private=True), max_connections=1
        )
        try:
            attempt = poster(rx.url, {"webhook-id": "evt_big"}, b"{}")
        finally:
            poster.close()
    assert attempt.status_code == 200 and attempt.error is None
    assert attempt.response == "x" * KEEP_RESPONSE


def test_a_slow_receiver_is_cut_off_at_the_timeout() -> None:
    """One that trickles its answer, and one that never answers: both end at the
    attempt's timeout (no status: not delivered, retried later)."""
    with Receiver(body=b"y" * 100, delay_s=0.2) as trickle:
        poster = HttpPoster(Limits(timeout_s=0.5, allow_private=True), max_connections=2)
        try:
            slow = poster(trickle.url, {"webhook-id": "evt_slow"}, b"{}")
        finally:
            poster.close()
    assert slow.status_code is None and slow.error == "timed out after 0.5s"
    assert 0 < len(slow.response) < 100  # cut off mid-answer

    hold = threading.Event()
    with Receiver(hold=hold) as silent:
        poster = HttpPoster(Limits(timeout_s=0.3, allow_private=True), max_connections=1)
        try:
            mute = poster(silent.url, {"webhook-id": "evt_mute"}, b"{}")
        finally:
            poster.close()
            hold.set()
    assert mute.status_code is None and mute.error == "timed out after 0.3s"
