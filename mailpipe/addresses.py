"""Email address syntax checks (no DNS), fast enough for 100,000 recipients a request.

``email-validator`` is the authority. Its cost is mostly in the domain (IDNA),
and a bulk list has few distinct domains, so a plain ASCII dot-atom local part
is checked here and each domain goes through ``email-validator`` once (cached);
anything else takes the full ``email-validator`` path.
"""

from __future__ import annotations

import re

from email_validator import EmailNotValidError, validate_email

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*\Z")
_DOMAIN_CACHE = 10_000


class InvalidAddress(ValueError):
    """An address that is not valid email syntax; ``reason`` says why."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"invalid email address {address!r}: {reason}")
        self.address = address
        self.reason = reason


class AddressValidator:
    """Normalises addresses (domain lower-cased and IDNA-normalised) or refuses them."""

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

    def _domain(self, domain: str) -> str | InvalidAddress:
        if len(self._domains) >= _DOMAIN_CACHE:
            self._domains.clear()
        try:
            known: str | InvalidAddress = _full(f"a@{domain}")[2:]
        except InvalidAddress as exc:
            known = exc
        self._domains[domain] = known
        return known


def _full(address: str) -> str:
    try:
        result = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidAddress(address, str(exc)) from None
    return str(result.normalized)
