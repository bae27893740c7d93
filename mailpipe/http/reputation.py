"""Protecting the SES account over HTTP: topic pause and resume, ``GET /v1/account``
and ``POST /v1/account/resume`` (all keyed)."""

from __future__ import annotations

import json
import unicodedata
from typing import Any, Final

from quart import Blueprint, request

from mailpipe.errors import ApiError
from mailpipe.http.app import pipeline, require_key
from mailpipe.http.facade import Pipeline
from mailpipe.model import Figures, Pause
from mailpipe.timeutil import to_json

bp = Blueprint("reputation", __name__)

MAX_REASON: Final = 500
"""Characters a user's pause reason may have."""
DEFAULT_REASON: Final = "paused by hand"


def reputation_json(svc: Pipeline, figures: Figures) -> dict[str, Any]:
    """The ``reputation`` object: the window and its figures."""
    return {"windowHours": svc.config.reputation_window_h, **figures.to_json()}


def pause_json(pause: Pause | None) -> dict[str, Any] | None:
    """The ``paused`` object (None when not paused)."""
    if pause is None:
        return None
    return {"reason": pause.reason, "by": pause.by, "at": to_json(pause.at),
            **pause.figures.to_json()}


async def topic_guard_json(svc: Pipeline, topic_id: str) -> dict[str, Any]:
    """The topic's ``reputation`` and ``paused``, added to ``GET /v1/topics/{id}``."""
    return {
        "reputation": reputation_json(svc, await svc.reputation(topic_id)),
        "paused": pause_json(await svc.store.topic_pause(topic_id)),
    }


async def _topic_answer(svc: Pipeline, topic_id: str) -> dict[str, Any]:
    from mailpipe.http.api import topic_stats_json  # the topic's JSON, built in one place

    guard = await topic_guard_json(svc, topic_id)
    return {**topic_stats_json(await svc.store.topic_stats(topic_id)), **guard}


@bp.post("/v1/topics/<topic_id>/pause")
@require_key
async def pause_topic(topic_id: str) -> dict[str, Any]:
    """Pause the topic by hand (body optional: ``{"reason": "..."}``); its pending
    requests stay pending until resumed."""
    svc = pipeline()
    reason = _reason(await request.get_data(cache=False, as_text=False, parse_form_data=False))
    if await svc.pause_topic(topic_id, reason) is None:
        raise ApiError(404, f"topic {topic_id!r} has no requests")
    return await _topic_answer(svc, topic_id)


def _reason(raw: bytes | str) -> str:
    """The ``reason`` of a pause body (empty body: a default); ApiError if malformed."""
    if not raw:
        return DEFAULT_REASON
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, 'body must be a JSON object such as {"reason": "..."}')
    return check_reason(body.get("reason", DEFAULT_REASON))


def check_reason(reason: object) -> str:
    """A user's pause reason as given; ApiError (400) unless it is 1 to
    ``MAX_REASON`` characters, none a control."""
    if (
        not isinstance(reason, str)
        or not 1 <= len(reason) <= MAX_REASON
        or any(unicodedata.category(c).startswith("C") for c in reason)
    ):
        raise ApiError(
            400, f"reason must be a string of 1 to {MAX_REASON} characters, none a control"
        )
    return reason


@bp.post("/v1/topics/<topic_id>/resume")
@require_key
async def resume_topic(topic_id: str) -> dict[str, Any]:
    """Resume the topic: its pending requests are sent again."""
    svc = pipeline()
    if await svc.resume_topic(topic_id) is None:
        raise ApiError(404, f"topic {topic_id!r} has no requests")
    return await _topic_answer(svc, topic_id)


@bp.get("/v1/account")
@require_key
async def account() -> dict[str, Any]:
    """The account: SES quota and standing, the stored pause, the window's figures."""
    svc = pipeline()
    return await account_json(svc)


@bp.post("/v1/account/resume")
@require_key
async def resume_account() -> dict[str, Any]:
    """Lift the account's pause: sending continues."""
    svc = pipeline()
    await svc.resume_account()
    return await account_json(svc)


async def account_json(svc: Pipeline) -> dict[str, Any]:
    """``GET /v1/account``'s answer (the dashboard shows the same)."""
    state = await svc.account_state()
    quota = None
    if state.max_24_hour_send is not None or state.max_send_rate is not None:
        quota = {
            "max24HourSend": state.max_24_hour_send,
            "maxSendRate": state.max_send_rate,
            "sentLast24Hours": state.sent_last_24_hours,
        }
    return {
        "quota": quota,
        "enforcementStatus": state.enforcement_status,
        "sendingEnabled": state.sending_enabled,
        "error": state.error,
        "paused": pause_json(await svc.store.account_pause()),
        "reputation": reputation_json(svc, await svc.reputation(None)),
        "rate": svc.send_rate,
        "emailRate": svc.config.email_rate,
    }
