"""SES feedback records (the JSON inside an SNS ``Message``) as ``SesEvent`` values.

Both SES mechanisms are read: identity notifications (``notificationType``:
Bounce, Complaint, Delivery) and configuration-set event publishing
(``eventType``: Send, Reject, Bounce, Complaint, Delivery, Open, Click,
Rendering Failure, DeliveryDelay, Subscription). A type not listed here is kept
as it came, never dropped. Unexpected shapes inside a record are read as absent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from mailpipe.errors import FeedbackError, TooManyRecipients

BOUNCE: Final = "Bounce"
COMPLAINT: Final = "Complaint"
DELIVERY: Final = "Delivery"
DELIVERY_DELAY: Final = "DeliveryDelay"
KNOWN_EVENT_TYPES: Final = frozenset(
    {
        "Send", "Reject", BOUNCE, COMPLAINT, DELIVERY, "Open", "Click",
        "Rendering Failure", DELIVERY_DELAY, "Subscription",
    }
)  # fmt: skip

REQUEST_ID_HEADER: Final = "X-Request-ID"
REQUEST_ID_TAGS: Final = ("request_id", "req_id")

# The payload key of each type, where a timestamp or the affected recipients live.
_PAYLOAD_KEY: Final = {
    "Send": "send",
    "Reject": "reject",
    BOUNCE: "bounce",
    COMPLAINT: "complaint",
    DELIVERY: "delivery",
    "Open": "open",
    "Click": "click",
    "Rendering Failure": "failure",
    DELIVERY_DELAY: "deliveryDelay",
    "Subscription": "subscription",
}
_RECIPIENT_LIST: Final = {
    BOUNCE: "bouncedRecipients",
    COMPLAINT: "complainedRecipients",
    DELIVERY: "recipients",
    DELIVERY_DELAY: "delayedRecipients",
}
_REQUEST_ID: Final = re.compile(r"[0-9]{1,18}")
MAX_RECIPIENTS: Final = 50
"""Recipients one SES record may name (SES names at most 50, one per destination)."""


@dataclass(frozen=True, slots=True)
class SesEvent:
    """One SES feedback record, reduced to what mailpipe acts on; ``raw`` keeps all of it.

    ``event_type`` is spelt as SES spells it (``Bounce``, ``Rendering Failure``, ...).
    ``recipients`` are the affected ones (bounced, complained, delivered, delayed),
    else the message's destination. ``request_id_hint`` comes from the
    ``X-Request-ID`` header or the ``request_id``/``req_id`` tag; it is a hint to
    check against ``ses_message_id``, not a proof.
    """

    event_type: str
    ses_message_id: str | None
    recipients: tuple[str, ...]
    request_id_hint: int | None
    bounce_type: str | None
    bounce_subtype: str | None
    permanent_bounce: bool
    complaint: bool
    timestamp: str | None
    raw: str


def parse_ses_event(text: str) -> SesEvent:
    """Read an SES feedback record (either mechanism); ``FeedbackError`` if it is none.

    A record is a JSON object with a string ``eventType`` or ``notificationType``.
    ``TooManyRecipients`` if it names more than :data:`MAX_RECIPIENTS`. Linear in
    the length of ``text``.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise FeedbackError("SES record is not JSON") from None
    if not isinstance(data, dict):
        raise FeedbackError("SES record is not a JSON object")
    event_type = data.get("eventType", data.get("notificationType"))
    if not isinstance(event_type, str) or not event_type:
        raise FeedbackError("SES record has no eventType or notificationType")
    mail = _obj(data.get("mail"))
    key = _PAYLOAD_KEY.get(event_type)
    payload = _obj(data.get(key)) if key else _payload_guess(data)
    is_bounce = event_type == BOUNCE
    bounce_type = _str(payload.get("bounceType")) if is_bounce else None
    return SesEvent(
        event_type=event_type,
        ses_message_id=_str(mail.get("messageId")),
        recipients=_recipients(event_type, payload, mail),
        request_id_hint=_request_id(mail),
        bounce_type=bounce_type,
        bounce_subtype=_str(payload.get("bounceSubType")) if is_bounce else None,
        permanent_bounce=bounce_type == "Permanent",
        complaint=event_type == COMPLAINT,
        timestamp=_str(payload.get("timestamp")) or _str(mail.get("timestamp")),
        raw=text,
    )


def _payload_guess(data: dict[str, Any]) -> dict[str, Any]:
    """For an unknown type, the first top-level object other than ``mail``, if any."""
    for key, value in data.items():
        if key != "mail" and isinstance(value, dict):
            return value
    return {}


def _recipients(event_type: str, payload: dict[str, Any], mail: dict[str, Any]) -> tuple[str, ...]:
    listed = payload.get(_RECIPIENT_LIST.get(event_type, ""))
    if isinstance(listed, list):
        _check_count(listed)
        found = _strings(r.get("emailAddress") if isinstance(r, dict) else r for r in listed)
        if found:
            return found
    destination = mail.get("destination")
    if not isinstance(destination, list):
        return ()
    _check_count(destination)
    return _strings(destination)


def _check_count(recipients: list[Any]) -> None:
    if len(recipients) > MAX_RECIPIENTS:
        raise TooManyRecipients(len(recipients), MAX_RECIPIENTS)


def _request_id(mail: dict[str, Any]) -> int | None:
    headers = mail.get("headers")
    if isinstance(headers, list):
        for header in headers:
            if not isinstance(header, dict):
                continue
            name = _str(header.get("name"))
            if name is not None and name.lower() == REQUEST_ID_HEADER.lower():
                found = _int(header.get("value"))
                if found is not None:
                    return found
    tags = _obj(mail.get("tags"))
    for tag in REQUEST_ID_TAGS:
        values = tags.get(tag)
        if isinstance(values, list):
            for value in values:
                found = _int(value)
                if found is not None:
                    return found
    return None


def _int(value: object) -> int | None:
    if isinstance(value, str) and _REQUEST_ID.fullmatch(value.strip()):
        return int(value.strip())
    return None


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _strings(values: Iterable[object]) -> tuple[str, ...]:
    return tuple(v for v in values if isinstance(v, str) and v)
