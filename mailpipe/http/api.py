"""The keyed REST API of the Go service: messages, topics, counts."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any, Final, TypeVar

import outcome
import trio
from quart import Blueprint, Response, current_app, jsonify, request

from mailpipe.content.templates import probe_links
from mailpipe.errors import ApiError
from mailpipe.http.app import pipeline, require_key
from mailpipe.http.reputation import topic_guard_json
from mailpipe.ingest import Limits, parse_send_request
from mailpipe.memory import trim
from mailpipe.model import IdempotencyKey
from mailpipe.status import STAT_NAMES
from mailpipe.store import CHECKPOINT_AFTER_ROWS, TopicStats
from mailpipe.timeutil import to_json, utcnow

bp = Blueprint("api", __name__)

T = TypeVar("T")

MAX_IDEMPOTENCY_KEY: Final = 255


def go_duration(seconds: float) -> str:
    """``seconds`` the way Go prints a ``time.Duration`` (the seed's ``elapsed``)."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3f}µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3f}ms"
    return f"{seconds:.3f}s"


@bp.post("/v1/messages")
@require_key
async def post_messages() -> Response | dict[str, Any]:
    """Store a send request durably; answers only after the commit.

    With an ``Idempotency-Key`` header, a repeat of the same body within 24 h
    answers the first response again and stores nothing; another body is a 409.
    With ``?dryRun=true`` the body is validated in full and nothing is stored.
    """
    started = time.perf_counter()
    svc = pipeline()
    body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    assert isinstance(body, bytes)
    dry_run = request.args.get("dryRun", "false")
    if dry_run not in ("true", "false"):
        raise ApiError(400, f"dryRun must be true or false, not {dry_run[:20]!r}")
    key = None if dry_run == "true" else await _idempotency_key(body, started)
    if key is not None:
        earlier = await svc.store.idempotent_answer(key, utcnow())
        if earlier is not None:
            return _replay(earlier)
    limits = Limits(max_recipients=svc.config.max_recipients_per_request)
    links = probe_links(svc.tokens, svc.base_url)
    cancelled = threading.Event()
    validate = partial(
        parse_send_request, body, limits, svc.addresses, cancelled=cancelled, links=links
    )
    # RequestInvalid (400/413) and KeyReused (409) are answered by error_response().
    messages = await run_stoppable(validate, cancelled, svc.cpu_limiter)
    if dry_run == "true":
        count = sum(len(m.emails) for m in messages)
        return {**_accepted(count, started), "dryRun": True}
    result = await svc.accept(messages, key)
    if result.replayed:  # an identical request won the race while this one was validated
        assert result.answer is not None
        return _replay(result.answer)
    if result.count >= CHECKPOINT_AFTER_ROWS:
        current_app.add_background_task(svc.store.after_large_insert)
        del messages, body  # let the parsed request go before the heap is trimmed
        await trio.to_thread.run_sync(trim, limiter=svc.cpu_limiter)
    return result.answer or _accepted(result.count, started)


async def run_stoppable(
    work: Callable[[], T], stop: threading.Event, limiter: trio.CapacityLimiter
) -> T:
    """``work()`` in a worker thread; ``stop`` is set if this task is cancelled meanwhile.

    A worker thread cannot be abandoned safely, so ``work`` must watch ``stop``
    and end soon after it is set (the client went away, or shutdown).
    """
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_set_when_cancelled, stop)
        try:
            result = await trio.to_thread.run_sync(outcome.capture, work, limiter=limiter)
        finally:
            nursery.cancel_scope.cancel()
    return result.unwrap()


async def _set_when_cancelled(stop: threading.Event) -> None:
    try:
        await trio.sleep_forever()
    finally:
        stop.set()


def _accepted(count: int, started: float) -> dict[str, Any]:
    return {"count": count, "elapsed": go_duration(time.perf_counter() - started)}


async def _idempotency_key(body: bytes, started: float) -> IdempotencyKey | None:
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    if not 1 <= len(raw) <= MAX_IDEMPOTENCY_KEY or not all(" " <= c <= "~" for c in raw):
        raise ApiError(
            400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        )
    digest = await trio.to_thread.run_sync(lambda: hashlib.sha256(body).hexdigest())
    return IdempotencyKey(raw, digest, partial(_accepted, started=started))


def _replay(answer: dict[str, Any]) -> Response:
    response = jsonify(answer)
    response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/v1/topics/<topic_id>")
@require_key
async def topic_stats(topic_id: str) -> dict[str, Any]:
    """Counts of the topic's requests per status and results per event type, its
    reputation over the window, and its pause (or null)."""
    svc = pipeline()
    guard = await topic_guard_json(svc, topic_id)
    # The counts last: the freshest part of the answer.
    return {**topic_stats_json(await svc.store.topic_stats(topic_id)), **guard}


def topic_stats_json(stats: TopicStats) -> dict[str, Any]:
    """The Go service's shape of a topic's counts."""
    counts = {STAT_NAMES[status]: n for status, n in stats.requests.items()}
    return {
        "request": {"total": sum(counts.values()), **counts},
        "result": {"statuses": stats.results},
    }


@bp.delete("/v1/topics/<topic_id>")
@require_key
async def stop_topic(topic_id: str) -> dict[str, Any]:
    """Stop every request of the topic not yet handed to the provider."""
    return {"stopped": await pipeline().stop_topic(topic_id)}


@bp.get("/v1/events/counts/sent")
@require_key
async def sent_count() -> dict[str, Any]:
    """How many requests were sent in the last ``hours`` (1 to 168, default 24)."""
    raw = request.args.get("hours", "24")
    try:
        hours = int(raw)
    except ValueError:
        raise ApiError(400, f"hours must be an integer from 1 to 168, not {raw!r}") from None
    if not 1 <= hours <= 168:
        raise ApiError(400, f"hours must be from 1 to 168, not {hours}")
    since = utcnow() - timedelta(hours=hours)
    count = await pipeline().store.count_sent_since(since)
    return {"count": count, "hours": hours, "since": to_json(since)}
