"""Signed links for open tracking, click tracking and unsubscribe.

Each link carries ``t``, an HMAC-SHA256 over the link kind and the values it
vouches for, truncated to 128 bits and written as unpadded URL-safe base64.
The kind is part of the signed message, so a token for one kind of link is
worthless for another. The ``check_*`` functions take raw query values
(``None`` when absent) and return ``None`` for anything not signed by us;
they never raise on malformed input.
"""

from __future__ import annotations

import base64
import hmac
from hashlib import sha256
from pathlib import Path
from urllib.parse import quote

from mailpipe.content.html import is_web_url
from mailpipe.errors import ConfigError
from mailpipe.secrets_file import load_or_create_secret_file

__all__ = [
    "CLICK_PATH",
    "OPEN_PATH",
    "TOKEN_LENGTH",
    "UNSUBSCRIBE_PATH",
    "Tokens",
    "load_or_create_secret",
]

_DIGEST_BYTES = 16  # 128 bits
TOKEN_LENGTH = 22  # characters of unpadded base64 for 16 bytes
_MAX_ID_DIGITS = 19  # fits a signed 64-bit SQLite rowid

_OPEN = b"mailpipe.open.v1"
_CLICK = b"mailpipe.click.v1"
_UNSUBSCRIBE = b"mailpipe.unsubscribe.v1"

OPEN_PATH = "/v1/events/open"
CLICK_PATH = "/v1/events/click"
UNSUBSCRIBE_PATH = "/v1/unsubscribe"


def load_or_create_secret(path: Path) -> bytes:
    """Return the tracking key kept in ``path``, creating a random one (mode 0600) if missing.

    The key is the file's text (64 hex digits when created here) as bytes, so
    copying the file's content into ``TRACKING_SECRET`` gives the same key.
    """
    return load_or_create_secret_file(path, 32).encode("ascii")


class Tokens:
    """Builds and checks signed open, click and unsubscribe links.

    ``secret`` is the HMAC key (at least 16 bytes). ``base`` arguments are the
    public base URL of the service (``SERVER_HOST``); a trailing slash is ignored.
    """

    __slots__ = ("_macs",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ConfigError("TRACKING_SECRET must be at least 16 bytes long")
        base = hmac.new(secret, digestmod=sha256)
        self._macs: dict[bytes, hmac.HMAC] = {}
        for kind in (_OPEN, _CLICK, _UNSUBSCRIBE):
            mac = base.copy()
            mac.update(_field(kind))
            self._macs[kind] = mac

    # -- building ---------------------------------------------------------

    def open_url(self, base: str, request_id: int) -> str:
        """Return the URL of the open-tracking pixel for ``request_id``."""
        rid = _id_text(request_id)
        return f"{base.rstrip('/')}{OPEN_PATH}?requestId={rid}&t={self._sign(_OPEN, rid)}"

    def click_url(self, base: str, request_id: int, target_url: str) -> str:
        """Return a tracked link that redirects to ``target_url`` (http or https only)."""
        if not is_web_url(target_url):
            raise ValueError("only http and https links can be tracked")
        rid = _id_text(request_id)
        token = self._sign(_CLICK, rid, target_url)
        encoded = quote(target_url, safe="")
        return f"{base.rstrip('/')}{CLICK_PATH}?requestId={rid}&url={encoded}&t={token}"

    def unsubscribe_url(self, base: str, request_id: int, email: str) -> str:
        """Return the unsubscribe link of ``request_id``, bound to the recipient ``email``."""
        rid = _id_text(request_id)
        token = self._sign(_UNSUBSCRIBE, rid, _email_key(email))
        return f"{base.rstrip('/')}{UNSUBSCRIBE_PATH}?requestId={rid}&t={token}"

    # -- checking ---------------------------------------------------------

    def check_open(self, request_id: str | None, token: str | None) -> int | None:
        """Return the request id of a genuine open link, else ``None``."""
        rid = _parse_id(request_id)
        if rid is None or not self._valid(token, _OPEN, str(rid)):
            return None
        return rid

    def check_click(
        self, request_id: str | None, url: str | None, token: str | None
    ) -> tuple[int, str] | None:
        """Return ``(request_id, target_url)`` of a genuine click link, else ``None``.

        ``url`` is the decoded ``url`` query value; only the exact URL that was
        signed is accepted, so the redirect can never be pointed elsewhere.
        """
        rid = _parse_id(request_id)
        if rid is None or url is None or not is_web_url(url):
            return None
        if not self._valid(token, _CLICK, str(rid), url):
            return None
        return rid, url

    def check_unsubscribe(
        self, request_id: str | None, token: str | None, email: str | None
    ) -> int | None:
        """Return the request id if ``token`` was issued for it and ``email``, else ``None``.

        ``email`` is the recipient the store holds for the request id.
        """
        rid = _parse_id(request_id)
        if rid is None or email is None:
            return None
        if not self._valid(token, _UNSUBSCRIBE, str(rid), _email_key(email)):
            return None
        return rid

    # -- internals --------------------------------------------------------

    def _sign(self, kind: bytes, *values: str) -> str:
        mac = self._macs[kind].copy()
        for value in values:
            mac.update(_field(value.encode("utf-8", "surrogatepass")))
        digest = mac.digest()[:_DIGEST_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def _valid(self, token: str | None, kind: bytes, *values: str) -> bool:
        if not isinstance(token, str) or len(token) != TOKEN_LENGTH or not token.isascii():
            return False
        return hmac.compare_digest(self._sign(kind, *values), token)


def _field(data: bytes) -> bytes:
    """Length-prefix ``data`` so that concatenated fields cannot be confused."""
    return b"%d:" % len(data) + data


def _id_text(request_id: int) -> str:
    if isinstance(request_id, bool) or not isinstance(request_id, int) or request_id < 0:
        raise ValueError(f"invalid request id: {request_id!r}")
    return str(request_id)


def _parse_id(text: str | None) -> int | None:
    """Parse a request id in canonical decimal form, or return ``None``."""
    if not isinstance(text, str) or not 0 < len(text) <= _MAX_ID_DIGITS:
        return None
    if not (text.isascii() and text.isdigit()) or (text[0] == "0" and text != "0"):
        return None
    return int(text)


def _email_key(email: str) -> str:
    return email.strip().lower()
