"""RFC 5322 messages: multipart/alternative, UTF-8, CRLF on the wire.

Used by the ``outbox`` transport (``.eml`` files) and for raw SES sends.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email import policy
from email.headerregistry import BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from typing import Any

import idna

__all__ = ["ascii_address", "build_message", "to_bytes"]

_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 field name: printable ASCII except ':'
_BAD_VALUE = re.compile(r"[\x00\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_RESERVED = frozenset(
    {
        "from", "to", "subject", "date", "message-id", "mime-version",
        "content-type", "content-transfer-encoding",
    }
)  # fmt: skip
_FALLBACK_DOMAIN = "mailpipe.invalid"


class _VerbatimHeader(UnstructuredHeader, BaseHeader):
    """An ASCII header folded only at spaces, never turned into encoded words.

    The stdlib folder encodes long unbreakable ASCII values (such as the URL in
    ``List-Unsubscribe``) as RFC 2047 words, which receivers do not decode there.
    """

    def fold(self, *, policy: Any) -> str:
        value = str(self)
        if not value.isascii():
            return super().fold(policy=policy)
        limit = policy.max_line_length or 998
        first, *rest = value.split(" ")
        lines: list[str] = []
        line = f"{self.name}: {first}"
        for word in rest:
            if word and len(line) + 1 + len(word) > limit:
                lines.append(line)
                line = " " + word
            else:
                line += " " + word
        lines.append(line)
        return str(policy.linesep).join(lines) + str(policy.linesep)


class _VerbatimUniqueHeader(_VerbatimHeader):
    """A :class:`_VerbatimHeader` that may appear only once (``Subject``)."""

    max_count = 1


_REGISTRY = HeaderRegistry(default_class=_VerbatimHeader)
_REGISTRY.map_to_type("subject", _VerbatimUniqueHeader)
# 7bit: non-ASCII bodies go out quoted-printable or base64, as SES expects.
_POLICY = policy.SMTP.clone(header_factory=_REGISTRY, cte_type="7bit")


def build_message(
    *,
    sender: str,
    to: str,
    subject: str,
    html: str,
    text: str,
    headers: Sequence[tuple[str, str]],
    message_id_domain: str | None = None,
) -> EmailMessage:
    """Return a multipart/alternative message (text/plain, then text/html), UTF-8.

    Adds ``Date`` and ``Message-ID`` (at ``message_id_domain``, else the
    sender's domain) and ``headers`` in order. Raises ``ValueError`` for a
    header name that is invalid or set here already, or any header value
    (subject and addresses included) containing a line break.
    """
    for name, value in (("From", sender), ("To", to), ("Subject", subject), *headers):
        _check_header(name, value)
    for name, _ in headers:
        if name.lower() in _RESERVED:
            raise ValueError(f"header {name} is set by build_message")
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = ascii_address(sender)
    msg["To"] = ascii_address(to)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=message_id_domain or _domain_of(sender))
    for name, value in headers:
        msg[name] = value
    msg["MIME-Version"] = "1.0"
    msg.make_alternative()
    msg.attach(_part(text, "plain"))
    msg.attach(_part(html, "html"))
    return msg


def ascii_address(value: str) -> str:
    """``value`` (``a@b`` or ``Name <a@b>``) with its domain in Punycode.

    SES accepts only 7-bit ASCII addresses (no SMTPUTF8); a display name may
    still be Unicode (it is sent as an RFC 2047 encoded word). Raises
    ``ValueError`` for a non-ASCII local part, which cannot be sent at all.
    """
    if value.isascii():
        return value  # the common case, without parsing
    name, address = parseaddr(value)
    if address.isascii():
        return value
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        raise ValueError(f"address {address!r}: a non-ASCII local part cannot be sent (SMTPUTF8)")
    try:
        ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"address {address!r}: invalid domain: {exc}") from None
    address = f"{local}@{ascii_domain}"
    return formataddr((name, address)) if name else address


def _part(content: str, subtype: str) -> EmailMessage:
    part = EmailMessage(policy=_POLICY)
    part.set_content(content, subtype=subtype, charset="utf-8")
    del part["MIME-Version"]  # belongs on the top-level message only
    return part


def to_bytes(msg: EmailMessage) -> bytes:
    """Serialise ``msg`` for SMTP: CRLF line endings, lines within RFC 5322 limits."""
    return msg.as_bytes(policy=_POLICY)


def _check_header(name: str, value: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid header name: {name!r}")
    if _BAD_VALUE.search(value):
        raise ValueError(f"header {name} contains a line break or NUL")


def _domain_of(address: str) -> str:
    """The domain of the last address in ``address`` (``Name <a@b>`` or ``a@b``)."""
    domain = address.rpartition("@")[2].strip().rstrip(">").strip()
    return domain if re.fullmatch(r"[A-Za-z0-9.-]+", domain) else _FALLBACK_DOMAIN
