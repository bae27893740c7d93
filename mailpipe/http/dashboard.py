"""The dashboard at ``/dashboard``: topics, one topic's charts, the account, suppressions.

What it promises: HTML rendered here from the same store reads and pipeline
operations the API uses; no page and no action works without a session
(:mod:`mailpipe.http.session`): a page redirects to the login form, and every
form (login included) without the session's CSRF token is a 403. Each view
is registered through :func:`page` or :func:`form`, so the rule cannot be left
out of a new one; the tests enumerate the routes to check every one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, Final, TypeVar, cast

from quart import Blueprint, Response, redirect, render_template, request, url_for

from mailpipe.config import rate_source
from mailpipe.errors import ApiError
from mailpipe.feedback.ses_events import BOUNCE, COMPLAINT, DELIVERY
from mailpipe.http import session as sessions
from mailpipe.http.app import pipeline
from mailpipe.http.charts import time_chart
from mailpipe.http.reputation import DEFAULT_REASON, MAX_REASON, account_json, check_reason
from mailpipe.http.session import COOKIE, CSRF_FIELD, Session
from mailpipe.status import Status
from mailpipe.store.base import TopicStats

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

MAX_TOPICS: Final = 100
"""Topics listed on the first page (the largest)."""
MAX_SUPPRESSIONS_SHOWN: Final = 200
OUTCOME_KINDS: Final = (DELIVERY, BOUNCE, COMPLAINT, "Open", "Click")
PUBLIC: Final = frozenset({"dashboard.login_form", "dashboard.login"})
"""The views that work without a session (the login form and its POST)."""


def current_session() -> Session | None:
    """The request's session cookie, verified."""
    return sessions.read(pipeline().api_key, request.cookies.get(COOKIE))


def _to_login() -> Response:
    return cast(Response, redirect(url_for("dashboard.login_form")))


def page(handler: F) -> F:
    """A GET view: redirect to the login form unless logged in."""

    @wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        found = current_session()
        if found is None or not found.authenticated:
            return _to_login()
        return await handler(found, *args, **kwargs)

    return cast(F, wrapper)


def form(handler: F) -> F:
    """A POST view: redirect to login unless logged in; 403 without the CSRF token."""

    @wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        found = current_session()
        if found is None or not found.authenticated:
            return _to_login()
        fields = await request.form
        if not sessions.token_matches(found, fields.get(CSRF_FIELD)):
            return await _forbidden()
        return await handler(found, fields, *args, **kwargs)

    return cast(F, wrapper)


async def _forbidden() -> Response:
    body = await render_template("dashboard/forbidden.html", session=None)
    return Response(body, status=403, content_type="text/html; charset=utf-8")


def _with_cookie(response: Response, found: Session) -> Response:
    svc = pipeline()
    response.set_cookie(
        COOKIE, sessions.dump(svc.api_key, found), **sessions.cookie_options(svc.config.server_host)
    )
    return response


