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

import difflib
import json
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from mailpipe.addresses import AddressValidator, address_key, unique_addresses
from mailpipe.content.templates import (
    MAX_SUBJECT,
    Deadline,
    TemplateError,
    check_recipients,
    compile_message,
)
from mailpipe.errors import InvalidAddress, RequestInvalid, RequestTooLarge
from mailpipe.model import NewMessage
from mailpipe.timeutil import parse_rfc3339

MAX_TOPIC_ID = 255
VALIDATION_TIME_S: Final = 5.0
"""Wall-clock seconds the template checks of one request may take, all recipients
together, plus ``VALIDATION_TIME_PER_RECIPIENT_S`` for each recipient."""
VALIDATION_TIME_PER_RECIPIENT_S: Final = 50e-6
"""A template rendered for each of 100,000 recipients checks in 3.3 s (33 µs each,
2 cores shared): such a request gets 10 s, a bomb of one recipient 5 s."""
BODY_FIELDS: Final = frozenset({"messages"})
MESSAGE_FIELDS: Final = frozenset(
    {"topicId", "emails", "recipients", "subject", "content", "text", "scheduledAt",
     "trackOpens", "trackClicks"}
)  # fmt: skip
RECIPIENT_FIELDS: Final = frozenset({"email", "data"})
TOPIC_RULE: Final = (
    "must be addressable as /v1/topics/{topicId}: not '.' or '..', and without "
    "'/', '\\', '?', '#', '%' or control characters"
)
_TOPIC_REFUSED = re.compile(r"[/\\?#%\x00-\x1f\x7f-\x9f]")
_SUBJECT_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Limits:
    """Bounds a request must respect."""

    max_recipients: int = 100_000


def parse_send_request(
    body: bytes,
    limits: Limits,
    addresses: AddressValidator | None = None,
    *,
    cancelled: threading.Event | None = None,
    links: Callable[[str], str] | None = None,
) -> list[NewMessage]:
    """Validate the whole body; raises :class:`RequestInvalid` on the first problem.

    The template checks of all messages together stop after ``VALIDATION_TIME_S``
    (and a little more per recipient), or as soon as ``cancelled`` is set (the
    client left), with a 400. ``links``
    gives the unsubscribe URL templates are checked with (see ``probe_links``).
    """
    doc = _load(body)
    if not isinstance(doc, dict):
        raise RequestInvalid("body must be a JSON object with a 'messages' array")
    _known_fields(doc, BODY_FIELDS, "body")
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
        raise RequestTooLarge(
            f"{total} recipients exceed MAX_RECIPIENTS_PER_REQUEST ({limits.max_recipients})"
        )
    validator = addresses or AddressValidator()
    seconds = VALIDATION_TIME_S + total * VALIDATION_TIME_PER_RECIPIENT_S
    check = _TemplateCheck(Deadline(round(seconds, 1), cancelled), links)
    return [_message(i, item, validator, check) for i, item in enumerate(items)]


