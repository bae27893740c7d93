"""Validation of ``POST /v1/messages`` bodies: all or nothing.

:func:`parse_send_request` turns the raw body into :class:`NewMessage` values
or raises :class:`RequestInvalid` with the HTTP status and a message that
names the problem (which message, which field, which address).

A message lists its recipients as ``emails`` (addresses), ``recipients``
(``{"email", "data"}`` objects, ``data`` a JSON object of template variables),
or both. An address given twice counts once when both occurrences carry the
same data (an ``emails`` entry carries none); given twice with different data
it is a 400 naming both places. Subject, content and text are templates: each
is compiled, and rendered for every recipient whose data could make it fail,
before anything is stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailpipe.addresses import AddressValidator, InvalidAddress
from mailpipe.content.templates import TemplateError, check_recipients, compile_message
from mailpipe.model import NewMessage
from mailpipe.timeutil import parse_rfc3339

MAX_TOPIC_ID = 255
MAX_SUBJECT = 998
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


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
        text = body.decode()  # RFC 8259: JSON between systems is UTF-8
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestInvalid(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise RequestInvalid("malformed JSON: nested too deeply") from None
    if ("\\ud" in text or "\\uD" in text) and _has_lone_surrogate(doc):
        raise RequestInvalid("malformed JSON: a \\u escape is a lone UTF-16 surrogate")
    if not isinstance(doc, dict):
        raise RequestInvalid("body must be a JSON object with a 'messages' array")
    items = doc.get("messages")
    if not isinstance(items, list) or not items:
        raise RequestInvalid("'messages' must be a non-empty array")
    total = sum(
        len(m[key])
        for m in items
        if isinstance(m, dict)
        for key in ("emails", "recipients")
        if isinstance(m.get(key), list)
    )
    if total > limits.max_recipients:
        raise RequestInvalid(
            f"{total} recipients exceed MAX_RECIPIENTS_PER_REQUEST ({limits.max_recipients})",
            status=413,
        )
    validator = addresses or AddressValidator()
    return [_message(i, item, validator) for i, item in enumerate(items)]


def _has_lone_surrogate(doc: Any) -> bool:
    """Whether a string in ``doc`` holds half a surrogate pair (not text; SQLite refuses it)."""
    try:
        json.dumps(doc, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


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
    text = None if item.get("text") is None else _text(item, "text", where)
    emails, data = _recipients(item, where, validator)
    _check_templates(subject, content, text, emails, data, where)
    return NewMessage(
        topic_id=topic,
        subject=subject,
        content=content,
        emails=emails,
        scheduled_at=_scheduled(item.get("scheduledAt"), where),
        text=text,
        track_opens=_flag(item, "trackOpens", where),
        track_clicks=_flag(item, "trackClicks", where),
        data=None if data is None else [None if d is None else _json(d) for d in data],
    )


def _text(item: dict[str, Any], field: str, where: str) -> str:
    value = item.get(field)
    if not isinstance(value, str) or not value.strip():
        raise RequestInvalid(f"{where}.{field} must be a non-empty string")
    return value


def _flag(item: dict[str, Any], field: str, where: str) -> bool:
    value = item.get(field, True)
    if not isinstance(value, bool):
        raise RequestInvalid(f"{where}.{field} must be true or false")
    return value


def _recipients(
    item: dict[str, Any], where: str, validator: AddressValidator
) -> tuple[list[str], list[dict[str, Any] | None] | None]:
    """The distinct addresses, and each one's data (None without any ``recipients``)."""
    plain, given = item.get("emails"), item.get("recipients")
    if given is None:
        if plain is None:
            raise RequestInvalid(f"{where} needs a non-empty 'emails' or 'recipients' array")
        return _emails(plain, where, validator), None
    if not isinstance(given, list) or not given:
        raise RequestInvalid(f"{where}.recipients must be a non-empty array")
    emails = [] if plain is None or plain == [] else _emails(plain, where, validator)
    found: dict[str, tuple[str, dict[str, Any] | None]] = {
        e: (f"{where}.emails", None) for e in emails
    }
    for j, entry in enumerate(given):
        at = f"{where}.recipients[{j}]"
        address, data = _recipient(entry, at, validator)
        if address in found:
            first, known = found[address]
            if known != data:
                raise RequestInvalid(f"{at}: {address} is also in {first} with different data")
            continue
        found[address] = (at, data)
    return list(found), [data for _, data in found.values()]


def _recipient(
    entry: Any, at: str, validator: AddressValidator
) -> tuple[str, dict[str, Any] | None]:
    if not isinstance(entry, dict) or not isinstance(entry.get("email"), str):
        raise RequestInvalid(f"{at} must be an object with an 'email' string")
    try:
        address = validator.normalize(entry["email"].strip())
    except InvalidAddress as exc:
        raise RequestInvalid(f"{at}.email: {exc}") from None
    data = entry.get("data")
    if data is not None and not isinstance(data, dict):
        raise RequestInvalid(f"{at}.data must be an object")
    return address, data or None


def _check_templates(
    subject: str,
    content: str,
    text: str | None,
    emails: list[str],
    data: list[dict[str, Any] | None] | None,
    where: str,
) -> None:
    """Compile the templates and render them where a recipient's data could make them fail."""
    try:
        compiled = compile_message(subject, content, text)
        if data is None or not compiled.variables:
            # Every recipient renders alike: one of them settles it.
            check_recipients(compiled, [(emails[0], {})])
        else:
            check_recipients(compiled, [(e, d or {}) for e, d in zip(emails, data, strict=True)])
    except TemplateError as exc:
        raise RequestInvalid(f"{where}: {exc}") from None


def _json(data: dict[str, Any]) -> str:
    return _ENCODER.encode(data)


def _emails(value: Any, where: str, validator: AddressValidator) -> list[str]:
    if not isinstance(value, list) or not value:
        raise RequestInvalid(f"{where}.emails must be a non-empty array of addresses")
    fast = validator.normalize_all(value)
    if fast is not None:
        return list(dict.fromkeys(fast))
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
