"""The suppression list: filled by permanent bounces and complaints, honoured by every claim."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from feedbackkit import TOPIC, Harness, feedback_service, ses_record

from mailpipe.http.api import topic_stats_json
from mailpipe.store import NewMessage, open_store
from mailpipe.store.sqlite import SqliteStore


def recipients(files: list[Path]) -> list[str]:
    """The ``To`` of each ``.eml`` file."""
    return [
        str(email.message_from_bytes(f.read_bytes(), policy=email.policy.default)["To"])
        for f in files
    ]


async def feedback(h: Harness, form: str, kind: str, sent_to: str, topic: str, **kw: Any) -> None:
    sent = {s.to: s for s in h.requests(topic)}[sent_to]
    msg = h.signer.notification(TOPIC, ses_record(form, kind, sent, **kw), version=2)
    response = await h.post(msg)
    assert response.status_code == 200, response.text


async def test_bounced_and_complaining_addresses_are_not_sent_again_until_deleted(
    tmp_path: Path,
) -> None:
    bounced, complained, fresh = "bounced@example.com", "Complained@example.com", "new@example.com"
    with trio.fail_after(30):
        async with feedback_service(tmp_path) as h:
            await h.send("first", [bounced, complained])
            await feedback(h, "identity", "Bounce", bounced, "first")
            await feedback(h, "event", "Complaint", complained, "first")
            before = h.outbox()
            assert len(before) == 2

            # Addresses compare lower-cased: a differently cased copy is suppressed too.
            shouted = "BOUNCED@example.com"
            sent = await h.send("second", [shouted, complained.lower(), fresh])
            new_files = sorted(set(h.outbox()) - set(before))
            assert recipients(new_files) == [fresh]
            assert sent[fresh].status == 2
            assert (sent[shouted].status, sent[shouted].error) == (
                4,
                "suppressed: bounce",
            )
            assert (sent[complained.lower()].status, sent[complained.lower()].error) == (
                4,
                "suppressed: complaint",
            )
            stats = (await h.client.get("/v1/topics/second")).json()
            assert stats["request"]["stopped"] == 2
            assert stats["request"]["sent"] == 1

            found = await h.client.get(f"/v1/suppressions/{shouted}")
            assert found.status_code == 200
            first = {s.to: s for s in h.requests("first")}
            assert found.json() == {
                "email": bounced,
                "reason": "bounce",
                "source": first[bounced].message_id,
                "requestId": first[bounced].id,
                "createdAt": found.json()["createdAt"],
            }
            assert found.json()["createdAt"].endswith("Z")

            deleted = await h.client.delete(f"/v1/suppressions/{bounced}")
            assert (deleted.status_code, deleted.json()) == (200, {"deleted": True})
            gone = await h.client.get(f"/v1/suppressions/{bounced}")
            assert (gone.status_code, gone.json()) == (404, {"error": "address is not suppressed"})
            again = await h.client.delete(f"/v1/suppressions/{bounced}")
            assert again.status_code == 404

            before = h.outbox()
            sent = await h.send("third", [bounced, complained])
            assert recipients(sorted(set(h.outbox()) - set(before))) == [bounced]
            assert sent[bounced].status == 2
            assert sent[complained].error == "suppressed: complaint"


async def test_a_transient_bounce_does_not_suppress(tmp_path: Path) -> None:
    address = "full@example.com"
    with trio.fail_after(30):
        async with feedback_service(tmp_path) as h:
            await h.send("t", [address])
            await feedback(
                h,
                "event",
                "Bounce",
                address,
                "t",
                bounce_type="Transient",
                bounce_subtype="MailboxFull",
            )
            rows = h.query("SELECT bounce_type, bounce_subtype FROM email_results")
            assert rows == [("Transient", "MailboxFull")]
            assert (await h.client.get(f"/v1/suppressions/{address}")).status_code == 404
            sent = await h.send("t2", [address])
            assert sent[address].status == 2
            assert len(h.outbox()) == 2


async def test_suppressions_are_paged_newest_first(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with feedback_service(tmp_path) as h:
            base = datetime(2024, 5, 1, tzinfo=UTC)
            for i in range(5):
                added = await h.svc.store.add_suppression(
                    f"user{i}@Example.com",
                    "unsubscribe",
                    f"request {i}",
                    request_id=i,
                    now=base + timedelta(minutes=i),
                )
                assert added
            assert not await h.svc.store.add_suppression("USER0@example.com", "complaint", "x")
            seen: list[str] = []
            cursor: str | None = None
            pages = 0
            while True:
                params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
                response = await h.client.get("/v1/suppressions", params=params)
                assert response.status_code == 200
                body = response.json()
                assert len(body["suppressions"]) <= 2
                seen += [s["email"] for s in body["suppressions"]]
                pages += 1
                cursor = body["nextCursor"]
                if cursor is None:
                    break
            assert pages == 3
            assert seen == [f"user{i}@example.com" for i in reversed(range(5))]
            first = (await h.client.get("/v1/suppressions")).json()["suppressions"][-1]
            assert first == {
                "email": "user0@example.com",
                "reason": "unsubscribe",
                "source": "request 0",
                "requestId": 0,
                "createdAt": "2024-05-01T00:00:00Z",
            }
            for bad in ({"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"cursor": "-1"}):
                response = await h.client.get("/v1/suppressions", params=bad)
                assert response.status_code == 400, bad
                assert "error" in response.json()
            with pytest.raises(ValueError, match="unknown suppression reason"):
                await h.svc.store.add_suppression("a@example.com", "dislike", None)


async def test_suppression_endpoints_need_the_key(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with feedback_service(tmp_path) as h:
            for method, path in [
                ("GET", "/v1/suppressions"),
                ("GET", "/v1/suppressions/a@example.com"),
                ("DELETE", "/v1/suppressions/a@example.com"),
            ]:
                response = await h.client.request(method, path, headers={"x-api-key": "wrong"})
                assert response.status_code == 401


async def test_claim_skips_suppressed_rows_in_one_transaction(where: str | Path) -> None:
    now = datetime.now(UTC)
    emails = [f"u{i}@example.com" for i in range(1000)]
    with trio.fail_after(30):
        async with open_store(where) as store:
            await store.insert_messages([NewMessage("t", "s", "<p>x</p>", emails)], now)
            await store.add_suppression("U7@EXAMPLE.COM", "complaint", "ses-1")
            claimed = await store.claim_due(now, 1000)
            assert len(claimed) == 999
            assert "u7@example.com" not in {c.to for c in claimed}
            stats = topic_stats_json(await store.topic_stats("t"))
            assert stats["request"] == {
                "total": 1000,
                "created": 0,
                "processing": 999,
                "sent": 0,
                "failed": 0,
                "stopped": 1,
            }
            assert await store.claim_due(now, 1000) == []
            if not isinstance(store, SqliteStore):
                return
            # The lookup of each claimed address is an index search, not a scan.
            plan = await store._r.run(
                lambda conn: conn.execute(
                    "EXPLAIN QUERY PLAN SELECT reason FROM suppressions WHERE address = lower(?)",
                    ("x",),
                ).fetchall()
            )
            assert any("USING INDEX" in row[3] for row in plan)