async def _html(template: str, status: int = 200, **context: Any) -> Response:
    body = await render_template(f"dashboard/{template}", **context)
    response = Response(body, status=status, content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    return response


# -- login and logout --------------------------------------------------------


@bp.get("/login")
async def login_form() -> Response:
    """The login form; it gets a cookie holding only a CSRF token until the key is given."""
    found = current_session() or sessions.new(authenticated=False)
    return _with_cookie(await _html("login.html", session=found, error=None), found)


@bp.post("/login")
async def login() -> Response:
    """Check the API key; a new authenticated session (and token) on success."""
    found = current_session()
    fields = await request.form
    if found is None or not sessions.token_matches(found, fields.get(CSRF_FIELD)):
        return await _forbidden()
    if not sessions.key_matches(pipeline().api_key, fields.get("api_key", "")):
        error = "That is not this service's API key."
        return await _html("login.html", status=401, session=found, error=error)
    return _with_cookie(cast(Response, redirect(url_for("dashboard.topics"))), sessions.new(True))


@bp.post("/logout")
@form
async def logout(found: Session, fields: Any) -> Response:
    """End the session: the cookie is replaced by a logged-out one."""
    return _with_cookie(_to_login(), sessions.new(authenticated=False))


# -- pages -------------------------------------------------------------------


def _summary(stats: TopicStats) -> dict[str, Any]:
    requests = stats.requests
    total = sum(requests.values())
    pending = requests[Status.CREATED] + requests[Status.PROCESSING]
    sent = requests[Status.SENT]

    def rate(kind: str) -> float:
        return stats.results.get(kind, 0) / sent if sent else 0.0

    return {
        "total": total, "pending": pending, "sent": sent,
        "failed": requests[Status.FAILED], "stopped": requests[Status.STOPPED],
        "done_pct": 100.0 * (total - pending) / total if total else 0.0,
        "delivered": stats.results.get(DELIVERY, 0), "bounced": stats.results.get(BOUNCE, 0),
        "complained": stats.results.get(COMPLAINT, 0), "opened": stats.results.get("Open", 0),
        "clicked": stats.results.get("Click", 0),
        "bounce_rate": rate(BOUNCE), "complaint_rate": rate(COMPLAINT),
        "delivery_rate": rate(DELIVERY), "open_rate": rate("Open"),
    }  # fmt: skip


def _refresh(pending: int) -> float | None:
    return pipeline().config.dashboard_refresh_s if pending else None


@bp.get("/")
@page
async def topics(found: Session) -> Response:
    """Every topic (the largest first) with its progress and outcome rates."""
    listed = [(t, _summary(s)) for t, s in await pipeline().store.topic_list(MAX_TOPICS)]
    pending = sum(s["pending"] for _, s in listed)
    return await _html("topics.html", session=found, topics=listed, refresh=_refresh(pending))


@bp.get("/topics/<topic_id>")
@page
async def topic(found: Session, topic_id: str) -> Response:
    """One topic: its counts, sends and outcomes per minute, commonest errors, actions."""
    svc = pipeline()
    store = svc.store
    summary = _summary(await store.topic_stats(topic_id))
    activity = await store.activity(topic_id)
    return await _html(
        "topic.html", session=found, topic_id=topic_id, s=summary, activity=activity,
        pause=await store.topic_pause(topic_id),
        reputation=(await svc.reputation(topic_id)).to_json(),
        sent_chart=time_chart(activity.sent, "Sends per minute", ["sent"]),
        outcome_chart=time_chart(activity.results, "Outcomes per minute", OUTCOME_KINDS),
        refresh=_refresh(summary["pending"]),
        refused=REFUSALS.get(request.args.get("refused", "")),
        stopped=request.args.get("stopped", type=int),
    )  # fmt: skip


@bp.post("/topics/<topic_id>/stop")
@form
async def stop(found: Session, fields: Any, topic_id: str) -> Response:
    """Stop every request of the topic not yet handed to SES; back to its page."""
    stopped = await pipeline().stop_topic(topic_id)
    target = url_for("dashboard.topic", topic_id=topic_id, stopped=stopped)
    return cast(Response, redirect(target, code=303))


@bp.post("/topics/<topic_id>/pause")
@form
async def pause(found: Session, fields: Any, topic_id: str) -> Response:
    """Pause the topic by hand (its pending requests stay pending); back to its page."""
    try:
        reason = check_reason(fields.get("reason") or DEFAULT_REASON)
    except ApiError:
        return _back_to_topic(topic_id, refused="reason")
    paused = await pipeline().pause_topic(topic_id, reason)
    return _back_to_topic(topic_id, refused=_unchanged(paused))


@bp.post("/topics/<topic_id>/resume")
@form
async def resume(found: Session, fields: Any, topic_id: str) -> Response:
    """Resume the topic: its pending requests are sent again; back to its page."""
    return _back_to_topic(topic_id, refused=_unchanged(await pipeline().resume_topic(topic_id)))


REFUSALS: Final = {
    "reason": f"A reason has 1 to {MAX_REASON} characters, none a control. Nothing was changed.",
    "unknown": "This topic has no requests.",
    "unchanged": "Nothing to change.",
}
"""What the topic page says for its ``refused`` argument (fixed texts: a link
cannot put words of its own on the page)."""


def _unchanged(changed: bool | None) -> str | None:
    """The :data:`REFUSALS` key when a pause or resume changed nothing (None when it did)."""
    if changed:
        return None
    return "unknown" if changed is None else "unchanged"


def _back_to_topic(topic_id: str, refused: str | None) -> Response:
    target = url_for("dashboard.topic", topic_id=topic_id, refused=refused or None)
    return cast(Response, redirect(target, code=303))


@bp.get("/account")
@page
async def account(found: Session) -> Response:
    """The account: the rate, SES quota and standing, pause state and reason, queue
    depth, recent throughput."""
    svc = pipeline()
    listed = await svc.store.topic_list(MAX_TOPICS)
    queued = sum(s.requests[Status.CREATED] + s.requests[Status.PROCESSING] for _, s in listed)
    activity = await svc.store.activity(None)
    readiness = await svc.readiness()
    a = await account_json(svc)
    return await _html(
        "account.html", session=found, rate_source=rate_source(a["rate"], a["emailRate"]),
        queued=queued,
        readiness=readiness, chart=time_chart(activity.sent, "Sends per minute", ["sent"]),
        refresh=_refresh(queued), a=a,
    )  # fmt: skip


@bp.post("/account/resume")
@form
async def resume_account(found: Session, fields: Any) -> Response:
    """Lift the account's pause: sending continues; back to the account page."""
    await pipeline().resume_account()
    return cast(Response, redirect(url_for("dashboard.account"), code=303))


@bp.get("/suppressions")
@page
async def suppressions(found: Session) -> Response:
    """The suppression list, newest first, or those whose address contains ``q``."""
    store = pipeline().store
    query = request.args.get("q", "").strip()[:320]
    if query:
        shown = await store.search_suppressions(query, MAX_SUPPRESSIONS_SHOWN)
    else:
        shown, _ = await store.list_suppressions(MAX_SUPPRESSIONS_SHOWN)
    removed = request.args.get("removed")
    return await _html("suppressions.html", session=found, shown=shown, q=query, removed=removed)


@bp.post("/suppressions/remove")
@form
async def remove_suppression(found: Session, fields: Any) -> Response:
    """Lift one suppression (later sends reach the address); back to the list."""
    svc = pipeline()
    email = str(fields.get("email", ""))[:320]
    svc.lifted(email)
    removed = await svc.store.delete_suppression(email) if email.strip() else False
    target = url_for("dashboard.suppressions", removed=email if removed else "")
    return cast(Response, redirect(target, code=303))
