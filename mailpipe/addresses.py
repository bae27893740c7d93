"""Email address syntax checks (no DNS), fast enough for 100,000 recipients a request.

``email-validator`` is the authority. Its cost is mostly in the domain (IDNA),
and a bulk list has few distinct domains, so a plain ASCII dot-atom local part
is checked here and each domain goes through ``email-validator`` once (cached);
anything else takes the full ``email-validator`` path.

Amazon SES does not support SMTPUTF8: every address must be 7-bit ASCII. A
Unicode domain is normalised to its Punycode form (``ann@bücher.de`` becomes
``ann@xn--bcher-kva.de``, which is what is stored and sent); a non-ASCII local
part cannot be sent at all and is refused.

:meth:`AddressValidator.normalize_all` does the same for a whole list at C
speed (one join, a byte-class check, a few substring searches), which is what
makes a 100,000-recipient POST cheap; any list it is unsure of goes one by one.

:func:`address_key` is the one comparison of addresses: deduplication within a
request, the suppression list (its stored key) and matching feedback use it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Any

from email_validator import EmailNotValidError, validate_email

from mailpipe.errors import InvalidAddress

_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_ATOM = rf"[{_ATEXT}]+"
_LOCAL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*\Z")
_DOMAIN_CACHE = 10_000
_MAX_LOCAL = 64
_MAX_ADDRESS = 254

_PLAIN = (
    bytes(range(ord("A"), ord("Z") + 1))
    + bytes(range(ord("a"), ord("z") + 1))
    + b"0123456789!#$%&'*+/=?^_`{|}~-.@\n"
)
"""Every byte a list of plain addresses joined by newlines may hold."""
_NOT_DOT_ATOM = (b"\n@", b"@\n", b"\n.", b".@", b"..")
"""Substrings that mean an empty part or a misplaced dot in some address."""


class AddressValidator:
    """Normalises addresses to 7-bit ASCII (domain lower-cased, IDNA to Punycode) or
    refuses them."""

    def __init__(self) -> None:
        self._domains: dict[str, str | InvalidAddress] = {}

    def normalize(self, address: str) -> str:
        """The normalised address; raises :class:`InvalidAddress`."""
        local, at, domain = address.rpartition("@")
        if at and len(local) <= 64 and _LOCAL.match(local):
            known = self._domains.get(domain)
            if known is None:
                known = self._domain(domain)
            if isinstance(known, InvalidAddress):
                raise InvalidAddress(address, known.reason)
            result = f"{local}@{known}"
            if len(result) <= 254:
                return result
        return _full(address)

    def normalize_all(self, addresses: Sequence[Any]) -> list[str] | None:
        """Every address normalised (as :meth:`normalize` would), or None.

        None means "not decided here": an element is not a string, not a plain
        ASCII ``dot-atom@domain``, or not valid. Call :meth:`normalize` on each
        element then; it accepts or names the bad one.
        """
        try:
            text = "\n".join(addresses)
        except TypeError:
            return None
        if not addresses or not text.isascii() or not self._plain(text, len(addresses)):
            return None
        # As many "@" as addresses and each has one: exactly one each.
        if not all(map(str.__contains__, addresses, repeat("@"))):
            return None
        # local0, domain0, local1, domain1, ...
        parts = text.replace("\n", "@").split("@")
        longest = max(map(len, addresses))
        if longest > _MAX_ADDRESS:
            return None
        if longest > _MAX_LOCAL + 2 and max(map(len, parts[::2])) > _MAX_LOCAL:
            return None
        changed: dict[str, str] = {}
        for domain in set(parts[1::2]):
            known = self._domains.get(domain)
            if known is None:
                known = self._domain(domain)
            if isinstance(known, InvalidAddress):
                return None
            if known != domain:
                changed[domain] = known
        if not changed:
            return list(addresses)
        if any(new in changed for new in changed.values()):
            pairs = zip(parts[::2], parts[1::2], strict=True)
            return [f"{local}@{changed.get(domain, domain)}" for local, domain in pairs]
        # A domain runs from its line's only "@" to the line's end: replace exactly.
        text += "\n"
        for old, new in changed.items():
            text = text.replace(f"@{old}\n", f"@{new}\n")
        return text.split("\n")[:-1]

    @staticmethod
    def _plain(text: str, count: int) -> bool:
        """Whether the ``count`` lines of ``text`` hold ``count`` "@" and, around
        them, only dot-atom characters, no empty part and no misplaced dot."""
        raw = text.encode("ascii")
        return not (
            raw.translate(None, _PLAIN)
            or raw.count(b"@") != count
            or raw.count(b"\n") != count - 1
            or raw.startswith((b"@", b"."))
            or raw.endswith(b"@")
            or any(bad in raw for bad in _NOT_DOT_ATOM)
        )

    def _domain(self, domain: str) -> str | InvalidAddress:
        if len(self._domains) >= _DOMAIN_CACHE:
            self._domains.clear()
        try:
            known: str | InvalidAddress = _full(f"a@{domain}")[2:]
        except InvalidAddress as exc:
            known = exc
        self._domains[domain] = known
        return known


SMTPUTF8_REFUSED = (
    "the part before the @ must be ASCII: Amazon SES does not support SMTPUTF8 "
    "(internationalized) local parts"
)


def _full(address: str) -> str:
    """``address`` normalised by email-validator, in its ASCII (Punycode) form."""
    local = address.rpartition("@")[0]
    if not local.isascii():
        raise InvalidAddress(address, SMTPUTF8_REFUSED)
    try:
        result = validate_email(address, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise InvalidAddress(address, str(exc)) from None
    assert result.ascii_email is not None  # allow_smtputf8=False promises it
    return str(result.ascii_email)


def address_key(address: str) -> str:
    """What makes two addresses the same recipient: the address normalised as it
    is sent (spaces trimmed, the domain IDNA-encoded to Punycode), then case-folded
    whole, Unicode included. An address that cannot be normalised (it came from
    elsewhere, e.g. feedback) is trimmed and case-folded as it is.

    For a normalised address (always ASCII) this is ``lower()``, which is what SQL
    compares (``lower("to")``) when a row is claimed.
    """
    trimmed = address.strip()
    if not trimmed.isascii():
        with contextlib.suppress(InvalidAddress):
            trimmed = _full(trimmed)
    return trimmed.casefold()


def unique_addresses(addresses: Iterable[str]) -> list[str]:
    """The addresses with one per :func:`address_key`, each as first written, in order."""
    first: dict[str, str] = {}
    for address in addresses:
        first.setdefault(address_key(address), address)
    return list(first.values())
