"""The keyed suppression-list API: list, look up, add and lift suppressions.

Addresses are compared lower-cased (see ``mailpipe.store.feedback``).
"""

from __future__ import annotations

import json
from typing import Any, Final

from quart import Blueprint, request

from mailpipe.errors import ApiError, InvalidAddress
from mailpipe.http.app import pipeline, require_key
from mailpipe.model import SUPPRESSION_REASONS, Suppression
from mailpipe.timeutil import to_json

bp = Blueprint("suppressions", __name__)

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
MAX_ADDRESS: Final = 320
MAX_ADD: Final = 1000
"""Addresses one ``POST /v1/suppressions`` may name (each is one store write)."""


def suppression_json(s: Suppression) -> dict[str, Any]:
    """``s`` as the API shows it (camelCase, UTC ``Z`` time)."""
    return {
        "email": s.address,
        "reason": s.reason,
        "source": s.source,
        "requestId": s.request_id,
        "createdAt": to_json(s.created_at),
    }


@bp.get("/v1/suppressions")
@require_key
async def list_suppressions() -> dict[str, Any]:
    """A page of suppressions, newest first; ``nextCursor`` fetches the next page."""
    limit = _int_arg("limit", 1, MAX_LIMIT) or DEFAULT_LIMIT
    cursor = _int_arg("cursor", 1, 2**63 - 1)
    page, next_cursor = await pipeline().store.list_suppressions(limit, cursor)
    return {
        "suppressions": [suppression_json(s) for s in page],
        "nextCursor": str(next_cursor) if next_cursor is not None else None,
    }


@bp.post("/v1/suppressions")
@require_key
async def add_suppressions() -> dict[str, Any]:
    """Suppress ``{"emails": [...], "reason": str}`` (at most ``MAX_ADD`` addresses, all
    valid or none stored); ``added`` counts those not suppressed before."""
    raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    try:
        body = json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        raise ApiError(400, "the body must be a JSON object") from None
    emails = body.get("emails") if isinstance(body, dict) else None
    reason = body.get("reason", "manual") if isinstance(body, dict) else None
    if not isinstance(emails, list) or not 1 <= len(emails) <= MAX_ADD:
        raise ApiError(400, f"emails must be a list of 1 to {MAX_ADD} addresses")
    if not isinstance(reason, str) or reason not in SUPPRESSION_REASONS:
        raise ApiError(400, f"reason must be one of {', '.join(sorted(SUPPRESSION_REASONS))}")
    svc = pipeline()
    addresses = []
    for i, email in enumerate(emails):
        if not isinstance(email, str):
            raise ApiError(400, f"emails[{i}] must be a string")
        try:
            addresses.append(svc.addresses.normalize(email))
        except InvalidAddress as exc:
            raise ApiError(400, f"emails[{i}]: {exc}") from None
    added = 0
    for address in addresses:
        added += await svc.store.add_suppression(address, reason, "api")
    svc.suppressed((address, reason) for address in addresses)
    return {"added": added}


@bp.get("/v1/suppressions/<path:email>")
@require_key
async def get_suppression(email: str) -> dict[str, Any]:
    """The suppression of ``email``; 404 when it is not suppressed."""
    found = await pipeline().store.get_suppression(_address(email))
    if found is None:
        raise ApiError(404, "address is not suppressed")
    return suppression_json(found)


@bp.delete("/v1/suppressions/<path:email>")
@require_key
async def delete_suppression(email: str) -> dict[str, Any]:
    """Lift the suppression of ``email`` (later sends reach it); 404 when there is none."""
    svc = pipeline()
    svc.lifted(email)  # even when the store has none: no stale entry
    if not await svc.store.delete_suppression(_address(email)):
        raise ApiError(404, "address is not suppressed")
    return {"deleted": True}


def _address(email: str) -> str:
    if not email.strip() or len(email) > MAX_ADDRESS:
        raise ApiError(404, "address is not suppressed")
    return email


def _int_arg(name: str, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, not {raw[:40]!r}") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be from {low} to {high}")
    return value
