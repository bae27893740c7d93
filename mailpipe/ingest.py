"""Validation of ``POST /v1/messages`` bodies: all or nothing.

:func:`parse_send_request` turns the raw body into :class:`NewMessage` values
or raises :class:`RequestInvalid` with the HTTP status and a message that
names the problem (which message, which field, which address).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailpipe.addresses import AddressValidator, InvalidAddress
from mailpipe.store import NewMessage
from mailpipe.timeutil import parse_rfc3339

MAX_TOPIC_ID = 255
MAX_SUBJECT = 998


class RequestInvalid(ValueError):
    """The request cannot be accepted; ``status`` is 400 or 413."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Bounds a request must respect."""

    max_recipients: int = 100_000


def parse_send_request(
    body: bytes, limits: Limits, addresses: AddressValidator | None = None
) -> list[NewMessage]:
    """Validate the whole body; raises :class:`RequestInvalid` on the first problem."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestInvalid(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RequestInvalid("body must be a JSON object with a 'messages' array")
    items = doc.get("messages")
    if not isinstance(items, list) or not items:
        raise RequestInvalid("'messages' must be a non-empty array")
    total = sum(
        len(m["emails"]) for m in items if isinstance(m, dict) and isinstance(m.get("emails"), list)
    )
    if total > limits.max_recipients:
        raise RequestInvalid(
            f"{total} recipients exceed MAX_RECIPIENTS_PER_REQUEST ({limits.max_recipients})",
            status=413,
        )
    validator = addresses or AddressValidator()
    return [_message(i, item, validator) for i, item in enumerate(items)]


def _message(i: int, item: Any, validator: AddressValidator) -> NewMessage:
    where = f"messages[{i}]"
    if not isinstance(item, dict):
        raise RequestInvalid(f"{where} must be an object")
    topic = item.get("topicId")
    if not isinstance(topic, str) or not topic.strip():
        raise RequestInvalid(f"{where}.topicId must be a non-empty string")
    if len(topic) > MAX_TOPIC_ID:
        raise RequestInvalid(f"{where}.topicId is longer than {MAX_TOPIC_ID} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in topic):
        raise RequestInvalid(f"{where}.topicId contains control characters")
    subject = _text(item, "subject", where)
    if "\r" in subject or "\n" in subject:
        raise RequestInvalid(f"{where}.subject must not contain CR or LF")
    if len(subject) > MAX_SUBJECT:
        raise RequestInvalid(f"{where}.subject is longer than {MAX_SUBJECT} characters")
    content = _text(item, "content", where)
    return NewMessage(
        topic_id=topic,
        subject=subject,
        content=content,
        emails=_emails(item.get("emails"), where, validator),
        scheduled_at=_scheduled(item.get("scheduledAt"), where),
    )


def _text(item: dict[str, Any], field: str, where: str) -> str:
    value = item.get(field)
    if not isinstance(value, str) or not value.strip():
        raise RequestInvalid(f"{where}.{field} must be a non-empty string")
    return value


def _emails(value: Any, where: str, validator: AddressValidator) -> list[str]:
    if not isinstance(value, list) or not value:
        raise RequestInvalid(f"{where}.emails must be a non-empty array of addresses")
    seen: dict[str, None] = {}
    for j, raw in enumerate(value):
        if not isinstance(raw, str):
            raise RequestInvalid(f"{where}.emails[{j}] must be a string")
        try:
            seen[validator.normalize(raw.strip())] = None
        except InvalidAddress as exc:
            raise RequestInvalid(f"{where}.emails[{j}]: {exc}") from None
    return list(seen)


def _scheduled(value: Any, where: str) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RequestInvalid(f"{where}.scheduledAt must be an RFC 3339 string")
    try:
        return parse_rfc3339(value)
    except ValueError:
        raise RequestInvalid(
            f"{where}.scheduledAt {value!r} is not an RFC 3339 timestamp"
        ) from None
