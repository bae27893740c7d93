"""POST /v1/events/results end to end: a real service, signed SNS messages, a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from feedbackkit import TOPIC, Harness, Sent, feedback_service, ses_record
from rawhttp import post_raw
from snskit import SnsSigner, encode, new_key

from mailpipe.feedback import MAX_RECIPIENTS, parse_ses_event
from mailpipe.store import open_store
from mailpipe.store.feedback import SNS_DEDUPE_KEEP

KINDS = ("Delivery", "Bounce", "Complaint")
NOBODY = Sent(
    id=999_999, to="nobody@example.com", message_id="ses-unknown-0001", status=2, error=None
)


def result_rows(h: Harness) -> list[dict[str, Any]]:
    rows = h.query(
        "SELECT request_id, status, raw, sns_message_id, ses_message_id, recipient,"
        " bounce_type, bounce_subtype FROM email_results ORDER BY id"
    )
    names = (
        "request_id",
        "status",
        "raw",
        "sns_message_id",
        "ses_message_id",
        "recipient",
        "bounce_type",
        "bounce_subtype",
    )
    return [dict(zip(names, row, strict=True)) for row in rows]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("form", ["identity", "event"])
async def test_valid_messages_are_stored_against_their_requests(
    tmp_path: Path, form: str, version: int
) -> None:
    emails = [f"{kind.lower()}-{hints}@example.com" for kind in KINDS for hints in ("h", "bare")]
    with trio.fail_after(30):
        async with feedback_service(tmp_path) as h:
            sent = await h.send("news", emails)
            assert all(s.status == 2 and s.message_id for s in sent.values())
            posted: list[tuple[dict[str, Any], Sent, str, str]] = []
            for kind in KINDS:
                for hints in ("h", "bare"):
                    target = sent[f"{kind.lower()}-{hints}@example.com"]
                    record = ses_record(form, kind, target, hints=hints == "h")
                    msg = h.signer.notification(TOPIC, record, version=version)
                    response = await h.post(msg)
                    assert response.status_code == 200, response.text
                    assert response.json() == {
                        "status": "stored",
                        "results": 1,
                        "matched": 1,
                        "suppressed": 0 if kind == "Delivery" else 1,
                    }
                    posted.append((msg, target, kind, msg["Message"]))
            rows = result_rows(h)
            assert len(rows) == 6
            for row, (msg, target, kind, raw) in zip(rows, posted, strict=True):
                assert row["request_id"] == target.id
                assert row["status"] == kind
                assert row["raw"] == raw
                assert json.loads(row["raw"])["mail"]["messageId"] == target.message_id
                assert row["sns_message_id"] == msg["MessageId"]
                assert row["ses_message_id"] == target.message_id
                assert row["recipient"] == target.to
                expected_bounce = ("Permanent", "General") if kind == "Bounce" else (None, None)
                assert (row["bounce_type"], row["bounce_subtype"]) == expected_bounce
            stats = (await h.client.get("/v1/topics/news")).json()
            assert stats["result"]["statuses"] == {"Bounce": 2, "Complaint": 2, "Delivery": 2}

            # SNS retries: the same message again stores nothing new.
            again = await h.post(posted[0][0])
            assert again.status_code == 200
            assert again.json() == {"status": "duplicate"}
            assert h.count("email_results") == 6
            assert h.count("sns_messages") == 6
            assert h.fetched == []


async def test_statuses_count_distinct_requests_and_keep_every_event_type(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with feedback_service(tmp_path) as h:
            sent = await h.send("t", ["a@example.com", "b@example.com"])
            a, b = sent["a@example.com"], sent["b@example.com"]
            for target, kind in [
                (a, "Open"),
                (a, "Open"),
                (b, "Open"),
                (a, "Click"),
                (a, "Rendering Failure"),
                (b, "Brand New Type"),
            ]:
                record = ses_record("event", kind, target)
                response = await h.post(h.signer.notification(TOPIC, record, version=2))
                assert response.status_code == 200, response.text
            stats = (await h.client.get("/v1/topics/t")).json()
            assert stats["result"]["statuses"] == {
                "Open": 2,
                "Click": 1,
                "Rendering Failure": 1,
                "Brand New Type": 1,
            }
            assert h.count("email_results") == 6


async def test_correlation_by_recipient_and_by_hint(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with feedback_service(tmp_path) as h:
            sent = await h.send("bulk", ["one@example.com", "Two@example.com", "three@example.com"])
            one, two, three = sent.values()
            # As a future SendBulkEmail would: several requests share one SES message id.
            with closing(sqlite3.connect(h.db, timeout=10)) as conn, conn:
                conn.execute(
                    "UPDATE email_requests SET message_id = 'bulk-1' WHERE id IN (?, ?)",
                    (one.id, two.id),
                )
            shared = Sent(one.id, one.to, "bulk-1", 2, None)
            record = ses_record(
                "event", "Delivery", shared, hints=False, recipient="TWO@example.com"
            )
            assert (await h.post(h.signer.notification(TOPIC, record))).status_code == 200
            # The message id is not (yet) recorded: the X-Request-ID header decides.
            late = Sent(three.id, three.to, "not-recorded-yet", 2, None)
            record = ses_record("identity", "Delivery", late, hints=True)
            assert (await h.post(h.signer.notification(TOPIC, record))).status_code == 200
            # A hint naming a request of another recipient is not believed.
            wrong = Sent(three.id, three.to, "not-recorded-yet", 2, None)
            record = ses_record("identity", "Delivery", wrong, recipient="else@example.com")
            assert (await h.post(h.signer.notification(TOPIC, record))).status_code == 200
            # Nothing matches: stored without a request, acknowledged.
            record = ses_record("identity", "Delivery", NOBODY, hints=False)
            response = await h.post(h.signer.notification(TOPIC, record))
            assert response.json() == {
                "status": "stored",
                "results": 1,
                "matched": 0,
                "suppressed": 0,
            }
            got = [(r["request_id"], r["recipient"]) for r in result_rows(h)]
            assert got == [
                (two.id, "TWO@example.com"),
                (three.id, three.to),
                (None, "else@example.com"),
                (None, NOBODY.to),
            ]


def forgeries(signer: SnsSigner, intruder: SnsSigner) -> dict[str, tuple[dict[str, Any], str]]:
    """Messages that must each be refused, and the logged reason, all about one SES record."""
    record = ses_record("event", "Bounce", NOBODY)
    good = signer.notification(TOPIC, record, version=2)
    file_name = signer.file_name

    def with_cert(url: str) -> dict[str, Any]:
        return {**good, "SigningCertURL": url}

    tampered = json.loads(good["Message"])
    tampered["bounce"]["bounceType"] = "Transient"
    return {
        "tampered message": ({**good, "Message": json.dumps(tampered)}, "signature does not"),
        "wrong key": (
            {**intruder.notification(TOPIC, record), "SigningCertURL": signer.cert_url()},
            "signature does not match",
        ),
        "http cert URL": (
            with_cert(f"http://sns.us-east-1.amazonaws.com/{file_name}"),
            "not https",
        ),
        "S3-style host": (
            with_cert(f"https://sns.s3-ap-southeast-2.amazonaws.com/{file_name}"),
            "not an SNS endpoint",
        ),
        "look-alike host": (
            with_cert(f"https://sns.us-east-1.amazonaws.com.evil.example/{file_name}"),
            "not an SNS endpoint",
        ),
        "query string": (
            with_cert(f"https://sns.us-east-1.amazonaws.com/{file_name}?x=.pem"),
            "query",
        ),
        "userinfo": (
            with_cert(f"https://evil.example@sns.us-east-1.amazonaws.com/{file_name}"),
            "not an SNS endpoint",
        ),
        "extra path segment": (
            with_cert(f"https://sns.us-east-1.amazonaws.com/x/{file_name}"),
            "is not an SNS certificate",
        ),
        "unlisted topic": (
            signer.notification(TOPIC + "-other", record, version=2),
            "not in SNS_TOPIC_ARNS",
        ),
        "two-hour-old timestamp": (
            signer.notification(TOPIC, record, timestamp=datetime.now(UTC) - timedelta(hours=2)),
            "older than",
        ),
        "signature version 3": (
            signer.notification(TOPIC, record, version=3),
            "SignatureVersion '3' unsupported",
        ),
        "unknown Type": ({**good, "Type": "Notice"}, "unknown Type"),
        "no signature": ({k: v for k, v in good.items() if k != "Signature"}, "lacks Signature"),
    }


async def test_every_forgery_is_refused_and_stores_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    intruder = SnsSigner(tmp_path / "intruder", key=new_key())
    with trio.fail_after(30):
        async with feedback_service(tmp_path) as h:
            for name, (msg, reason) in forgeries(h.signer, intruder).items():
                caplog.clear()
                response = await h.post(msg)
                assert response.status_code == 403, name
                assert response.json() == {"error": "SNS message refused"}, name
                logged = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
                assert len(logged) == 1, name
                assert reason in logged[0], (name, logged)
            for body in (b"not json", b"[]", b'{"Type": "Notification"}'):
                assert (await h.post(body)).status_code == 403
            assert h.count("email_results") == 0
            assert h.count("sns_messages") == 0
            assert h.count("suppressions") == 0
            assert h.fetched == []
            # The genuine message still goes through afterwards.
            good = h.signer.notification(TOPIC, ses_record("event", "Bounce", NOBODY))
            assert (await h.post(good)).status_code == 200
            assert h.count("email_results") == 1


async def test_refusals_are_logged_with_their_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        async with feedback_service(tmp_path) as h:
            old = h.signer.notification(
                TOPIC, {"eventType": "Send"}, timestamp=datetime.now(UTC) - timedelta(hours=2)
            )
            assert (await h.post(old)).status_code == 403
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert "older than" in refusals[0]


async def test_without_topics_everything_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        async with feedback_service(tmp_path, SNS_TOPIC_ARNS="") as h:
            msg = h.signer.notification(TOPIC, ses_record("event", "Delivery", NOBODY))
            assert (await h.post(msg)).status_code == 403
            assert h.count("email_results") == 0
    assert any("SNS_TOPIC_ARNS" in r.getMessage() for r in caplog.records)


async def test_subscription_confirmation_visits_only_sns_urls(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with feedback_service(tmp_path) as h:
            for url in (
                "https://evil.example/?Action=ConfirmSubscription",
                "http://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
                "https://sns.us-east-1.amazonaws.com.evil.example/",
                "https://user@sns.us-east-1.amazonaws.com/",
            ):
                msg = h.signer.subscription_confirmation(TOPIC, version=2)
                response = await h.post(h.signer.sign({**msg, "SubscribeURL": url}))
                assert response.status_code == 403, url
            unlisted = h.signer.subscription_confirmation(TOPIC + "-other")
            assert (await h.post(unlisted)).status_code == 403
            assert h.fetched == []

            recorded: list[str] = []

            def confirm(url: str) -> bytes:
                recorded.append(url)
                return b"<ConfirmSubscriptionResponse/>"

            h.svc.sns_get = confirm
            msg = h.signer.subscription_confirmation(TOPIC)
            response = await h.post(msg)
            assert response.status_code == 200
            assert response.json() == {"status": "confirmed"}
            assert recorded == [msg["SubscribeURL"]]


async def test_unsubscribe_confirmation_never_visits_its_url(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with feedback_service(tmp_path) as h:
            genuine = h.signer.unsubscribe_confirmation(TOPIC)
            elsewhere = h.signer.sign(
                {
                    **h.signer.unsubscribe_confirmation(TOPIC, version=2),
                    "SubscribeURL": "https://evil.example/resubscribe",
                }
            )
            for msg in (genuine, elsewhere):
                response = await h.post(msg)
                assert response.status_code == 200
                assert response.json() == {"status": "unsubscribed"}
            assert h.fetched == []
            assert h.count("email_results") == 0


async def test_ses_topic_check_and_non_ses_messages_are_acknowledged(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with feedback_service(tmp_path) as h:
            check = h.signer.notification(
                TOPIC, "Successfully validated SNS topic for Amazon SES event publishing."
            )
            response = await h.post(check)
            assert (response.status_code, response.json()) == (200, {"status": "ok"})
            other = h.signer.notification(TOPIC, {"hello": "world"})
            response = await h.post(other)
            assert (response.status_code, response.json()) == (200, {"status": "ignored"})
            assert h.count("email_results") == 0


async def test_store_failure_answers_5xx_and_stores_nothing(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with feedback_service(tmp_path) as h:
            msg = h.signer.notification(TOPIC, ses_record("event", "Complaint", NOBODY))
            with closing(sqlite3.connect(h.db, timeout=10)) as conn:
                conn.execute(
                    "CREATE TRIGGER fail_results BEFORE INSERT ON email_results"
                    " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
                )
                conn.commit()
            response = await h.post(msg)
            assert response.status_code == 503
            assert "error" in response.json()
            assert h.count("sns_messages") == 0  # the dedupe row went with the rest
            assert h.count("suppressions") == 0
            with closing(sqlite3.connect(h.db, timeout=10)) as conn:
                conn.execute("DROP TRIGGER fail_results")
                conn.commit()
            # SNS retries the same message: now it is stored, once.
            response = await h.post(msg)
            assert response.status_code == 200
            assert response.json()["status"] == "stored"
            assert h.count("email_results") == 1
            assert h.count("suppressions") == 1


async def test_certificates_not_cached_are_fetched_once_through_the_injected_get(
    tmp_path: Path,
) -> None:
    fresh = SnsSigner(tmp_path / "elsewhere", key=new_key())  # not in the service's cache
    with trio.fail_after(30):
        async with feedback_service(tmp_path) as h:
            msg = fresh.notification(TOPIC, ses_record("event", "Delivery", NOBODY))
            # The certificate cannot be had now: 503, so SNS retries.
            assert (await h.post(msg)).status_code == 503
            assert h.fetched == [fresh.cert_url()]
            assert h.count("email_results") == 0
            served: list[str] = []

            def serve(url: str) -> bytes:
                served.append(url)
                return fresh.pem

            h.svc.sns_get = serve
            assert (await h.post(msg)).status_code == 200
            again = fresh.notification(TOPIC, ses_record("event", "Open", NOBODY))
            assert (await h.post(again)).status_code == 200
            assert served == [fresh.cert_url()]
            assert (h.svc.config.sns_cert_cache_dir / fresh.file_name).read_bytes() == fresh.pem


async def test_oversized_body_is_refused(tmp_path: Path) -> None:
    # Raw sockets: the server answers 413 before reading the body, and an HTTP
    # client left holding an unsent body warns about it when collected.
    with trio.fail_after(30):
        async with feedback_service(tmp_path) as h:
            big = encode({"Type": "Notification", "Message": "x" * 1_100_000})
            head = f"Content-Length: {len(big)}"
            assert await post_raw(h.svc.url, "/v1/events/results", head, [big]) == 413
            # No Content-Length: the body is counted as it arrives.
            chunks = [b"%x\r\n%s\r\n" % (100_000, b"x" * 100_000)] * 20 + [b"0\r\n\r\n"]
            head = "Transfer-Encoding: chunked"
            assert await post_raw(h.svc.url, "/v1/events/results", head, chunks) == 413
            assert h.count("email_results") == 0


async def test_processed_sns_ids_are_forgotten_after_a_week(tmp_path: Path) -> None:
    event = parse_ses_event(json.dumps(ses_record("event", "Delivery", NOBODY)))
    start = datetime(2024, 5, 1, tzinfo=UTC)
    with trio.fail_after(10):
        async with open_store(tmp_path / "app.db") as store:
            assert not (await store.record_feedback("sns-1", event, start)).duplicate
            assert (
                await store.record_feedback("sns-1", event, start + timedelta(days=6))
            ).duplicate
            later = start + SNS_DEDUPE_KEEP + timedelta(minutes=1)
            assert not (await store.record_feedback("sns-2", event, later)).duplicate
            remembered = await store._r.run(
                lambda conn: conn.execute("SELECT message_id FROM sns_messages").fetchall()
            )
            assert remembered == [("sns-2",)]


def complaint_from(sent: Sent, recipients: list[str]) -> dict[str, Any]:
    """An SES complaint about ``sent`` naming every one of ``recipients``."""
    record = ses_record("identity", "Complaint", sent)
    record["mail"]["destination"] = recipients
    record["complaint"]["complainedRecipients"] = [{"emailAddress": r} for r in recipients]
    return record


@pytest.mark.parametrize("count", [MAX_RECIPIENTS + 1, 2_000, 10_000])
async def test_a_record_over_the_recipient_cap_is_refused_while_health_answers(
    tmp_path: Path, count: int
) -> None:
    with trio.fail_after(60):
        async with feedback_service(tmp_path) as h:
            sent = (await h.send("news", ["ann@example.com"]))["ann@example.com"]
            recipients = [f"r{i}@example.com" for i in range(count)]
            msg = h.signer.notification(TOPIC, complaint_from(sent, recipients))
            answers: list[Any] = []
            health: list[int] = []

            async def post() -> None:
                answers.append(await h.post(msg))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(post)
                while not answers:
                    with trio.fail_after(2):  # the event loop is never held for long
                        health.append((await h.client.get("/health")).status_code)
            response = answers[0]
            assert response.status_code == 400
            assert response.json() == {
                "error": f"SES record names {count} recipients;"
                f" at most {MAX_RECIPIENTS} are accepted"
            }
            assert set(health) == {200}
            assert h.count("email_results") == 0
            assert h.count("suppressions") == 0
            assert h.count("sns_messages") == 0  # SNS may deliver it again: refused again


async def test_a_record_at_the_recipient_cap_is_stored_in_linear_time(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with feedback_service(tmp_path) as h:
            sent = (await h.send("news", ["ann@example.com"]))["ann@example.com"]
            recipients = [f"r{i}@example.com" for i in range(MAX_RECIPIENTS)]
            msg = h.signer.notification(TOPIC, complaint_from(sent, recipients))
            with trio.fail_after(5):
                response = await h.post(msg)
            assert response.status_code == 200, response.text
            assert response.json()["suppressed"] == MAX_RECIPIENTS
            assert (await h.client.get("/health")).status_code == 200