def _load(body: bytes) -> Any:
    """The JSON document of ``body``: UTF-8 text (RFC 8259), no lone surrogates."""
    try:
        text = body.decode()  # RFC 8259: JSON between systems is UTF-8
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestInvalid(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise RequestInvalid("malformed JSON: nested too deeply") from None
    except ValueError:  # int("9" * 5000): Python's bound on integer conversion
        raise RequestInvalid(
            f"malformed JSON: a number has more than {sys.get_int_max_str_digits()} digits"
        ) from None
    if ("\\ud" in text or "\\uD" in text) and _has_lone_surrogate(doc):
        raise RequestInvalid("malformed JSON: a \\u escape is a lone UTF-16 surrogate")
    return doc


def _known_fields(obj: dict[str, Any], known: frozenset[str], where: str) -> None:
    """Refuse a field not in ``known``, naming it (and the field it may be a typo of)."""
    if known.issuperset(obj):
        return
    name = next(name for name in obj if name not in known)
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise RequestInvalid(
        f"{where}: unknown field {name!r}{hint}; known: {', '.join(sorted(known))}"
    )


@dataclass(frozen=True, slots=True)
class _TemplateCheck:
    """What every message's template check of one request shares."""

    deadline: Deadline
    links: Callable[[str], str] | None


def _has_lone_surrogate(doc: Any) -> bool:
    """Whether a string in ``doc`` holds half a surrogate pair (not text; SQLite refuses it)."""
    try:
        json.dumps(doc, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def _message(i: int, item: Any, validator: AddressValidator, check: _TemplateCheck) -> NewMessage:
    where = f"messages[{i}]"
    if not isinstance(item, dict):
        raise RequestInvalid(f"{where} must be an object")
    _known_fields(item, MESSAGE_FIELDS, where)
    topic = _topic(item.get("topicId"), where)
    subject = _subject(item, where)
    content = _text(item, "content", where)
    text = None if item.get("text") is None else _text(item, "text", where)
    emails, data = _recipients(item, where, validator)
    _check_templates(subject, content, text, emails, data, where, check)
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


def _topic(topic: Any, where: str) -> str:
    """A topic id that ``GET`` and ``DELETE /v1/topics/{topicId}`` can reach."""
    if not isinstance(topic, str) or not topic.strip():
        raise RequestInvalid(f"{where}.topicId must be a non-empty string")
    if len(topic) > MAX_TOPIC_ID:
        raise RequestInvalid(f"{where}.topicId is longer than {MAX_TOPIC_ID} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in topic):
        raise RequestInvalid(f"{where}.topicId contains control characters")
    if topic in {".", ".."} or _TOPIC_REFUSED.search(topic):
        raise RequestInvalid(f"{where}.topicId {topic!r} {TOPIC_RULE}")
    return topic


def _subject(item: dict[str, Any], where: str) -> str:
    """The subject template: one line, no control characters, at most ``MAX_SUBJECT``."""
    subject = _text(item, "subject", where)
    if "\r" in subject or "\n" in subject:
        raise RequestInvalid(f"{where}.subject must not contain CR or LF")
    if _SUBJECT_CONTROL.search(subject):
        raise RequestInvalid(f"{where}.subject must not contain control characters")
    if len(subject) > MAX_SUBJECT:
        raise RequestInvalid(f"{where}.subject is longer than {MAX_SUBJECT} characters")
    return subject


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
    # By address_key: one recipient per address however it is written; the
    # first spelling is the one stored and sent.
    found: dict[str, tuple[str, str, dict[str, Any] | None]] = {
        address_key(e): (e, f"{where}.emails", None) for e in emails
    }
    for j, entry in enumerate(given):
        at = f"{where}.recipients[{j}]"
        address, data = _recipient(entry, at, validator)
        key = address_key(address)
        if key in found:
            _, first, known = found[key]
            if known != data:
                raise RequestInvalid(f"{at}: {address} is also in {first} with different data")
            continue
        found[key] = (address, at, data)
    return [a for a, _, _ in found.values()], [data for _, _, data in found.values()]


def _recipient(
    entry: Any, at: str, validator: AddressValidator
) -> tuple[str, dict[str, Any] | None]:
    if not isinstance(entry, dict) or not isinstance(entry.get("email"), str):
        raise RequestInvalid(f"{at} must be an object with an 'email' string")
    _known_fields(entry, RECIPIENT_FIELDS, at)
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
    check: _TemplateCheck,
) -> None:
    """Compile the templates and render them where a recipient's data could make them fail."""
    try:
        compiled = compile_message(subject, content, text)
        if data is None or not compiled.variables:
            # Every recipient renders alike: one of them settles it.
            pairs: list[tuple[str, dict[str, Any]]] = [(emails[0], {})]
        else:
            pairs = [(e, d or {}) for e, d in zip(emails, data, strict=True)]
        check_recipients(compiled, pairs, deadline=check.deadline, links=check.links)
    except TemplateError as exc:
        raise RequestInvalid(f"{where}: {exc}") from None


def _json(data: dict[str, Any]) -> str:
    return _ENCODER.encode(data)


def _emails(value: Any, where: str, validator: AddressValidator) -> list[str]:
    if not isinstance(value, list) or not value:
        raise RequestInvalid(f"{where}.emails must be a non-empty array of addresses")
    fast = validator.normalize_all(value)
    if fast is not None:
        return unique_addresses(fast)
    normalised: list[str] = []
    for j, raw in enumerate(value):
        if not isinstance(raw, str):
            raise RequestInvalid(f"{where}.emails[{j}] must be a string")
        try:
            normalised.append(validator.normalize(raw.strip()))
        except InvalidAddress as exc:
            raise RequestInvalid(f"{where}.emails[{j}]: {exc}") from None
    return unique_addresses(normalised)


def _scheduled(value: Any, where: str) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RequestInvalid(f"{where}.scheduledAt must be an RFC 3339 string")
    try:
        return parse_rfc3339(value)
    except (ValueError, OverflowError):  # year 1 at +09:00 is before datetime.min in UTC
        raise RequestInvalid(
            f"{where}.scheduledAt {value!r} is not an RFC 3339 timestamp"
        ) from None
