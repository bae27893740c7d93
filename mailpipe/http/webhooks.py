"""The keyed webhooks API: endpoints, secret rotation, deliveries and retries.

The signing secret is in the answer to the registration and to a rotation,
and nowhere else (never in a listing, never in a log).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any, Final

import trio
from quart import Blueprint, request

from mailpipe.errors import ApiError
from mailpipe.http.app import pipeline, require_key
from mailpipe.timeutil import to_json, utcnow
from mailpipe.webhooks.events import parse_events_filter
from mailpipe.webhooks.model import DeliveryView, Endpoint
from mailpipe.webhooks.signing import new_endpoint_id, new_secret
from mailpipe.webhooks.targets import TargetRefused, check_target, check_url_shape

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__)

ROTATION_OVERLAP: Final = timedelta(hours=24)
"""How long the previous secret keeps signing beside the new one after a rotation."""
MAX_BODY: Final = 16 * 1024
MAX_DESCRIPTION: Final = 500
MAX_TOPIC_ID: Final = 255
DEFAULT_DELIVERIES: Final = 50
MAX_DELIVERIES: Final = 500
HISTORY: Final = 10
"""Attempts shown per delivery (the latest)."""
FIELDS: Final = frozenset({"url", "events", "topicId", "description", "enabled"})


def endpoint_json(ep: Endpoint) -> dict[str, Any]:
    """``ep`` as the API shows it, without its secrets."""
    return {
        "id": ep.id,
        "url": ep.url,
        "events": list(ep.events),
        "topicId": ep.topic_id,
        "description": ep.description,
        "enabled": ep.enabled,
        "disabledReason": ep.disabled_reason,
        "failingSince": to_json(ep.failing_since) if ep.failing_since else None,
        "createdAt": to_json(ep.created_at),
        "updatedAt": to_json(ep.updated_at),
    }


def delivery_json(d: DeliveryView) -> dict[str, Any]:
    """One delivery and its latest attempts, as the deliveries API shows them."""
    return {
        "eventId": d.event_id,
        "type": d.type,
        "status": d.state,
        "attempts": d.attempts,
        "nextRetryAt": to_json(d.next_attempt_at) if d.next_attempt_at else None,
        "createdAt": to_json(d.created_at),
        "history": [
            {
                "at": to_json(a.attempted_at),
                "outcome": a.outcome,
                "statusCode": a.status_code,
                "latencyMs": round(a.latency_ms, 3),
                "response": a.response,
                "error": a.error,
                "nextRetryAt": to_json(a.next_attempt_at) if a.next_attempt_at else None,
            }
            for a in d.history
        ],
    }


@bp.post("/v1/webhooks")
@require_key
async def create_webhook() -> tuple[dict[str, Any], int]:
    """Register an endpoint; the answer holds its signing secret, shown this once."""
    svc = pipeline()
    body = await _body(required={"url", "events"})
    if len(await svc.store.webhooks.all()) >= svc.config.webhook_max_endpoints:
        raise ApiError(409, "too many webhook endpoints (WEBHOOK_MAX_ENDPOINTS)")
    now = utcnow()
    ep = Endpoint(
        id=new_endpoint_id(), url="", events=(), topic_id=None, description=None, enabled=True,
        disabled_reason=None, failing_since=None, created_at=now, updated_at=now,
        secret=new_secret(),
    )
    ep = await _apply(ep, body)
    await svc.store.webhooks.create(ep)
    log.info("webhook endpoint %s registered for %s", ep.id, ",".join(ep.events))
    return {**endpoint_json(ep), "secret": ep.secret}, 201


@bp.get("/v1/webhooks")
@require_key
async def list_webhooks() -> dict[str, Any]:
    """Every endpoint, oldest first (no secrets)."""
    return {"webhooks": [endpoint_json(ep) for ep in await pipeline().store.webhooks.all()]}


@bp.get("/v1/webhooks/<endpoint_id>")
@require_key
async def get_webhook(endpoint_id: str) -> dict[str, Any]:
    """One endpoint; 404 when there is none."""
    return endpoint_json(await _endpoint(endpoint_id))


@bp.patch("/v1/webhooks/<endpoint_id>")
@require_key
async def patch_webhook(endpoint_id: str) -> dict[str, Any]:
    """Change an endpoint's url, events, topicId, description or enabled; enabling
    clears the reason it was disabled and its failure streak."""
    ep = await _endpoint(endpoint_id)
    body = await _body(required=set())
    changed = await _apply(ep, body)
    if body.get("enabled") is True and not ep.enabled:
        changed = replace(changed, disabled_reason=None, failing_since=None)
    if not await pipeline().store.webhooks.save(replace(changed, updated_at=utcnow())):
        raise ApiError(404, "webhook endpoint not found")
    return endpoint_json(replace(changed, updated_at=utcnow()))


@bp.delete("/v1/webhooks/<endpoint_id>")
@require_key
async def delete_webhook(endpoint_id: str) -> dict[str, Any]:
    """Delete an endpoint and its pending deliveries."""
    if not await pipeline().store.webhooks.delete(endpoint_id[:100]):
        raise ApiError(404, "webhook endpoint not found")
    return {"deleted": True}


@bp.post("/v1/webhooks/<endpoint_id>/rotate-secret")
@require_key
async def rotate_secret(endpoint_id: str) -> dict[str, Any]:
    """A new signing secret (shown this once); the previous one keeps signing beside
    it for 24 hours."""
    ep = await _endpoint(endpoint_id)
    now = utcnow()
    rotated = replace(
        ep, secret=new_secret(), old_secret=ep.secret, old_secret_until=now + ROTATION_OVERLAP,
        updated_at=now,
    )
    if not await pipeline().store.webhooks.save(rotated):
        raise ApiError(404, "webhook endpoint not found")
    log.info("webhook endpoint %s: secret rotated", ep.id)
    assert rotated.old_secret_until is not None
    return {
        **endpoint_json(rotated),
        "secret": rotated.secret,
        "previousSecretExpiresAt": to_json(rotated.old_secret_until),
    }


@bp.get("/v1/webhooks/<endpoint_id>/deliveries")
@require_key
async def list_deliveries(endpoint_id: str) -> dict[str, Any]:
    """The endpoint's most recent deliveries (``limit``, default 50), newest first,
    each with its latest attempts: outcome, status code, latency, the answer's
    first bytes and the next retry."""
    await _endpoint(endpoint_id)
    raw = request.args.get("limit", "")
    limit = DEFAULT_DELIVERIES
    if raw:
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_DELIVERIES:
            raise ApiError(400, f"limit must be an integer from 1 to {MAX_DELIVERIES}")
        limit = int(raw)
    views = await pipeline().store.webhooks.deliveries(endpoint_id, limit, HISTORY)
    return {"deliveries": [delivery_json(v) for v in views]}


@bp.post("/v1/webhooks/<endpoint_id>/deliveries/<event_id>/retry")
@require_key
async def retry_delivery(endpoint_id: str, event_id: str) -> tuple[dict[str, Any], int]:
    """Send one event to the endpoint again, now (whatever its delivery's state)."""
    svc = pipeline()
    await _endpoint(endpoint_id)
    if not await svc.store.webhooks.retry(endpoint_id, event_id[:100], utcnow()):
        raise ApiError(404, "no delivery of this event to this endpoint")
    svc.webhooks_due()
    return {"retrying": True, "eventId": event_id}, 202


async def _endpoint(endpoint_id: str) -> Endpoint:
    found = await pipeline().store.webhooks.get(endpoint_id[:100])
    if found is None:
        raise ApiError(404, "webhook endpoint not found")
    return found


async def _body(required: set[str]) -> dict[str, Any]:
    """The request's JSON object; 400 for anything else, unknown fields or missing ones."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"request body too large (at most {MAX_BODY} bytes)")
    raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    assert isinstance(raw, bytes)
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body too large (at most {MAX_BODY} bytes)")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}; known: {', '.join(sorted(FIELDS))}")
    missing = sorted(required - set(body))
    if missing:
        raise ApiError(400, f"{missing[0]} is required")
    return body


async def _apply(ep: Endpoint, body: dict[str, Any]) -> Endpoint:
    """``ep`` with the fields of ``body``, each checked (400 naming the field)."""
    svc = pipeline()
    changes: dict[str, Any] = {}
    if "url" in body:
        try:
            url = check_url_shape(body["url"], https_only=svc.config.env == "production")
            await trio.to_thread.run_sync(
                lambda: check_target(url, allow_private=svc.config.webhook_allow_private)
            )
        except TargetRefused as exc:
            raise ApiError(400, str(exc)) from None
        changes["url"] = url
    if "events" in body:
        try:
            changes["events"] = tuple(parse_events_filter(body["events"]))
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
    if "topicId" in body:
        changes["topic_id"] = _optional_text(body["topicId"], "topicId", MAX_TOPIC_ID)
    if "description" in body:
        changes["description"] = _optional_text(body["description"], "description",
                                                 MAX_DESCRIPTION)
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            raise ApiError(400, "enabled must be true or false")
        changes["enabled"] = body["enabled"]
    return replace(ep, **changes)


def _optional_text(value: object, name: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ApiError(400, f"{name} must be null or a non-empty string of at most {limit}"
                            " characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ApiError(400, f"{name} must not contain control characters")
    return value
