"""Dashboard sessions: a signed cookie, and a CSRF token in it for every form.

What it promises: the cookie is signed with a key derived from the API key (a
new API key ends every session), ``HttpOnly`` and ``SameSite=Strict``, ``Secure``
when ``SERVER_HOST`` is https, and expires after ``SESSION_MAX_AGE_S``. It holds
a random CSRF token; a form is honoured only when it sends the same token
(compared in constant time). Before login the cookie holds a token but no
session, so the login form is protected too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Final

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE: Final = "mailpipe_session"
SESSION_MAX_AGE_S: Final = 12 * 3600
"""A dashboard session lasts a working day; then the key is asked again."""
CSRF_FIELD: Final = "csrf_token"


@dataclass(frozen=True)
class Session:
    """What the cookie says: its CSRF token, and whether the key was given."""

    csrf: str
    authenticated: bool


def _serializer(api_key: str) -> URLSafeTimedSerializer:
    secret = hmac.new(api_key.encode(), b"mailpipe dashboard session", hashlib.sha256).digest()
    return URLSafeTimedSerializer(secret, salt="mailpipe-dashboard")


def read(api_key: str, cookie: str | None) -> Session | None:
    """The session in ``cookie``; None when absent, forged or expired."""
    if not cookie:
        return None
    try:
        data: Any = _serializer(api_key).loads(cookie, max_age=SESSION_MAX_AGE_S)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
        return None
    return Session(data["csrf"], data.get("auth") is True)


def new(authenticated: bool) -> Session:
    """A session with a fresh CSRF token (a login gets a new one)."""
    return Session(secrets.token_urlsafe(24), authenticated)


def dump(api_key: str, session: Session) -> str:
    """The cookie value of ``session``."""
    return _serializer(api_key).dumps({"csrf": session.csrf, "auth": session.authenticated})


def cookie_options(server_host: str) -> dict[str, Any]:
    """The cookie's attributes: HttpOnly, SameSite=Strict, Secure on https."""
    return {
        "httponly": True,
        "samesite": "Strict",
        "secure": server_host.startswith("https://"),
        "max_age": SESSION_MAX_AGE_S,
        "path": "/dashboard",
    }


def token_matches(session: Session, given: str | None) -> bool:
    """Whether a form's ``given`` token is the session's (constant time)."""
    return given is not None and hmac.compare_digest(session.csrf.encode(), given.encode())


def key_matches(api_key: str, given: str) -> bool:
    """Whether ``given`` is the API key (constant time)."""
    return hmac.compare_digest(api_key.encode(), given.encode())
