"""What recipients' mail clients call: the open pixel, tracked links, one-click unsubscribe.

No API key and no cookies: each link carries an HMAC token
(:class:`~mailpipe.content.tokens.Tokens`) and only a valid one changes anything.

- ``GET /v1/events/open`` always answers a 1x1 transparent GIF that must not be
  cached; a valid token records an ``Open``.
- ``GET /v1/events/click`` with a valid token records a ``Click`` and redirects
  (302) to the signed URL; anything else is a 400 page that redirects nowhere.
- ``GET /v1/unsubscribe`` shows a confirm page and changes nothing (mail
  scanners fetch every link); ``POST`` with ``List-Unsubscribe=One-Click``
  (RFC 8058, also what the page's button sends) suppresses the recipient and
  answers 200, never a redirect.

``HEAD`` answers like ``GET`` and records nothing.
"""

from __future__ import annotations

import base64
import json
import logging
from html import escape
from typing import Final

from quart import Blueprint, Response, request
from werkzeug.urls import iri_to_uri

from mailpipe.errors import StoreError
from mailpipe.http.app import pipeline
from mailpipe.store.tracking import CLICK, OPEN
from mailpipe.timeutil import to_json, utcnow

log = logging.getLogger(__name__)

bp = Blueprint("events", __name__)

PIXEL: Final = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
"""A 1x1 transparent GIF (43 bytes)."""

NO_STORE: Final = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private",
    "Pragma": "no-cache",
    "Expires": "0",
}
PAGE_HEADERS: Final = {
    **NO_STORE,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
}
MAX_FORM_BYTES: Final = 4096
MAX_USER_AGENT: Final = 512
ONE_CLICK: Final = ("List-Unsubscribe", "One-Click")
VIA_PAGE: Final = "page"
MAX_REQUEST_ID: Final = 2**63 - 1


@bp.get("/v1/events/open")
async def open_pixel() -> Response:
    """The transparent pixel, whatever the token; a valid one records an ``Open``."""
    svc = pipeline()
    raw_id = request.args.get("requestId")
    rid = svc.tokens.check_open(raw_id, request.args.get("t"))
    if _parse_id(raw_id) is None:  # beyond a row id: no request, whatever the token
        rid = None
    if rid is not None and request.method == "GET":
        await _record(rid, OPEN, {})
    return Response(PIXEL, 200, {"Content-Type": "image/gif", **NO_STORE})


@bp.get("/v1/events/click")
async def click() -> Response:
    """Redirect to the link's signed target and record a ``Click``; a bad link goes nowhere."""
    svc = pipeline()
    raw_id = request.args.get("requestId")
    found = svc.tokens.check_click(raw_id, request.args.get("url"), request.args.get("t"))
    if _parse_id(raw_id) is None:
        found = None
    if found is None or not _safe_location(found[1]):
        return _page(400, "Link not valid", "This link is not valid. Nothing was opened.")
    rid, url = found
    if request.method == "GET":
        await _record(rid, CLICK, {"url": url})
    location = url if url.isascii() else iri_to_uri(url)
    return Response("", 302, {"Location": location, **NO_STORE})


@bp.get("/v1/unsubscribe")
async def unsubscribe_page() -> Response:
    """A page whose button confirms the unsubscribe; the GET itself changes nothing."""
    link = await _unsubscribe_link()
    if isinstance(link, Response):
        return link
    rid, _to = link
    token = request.args["t"]  # checked: URL-safe base64
    body = (
        "<p>Stop receiving these emails?</p>"
        f'<form method="post" action="?requestId={rid}&amp;t={escape(token)}">'
        f'<input type="hidden" name="{ONE_CLICK[0]}" value="{ONE_CLICK[1]}">'
        f'<input type="hidden" name="via" value="{VIA_PAGE}">'
        '<button type="submit">Unsubscribe</button></form>'
    )
    return _page(200, "Unsubscribe", body, raw=True)


@bp.post("/v1/unsubscribe")
async def unsubscribe() -> Response:
    """RFC 8058 one-click unsubscribe: suppress the recipient, answer 200."""
    link = await _unsubscribe_link()
    if isinstance(link, Response):
        return link
    rid, to = link
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        return _page(413, "Request too large", "The request is too large.")
    form = await request.form
    if form.get(ONE_CLICK[0]) != ONE_CLICK[1]:
        return _page(400, "Not unsubscribed", "Send List-Unsubscribe=One-Click to unsubscribe.")
    source = "unsubscribe page" if form.get("via") == VIA_PAGE else "one-click"
    raw = json.dumps({"source": source, **_client()})
    try:
        added = await pipeline().store.unsubscribe(rid, source, raw, utcnow())
    except StoreError as exc:
        log.error("unsubscribe of request %d not stored: %s", rid, exc)
        return _try_again()
    pipeline().suppressed([(to, "unsubscribe")])  # rows claimed already, too
    if added:
        log.info("request %d: recipient unsubscribed (%s)", rid, source)
    return _page(200, "Unsubscribed", "You are unsubscribed and will get no more of these emails.")


async def _unsubscribe_link() -> tuple[int, str] | Response:
    """The request id and recipient of a genuine unsubscribe link, else the page to answer."""
    raw_id, token = request.args.get("requestId"), request.args.get("t")
    svc = pipeline()
    parsed = _parse_id(raw_id)
    if parsed is None or not token:
        return _invalid_unsubscribe()
    try:
        to = await svc.store.recipient_of(parsed)
    except StoreError as exc:
        log.error("unsubscribe link of request %d not checked: %s", parsed, exc)
        return _try_again()
    rid = svc.tokens.check_unsubscribe(raw_id, token, to)
    return _invalid_unsubscribe() if rid is None or to is None else (rid, to)


def _parse_id(raw: str | None) -> int | None:
    """A request id to look up (the token check then insists on canonical form).

    None unless decimal digits of at most ``MAX_REQUEST_ID``: SQLite row ids are
    signed 64-bit, a larger number overflows the query and can be no request.
    """
    if raw is None or not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        return None
    rid = int(raw)
    return rid if rid <= MAX_REQUEST_ID else None


async def _record(rid: int, status: str, extra: dict[str, str]) -> None:
    raw = json.dumps({**extra, **_client()})
    try:
        await pipeline().store.record_result(rid, status, raw, utcnow())
    except StoreError as exc:  # the recipient still gets the image or the redirect
        log.error("%s of request %d not recorded: %s", status, rid, exc)


def _client() -> dict[str, str]:
    return {
        "userAgent": request.headers.get("User-Agent", "")[:MAX_USER_AGENT],
        "time": to_json(utcnow()),
    }


def _safe_location(url: str) -> bool:
    """No control characters: the URL goes into a header as it is."""
    return not any(ord(c) < 32 or ord(c) == 127 for c in url)


def _invalid_unsubscribe() -> Response:
    return _page(400, "Link not valid", "This unsubscribe link is not valid. Nothing was changed.")


def _try_again() -> Response:
    return _page(503, "Try again", "Please try again in a few minutes.")


def _page(status: int, title: str, body: str, *, raw: bool = False) -> Response:
    html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width">'
        f"<title>{escape(title)}</title></head>"
        f'<body style="font-family:sans-serif;max-width:32em;margin:3em auto">'
        f"<h1>{escape(title)}</h1>{body if raw else f'<p>{escape(body)}</p>'}</body></html>"
    )
    return Response(html, status, {"Content-Type": "text/html; charset=utf-8", **PAGE_HEADERS})
