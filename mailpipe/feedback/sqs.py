"""SQS message bodies as SES records, pure: what the queue delivered and how to deduplicate it.

Three shapes reach a queue:

- an SNS notification (an SNS subscription without raw delivery): the SNS
  envelope, verified by the caller with the same :class:`SnsVerifier` as over
  HTTP; deduplicated by its SNS ``MessageId`` (so one also delivered over HTTP
  counts once);
- a raw SES record (SNS raw message delivery) and an EventBridge event (the
  SES record is its ``detail``): accepted only when ``SQS_RAW_MESSAGES=true``,
  because the queue's access policy is then the only trust; deduplicated by
  the SQS ``MessageId`` (stable across redeliveries) or the EventBridge ``id``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mailpipe.errors import FeedbackError
from mailpipe.feedback.sns import SnsMessage, parse_sns


@dataclass(frozen=True)
class QueuedRecord:
    """One SES record from an SQS body: its text, its dedup id, and the SNS envelope
    that must be verified first (None for raw and EventBridge bodies)."""

    dedup_id: str
    text: str
    sns: SnsMessage | None


def read_body(body: str, sqs_message_id: str, *, raw_allowed: bool) -> QueuedRecord:
    """The record an SQS body carries; :class:`FeedbackError` if it is none of the
    three shapes, or is raw while raw messages are not allowed."""
    try:
        doc: Any = json.loads(body)
    except ValueError as exc:
        raise FeedbackError(f"SQS body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FeedbackError("SQS body is not a JSON object")
    if "Signature" in doc or "SignatureVersion" in doc or doc.get("Type") == "Notification":
        msg = parse_sns(body.encode("utf-8"))
        return QueuedRecord(msg["MessageId"], msg.get("Message", ""), msg)
    if not raw_allowed:
        raise FeedbackError("unsigned SQS body refused (set SQS_RAW_MESSAGES=true to accept"
                            " raw and EventBridge messages)")
    if "detail-type" in doc and isinstance(doc.get("detail"), dict):
        event_id = doc.get("id")
        if not isinstance(event_id, str) or not event_id:
            raise FeedbackError("EventBridge event without an id")
        return QueuedRecord(f"eventbridge:{event_id}", json.dumps(doc["detail"]), None)
    return QueuedRecord(f"sqs:{sqs_message_id}", body, None)
