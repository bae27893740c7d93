"""SES feedback records of both mechanisms, modelled on the AWS documentation examples."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from snskit import SnsSigner, encode

from mailpipe.feedback.ses_events import (
    MAX_RECIPIENTS,
    FeedbackError,
    SesEvent,
    TooManyRecipients,
    parse_ses_event,
)
from mailpipe.feedback.sns import CertStore, SnsVerifier, parse_sns

SES_ID = "0100018f2b3c4d5e-6f7a8b9c-0d1e-4f2a-8b3c-4d5e6f7a8b9c-000000"

# An identity notification with "Include original email headers" on (AWS docs, bounce with DSN).
IDENTITY_BOUNCE = """{
  "notificationType": "Bounce",
  "bounce": {
    "bounceType": "Permanent",
    "reportingMTA": "dns; email.example.com",
    "bouncedRecipients": [
      {"emailAddress": "jane@example.com", "status": "5.1.1", "action": "failed",
       "diagnosticCode": "smtp; 550 5.1.1 <jane@example.com>... User"},
      {"emailAddress": "richard@example.com", "status": "5.1.1", "action": "failed",
       "diagnosticCode": "smtp; 550 5.1.1 <richard@example.com>... User"}
    ],
    "bounceSubType": "General",
    "timestamp": "2016-01-27T14:59:38.237Z",
    "feedbackId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000",
    "remoteMtaIp": "127.0.2.0"
  },
  "mail": {
    "timestamp": "2016-01-27T14:59:38.000Z",
    "source": "john@example.com",
    "sourceArn": "arn:aws:ses:us-east-1:888888888888:identity/example.com",
    "sourceIp": "127.0.3.0",
    "sendingAccountId": "123456789012",
    "callerIdentity": "IAM_user_or_role_name",
    "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
    "destination": ["jane@example.com", "mary@example.com", "richard@example.com"],
    "headersTruncated": false,
    "headers": [
      {"name": "From", "value": "\\"John Doe\\" <john@example.com>"},
      {"name": "To", "value": "\\"Jane Doe\\" <jane@example.com>, mary@example.com"},
      {"name": "Message-ID", "value": "custom-message-ID"},
      {"name": "Subject", "value": "Hello"},
      {"name": "Content-Type", "value": "text/plain; charset=\\"UTF-8\\""},
      {"name": "X-Request-ID", "value": "4242"},
      {"name": "Date", "value": "Wed, 27 Jan 2016 14:05:45 +0000"},
      {"name": "MIME-Version", "value": "1.0"}
    ],
    "commonHeaders": {
      "from": ["John Doe <john@example.com>"],
      "date": "Wed, 27 Jan 2016 14:05:45 +0000",
      "to": ["Jane Doe <jane@example.com>, Mary Doe <mary@example.com>"],
      "messageId": "custom-message-ID",
      "subject": "Hello"
    }
  }
}"""

# Identity notifications without headers: neither headers nor tags are present.
MAIL_BARE: dict[str, Any] = {
    "timestamp": "2024-05-01T11:58:00.000Z",
    "source": "news@example.com",
    "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/example.com",
    "sourceIp": "192.0.2.10",
    "sendingAccountId": "123456789012",
    "callerIdentity": "mailpipe",
    "messageId": SES_ID,
    "destination": ["recipient@example.com"],
}
# Event publishing: headers (one carrying our request id) and tags (ours and SES's own).
MAIL_FULL: dict[str, Any] = {
    **MAIL_BARE,
    "headersTruncated": False,
    "headers": [
        {"name": "From", "value": "news@example.com"},
        {"name": "To", "value": "recipient@example.com"},
        {"name": "Subject", "value": "Monthly news"},
        {"name": "MIME-Version", "value": "1.0"},
        {"name": "Content-Type", "value": 'multipart/alternative; boundary="XBoundary"'},
        {"name": "X-Request-ID", "value": "77"},
    ],
    "commonHeaders": {
        "from": ["news@example.com"],
        "to": ["recipient@example.com"],
        "messageId": SES_ID,
        "subject": "Monthly news",
    },
    "tags": {
        "ses:configuration-set": ["mailpipe"],
        "ses:source-ip": ["192.0.2.10"],
        "ses:from-domain": ["example.com"],
        "ses:caller-identity": ["mailpipe"],
        "ses:operation": ["SendEmail"],
        "request_id": ["77"],
    },
}

BOUNCE = {
    "bounceType": "Transient",
    "bounceSubType": "MailboxFull",
    "bouncedRecipients": [
        {"emailAddress": "recipient@example.com", "action": "failed", "status": "5.2.2",
         "diagnosticCode": "smtp; 552 5.2.2 Mailbox full"}
    ],
    "timestamp": "2024-05-01T11:59:02.669Z",
    "feedbackId": "0100018f-61b59c11-9236-11e6-8f96-7be8aexample-000000",
    "reportingMTA": "dsn; a8-1.smtp-out.amazonses.com",
}  # fmt: skip
COMPLAINT = {
    "complainedRecipients": [{"emailAddress": "recipient@example.com"}],
    "timestamp": "2024-05-01T12:01:02.669Z",
    "feedbackId": "0100018f-61b59c11-9236-11e6-8f96-7be8aexample-000001",
    "complaintSubType": None,
    "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
    "complaintFeedbackType": "abuse",
    "arrivalDate": "2024-05-01T12:01:00.000Z",
}
DELIVERY = {
    "timestamp": "2024-05-01T11:58:04.133Z",
    "processingTimeMillis": 2133,
    "recipients": ["recipient@example.com"],
    "smtpResponse": "250 2.6.0 Message received",
    "remoteMtaIp": "198.51.100.7",
    "reportingMTA": "a8-1.smtp-out.amazonses.com",
}
PAYLOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "Send": ("send", {}),
    "Reject": ("reject", {"reason": "Bad content"}),
    "Bounce": ("bounce", BOUNCE),
    "Complaint": ("complaint", COMPLAINT),
    "Delivery": ("delivery", DELIVERY),
    "Open": ("open", {"ipAddress": "192.0.2.1", "timestamp": "2024-05-01T12:10:19.652Z",
                      "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)"}),
    "Click": ("click", {"ipAddress": "192.0.2.1", "timestamp": "2024-05-01T12:11:25.570Z",
                        "link": "https://example.com/offer", "linkTags": {"campaign": ["may"]},
                        "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"}),
    "Rendering Failure": ("failure", {"templateName": "MyTemplate", "errorMessage":
                                      "Attribute 'name' is not present in the rendering data."}),
    "DeliveryDelay": ("deliveryDelay", {
        "timestamp": "2024-05-01T12:25:40.095Z", "delayType": "TransientCommunicationFailure",
        "expirationTime": "2024-05-01T23:58:00.000Z", "reportingMTA": "a8-1.smtp-out.amazonses.com",
        "delayedRecipients": [{"emailAddress": "recipient@example.com", "status": "4.4.1",
                               "diagnosticCode": "smtp; 421 4.4.1 Unable to connect"}]}),
    "Subscription": ("subscription", {
        "contactList": "news", "timestamp": "2024-05-01T12:30:17.910Z",
        "source": "UnsubscribeHeader",
        "newTopicPreferences": {"unsubscribeAll": True, "topicSubscriptionStatus": [
            {"topicName": "monthly", "subscriptionStatus": "OptOut"}]},
        "oldTopicPreferences": {"unsubscribeAll": False, "topicSubscriptionStatus": [
            {"topicName": "monthly", "subscriptionStatus": "OptIn"}]}}),
}  # fmt: skip
EVENT_TIME = {
    "Send": MAIL_BARE["timestamp"],
    "Reject": MAIL_BARE["timestamp"],
    "Rendering Failure": MAIL_BARE["timestamp"],
}


def published(event_type: str, mail: dict[str, Any] = MAIL_FULL, **extra: Any) -> str:
    """A configuration-set event record as SES would publish it."""
    key, payload = PAYLOADS[event_type]
    return json.dumps({"eventType": event_type, "mail": mail, key: payload, **extra})


def identity(kind: str, mail: dict[str, Any] = MAIL_BARE) -> str:
    """An identity notification (no tags; headers only if switched on)."""
    key, payload = PAYLOADS[kind]
    return json.dumps({"notificationType": kind, key: payload, "mail": mail})


@pytest.mark.parametrize("event_type", PAYLOADS)
@pytest.mark.parametrize("mail", [MAIL_FULL, MAIL_BARE], ids=["headers", "bare"])
def test_event_publishing_record(event_type: str, mail: dict[str, Any]) -> None:
    text = published(event_type, mail)
    event = parse_ses_event(text)
    assert event.event_type == event_type
    assert event.ses_message_id == SES_ID
    assert event.recipients == ("recipient@example.com",)
    assert event.request_id_hint == (77 if mail is MAIL_FULL else None)
    assert event.complaint == (event_type == "Complaint")
    assert event.timestamp == EVENT_TIME.get(event_type, PAYLOADS[event_type][1].get("timestamp"))
    assert event.raw == text
    if event_type == "Bounce":
        assert (event.bounce_type, event.bounce_subtype) == ("Transient", "MailboxFull")
        assert not event.permanent_bounce
    else:
        assert (event.bounce_type, event.bounce_subtype, event.permanent_bounce) == (
            None,
            None,
            False,
        )


@pytest.mark.parametrize("kind", ["Bounce", "Complaint", "Delivery"])
@pytest.mark.parametrize("mail", [MAIL_FULL, MAIL_BARE], ids=["headers", "bare"])
def test_identity_notification(kind: str, mail: dict[str, Any]) -> None:
    event = parse_ses_event(identity(kind, {k: v for k, v in mail.items() if k != "tags"}))
    assert (event.event_type, event.ses_message_id) == (kind, SES_ID)
    assert event.recipients == ("recipient@example.com",)
    assert event.request_id_hint == (77 if mail is MAIL_FULL else None)
    assert event.timestamp == PAYLOADS[kind][1]["timestamp"]


def test_identity_bounce_from_docs_lists_only_bounced_recipients() -> None:
    event = parse_ses_event(IDENTITY_BOUNCE)
    assert event == SesEvent(
        event_type="Bounce",
        ses_message_id="00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
        recipients=("jane@example.com", "richard@example.com"),
        request_id_hint=4242,
        bounce_type="Permanent",
        bounce_subtype="General",
        permanent_bounce=True,
        complaint=False,
        timestamp="2016-01-27T14:59:38.237Z",
        raw=IDENTITY_BOUNCE,
    )


def test_multiple_recipients() -> None:
    mail = {**MAIL_FULL, "destination": ["a@example.com", "b@example.com", "c@example.org"]}
    delivered = {**DELIVERY, "recipients": ["a@example.com", "b@example.com"]}
    text = json.dumps({"eventType": "Delivery", "mail": mail, "delivery": delivered})
    assert parse_ses_event(text).recipients == ("a@example.com", "b@example.com")
    assert parse_ses_event(published("Open", mail)).recipients == tuple(mail["destination"])
    complained = {"eventType": "Complaint", "mail": mail, "complaint": {
        **COMPLAINT, "complainedRecipients": [{"emailAddress": "a@example.com"},
                                              {"emailAddress": "b@example.com"}]}}  # fmt: skip
    assert parse_ses_event(json.dumps(complained)).recipients == ("a@example.com", "b@example.com")


def test_unknown_event_type_is_kept() -> None:
    text = json.dumps({"eventType": "Dismissal", "mail": MAIL_FULL,
                       "dismissal": {"timestamp": "2024-05-02T00:00:00.000Z"}})  # fmt: skip
    event = parse_ses_event(text)
    assert (event.event_type, event.ses_message_id, event.request_id_hint) == (
        "Dismissal",
        SES_ID,
        77,
    )
    assert event.timestamp == "2024-05-02T00:00:00.000Z"
    assert event.raw == text


def test_setup_notification_is_kept_as_unknown() -> None:
    setup = "You have successfully subscribed your Amazon SNS topic."
    text = json.dumps({"notificationType": "AmazonSnsSubscriptionSucceeded", "message": setup})
    event = parse_ses_event(text)
    assert (event.event_type, event.ses_message_id, event.recipients) == (
        "AmazonSnsSubscriptionSucceeded",
        None,
        (),
    )


@pytest.mark.parametrize(
    ("headers", "tags", "expected"),
    [
        ([{"name": "x-request-id", "value": " 12 "}], {"request_id": ["99"]}, 12),
        ([{"name": "X-Request-ID", "value": "abc"}], {"request_id": ["99"]}, 99),
        ([], {"req_id": ["5"]}, 5),
        ([], {"request_id": ["-5"], "req_id": ["6"]}, 6),
        ([], {"request_id": ["1" * 30]}, None),
        ([{"name": "X-Other", "value": "1"}], {"ses:operation": ["SendEmail"]}, None),
        ("not a list", "not an object", None),
    ],
)
def test_request_id_hint(headers: Any, tags: Any, expected: int | None) -> None:
    mail = {**MAIL_BARE, "headers": headers, "tags": tags}
    assert parse_ses_event(published("Send", mail)).request_id_hint == expected


def test_truncated_headers_fall_back_to_tag() -> None:
    mail = copy.deepcopy(MAIL_FULL)
    mail["headersTruncated"] = True
    mail["headers"] = mail["headers"][:3]
    assert parse_ses_event(published("Bounce", mail)).request_id_hint == 77


def test_permanent_bounce_flag() -> None:
    text = published("Bounce").replace('"Transient"', '"Permanent"')
    text = text.replace('"MailboxFull"', '"OnAccountSuppressionList"')
    event = parse_ses_event(text)
    assert event.permanent_bounce
    assert (event.bounce_type, event.bounce_subtype) == ("Permanent", "OnAccountSuppressionList")


@pytest.mark.parametrize(
    "text",
    [
        "Successfully validated SNS topic for Amazon SES event publishing.",
        "[]",
        '"Bounce"',
        "{}",
        '{"eventType": 3, "mail": {}}',
        '{"notificationType": "", "mail": {}}',
        '{"mail": {"messageId": "x"}}',
    ],
)
def test_not_an_ses_record(text: str) -> None:
    with pytest.raises(FeedbackError):
        parse_ses_event(text)


def test_through_a_verified_sns_envelope(tmp_path: Path) -> None:
    topic = "arn:aws:sns:eu-west-1:123456789012:ses-events"
    signer = SnsSigner(tmp_path)
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    record = json.loads(published("Complaint"))
    body = encode(
        signer.notification(topic, record, version=2, timestamp=now - timedelta(seconds=3))
    )
    msg = parse_sns(body)
    SnsVerifier(frozenset({topic}), CertStore(tmp_path, None), now=lambda: now).verify(msg)
    event = parse_ses_event(msg["Message"])
    assert (event.event_type, event.complaint, event.request_id_hint) == ("Complaint", True, 77)
    assert json.loads(event.raw) == record


@pytest.mark.parametrize(("payload", "listed"), [
    ("bounce", "bouncedRecipients"), ("complaint", "complainedRecipients"),
    ("delivery", "recipients"), ("deliveryDelay", "delayedRecipients"), ("open", None),
])
def test_recipients_are_capped_in_every_list(payload: str, listed: str | None) -> None:
    kind = {"bounce": "Bounce", "complaint": "Complaint", "delivery": "Delivery",
            "deliveryDelay": "DeliveryDelay", "open": "Open"}[payload]

    def record(n: int) -> str:
        people = [f"r{i}@example.com" for i in range(n)]
        body: dict[str, Any] = {listed: [{"emailAddress": p} for p in people]} if listed else {}
        return json.dumps({"eventType": kind, "mail": {"destination": people}, payload: body})

    assert len(parse_ses_event(record(MAX_RECIPIENTS)).recipients) == MAX_RECIPIENTS
    with pytest.raises(TooManyRecipients, match=f"at most {MAX_RECIPIENTS}"):
        parse_ses_event(record(MAX_RECIPIENTS + 1))
