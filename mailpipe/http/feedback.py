"""``POST /v1/events/results``: SES feedback delivered by Amazon SNS.

No API key: a message is acted on only after ``SnsVerifier`` proved that SNS
signed it, recently, for a topic in ``SNS_TOPIC_ARNS``. A refusal answers 403,
is logged with its reason and stores nothing; an unavailable certificate or a
failing store answers 503, so SNS retries; an SES record naming more than
``MAX_RECIPIENTS`` (50) recipients answers 400 (SNS does not retry a 4xx) and
stores nothing. A ``SubscriptionConfirmation`` is
confirmed by one GET of its ``SubscribeURL`` when that is an SNS endpoint; an
``UnsubscribeConfirmation`` is only logged (its URL would re-subscribe).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import trio

from mailpipe.config import Config
from mailpipe.errors import ApiError, StoreError
from mailpipe.feedback import (
    MAX_RECIPIENTS,
    CertStore,
    CertUnavailable,
    FeedbackError,
    SnsMessage,
    SnsRejected,
    SnsVerifier,
    TooManyRecipients,
    check_sns_url,
    parse_ses_event,
    parse_sns,
)
from mailpipe.feedback.ses_events import SesEvent
from mailpipe.feedback.sns import MAX_BODY_BYTES, NOTIFICATION, SUBSCRIPTION_CONFIRMATION
from mailpipe.http.app import error_response
from mailpipe.model import FeedbackOutcome
from mailpipe.timeutil import utcnow

if TYPE_CHECKING:
    from mailpipe.http.facade import Pipeline

log = logging.getLogger(__name__)


INLINE_BODY_BYTES: Final = 64 * 1024
"""Bodies up to this size are parsed and verified on the event loop (if the key is cached)."""
SES_TOPIC_CHECK: Final = "Successfully validated SNS topic"
"""How the plain-text test message SES publishes when a topic is attached begins."""


def make_verifier(config: Config, fetch: Callable[[str], bytes]) -> SnsVerifier:
    """The verifier for ``config``'s topics; ``fetch`` GETs certificates not cached yet."""
    if not config.sns_topic_arns:
        log.warning(
            "SNS_TOPIC_ARNS is empty: POST /v1/events/results refuses every SNS message"
            " until it lists the SES feedback topics (comma-separated ARNs)"
        )
    return SnsVerifier(config.sns_topic_arns, CertStore(config.sns_cert_cache_dir, fetch))


async def handle_sns(svc: Pipeline, body: bytes, remote: str | None) -> dict[str, Any]:
    """Act on one SNS message body; the JSON answer, or ``ApiError``.

    Served by the ASGI fast path (:class:`SnsFastPath`), which takes every
    ``POST /v1/events/results`` before Quart would see it.
    """
    msg = await _verified(svc, body, remote)
    if msg["Type"] == NOTIFICATION:
        return await _notification(svc, msg)
    if msg["Type"] == SUBSCRIPTION_CONFIRMATION:
        return await _confirm_subscription(svc, msg)
    log.warning(
        "SNS UnsubscribeConfirmation for %s: feedback will stop; its SubscribeURL is not visited",
        msg["TopicArn"],
    )
    return {"status": "unsubscribed"}


async def _verified(svc: Pipeline, body: bytes, remote: str | None) -> SnsMessage:
    """The parsed message if SNS signed it for an allowed topic; else ``ApiError``."""

    def parse_and_verify() -> SnsMessage:
        msg = parse_sns(body)
        svc.sns_verifier.verify(msg)
        return msg

    try:
        if len(body) <= INLINE_BODY_BYTES:
            # An SES notification is a few KB and its certificate's key is
            # almost always in memory: parsing and one RSA check take a
            # fraction of a millisecond, less than the trip to a thread.
            msg = parse_sns(body)
            if svc.sns_verifier.certs.cached(msg.get("SigningCertURL", "")):
                svc.sns_verifier.verify(msg)
            else:  # a certificate to read from disk or fetch: off the event loop
                await trio.to_thread.run_sync(svc.sns_verifier.verify, msg)
        else:  # parsing up to 1 MiB: off the event loop
            msg = await trio.to_thread.run_sync(parse_and_verify)
    except SnsRejected as exc:
        log.warning("SNS message from %s refused: %s", remote, exc.reason)
        raise ApiError(403, "SNS message refused") from None
    except CertUnavailable as exc:
        log.warning("SNS message not verifiable now (SNS will retry): %s", exc)
        raise ApiError(503, "signing certificate unavailable; retry later") from None
    return msg


async def _notification(svc: Pipeline, msg: SnsMessage) -> dict[str, Any]:
    text = msg["Message"]
    try:
        if len(text) <= INLINE_BODY_BYTES:
            event = parse_ses_event(text)
        else:  # reading a large record: off the event loop
            event = await trio.to_thread.run_sync(parse_ses_event, text)
    except TooManyRecipients as exc:
        # 400, not 5xx: SNS does not retry it, and it is never stored in part.
        log.warning("SNS notification %s on %s refused: %s", msg["MessageId"], msg["TopicArn"], exc)
        raise ApiError(
            400, f"SES record names {exc.count} recipients; at most {MAX_RECIPIENTS} are accepted"
        ) from None
    except FeedbackError as exc:
        # Acknowledged (200): SNS would otherwise retry something we can never read.
        if text.startswith(SES_TOPIC_CHECK):
            log.info("SES validated SNS topic %s: %s", msg["TopicArn"], text[:200])
            return {"status": "ok"}
        log.warning(
            "SNS notification %s on %s is not an SES record (%s); not stored",
            msg["MessageId"],
            msg["TopicArn"],
            exc,
        )
        return {"status": "ignored"}
    try:
        outcome = await record_event(svc, msg["MessageId"], event)
    except StoreError as exc:
        log.error("SNS notification %s not stored (SNS will retry): %s", msg["MessageId"], exc)
        raise ApiError(503, "notification not stored; retry later") from None
    if outcome.duplicate:
        log.info("SNS notification %s was already stored", msg["MessageId"])
        return {"status": "duplicate"}
    if outcome.suppressed:
        log.info(
            "%s for SES message %s: suppressed %d addresses",
            event.event_type,
            event.ses_message_id,
            outcome.suppressed,
        )
    if outcome.matched < outcome.results:
        log.info(
            "%s for SES message %s: %d of %d results match no request (stored without one)",
            event.event_type,
            event.ses_message_id,
            outcome.results - outcome.matched,
            outcome.results,
        )
    return {
        "status": "stored",
        "results": outcome.results,
        "matched": outcome.matched,
        "suppressed": outcome.suppressed,
    }


async def record_event(svc: Pipeline, message_id: str, event: SesEvent) -> FeedbackOutcome:
    """Store one SES record once per ``message_id`` and act on it, however it came
    (SNS over HTTP, or SQS): claimed rows to suppressed addresses are withheld, and
    a permanent bounce or a complaint has the reputation guard check its topic.
    Raises :class:`~mailpipe.errors.StoreError` when nothing could be stored."""
    outcome = await svc.store.record_feedback(message_id, event, utcnow())
    # Rows already claimed for these addresses are stopped before they are handed.
    svc.suppressed(outcome.suppressions)
    if not outcome.duplicate and (event.permanent_bounce or event.complaint):
        svc.bad_feedback(outcome.request_ids)
    return outcome


async def _confirm_subscription(svc: Pipeline, msg: SnsMessage) -> dict[str, Any]:
    topic, url = msg["TopicArn"], msg["SubscribeURL"]
    try:
        check_sns_url(url)
    except SnsRejected as exc:
        log.warning("SubscriptionConfirmation for %s refused, not visited: %s", topic, exc.reason)
        raise ApiError(403, "SubscribeURL is not an SNS endpoint") from None
    try:
        await trio.to_thread.run_sync(svc.sns_get, url)
    except CertUnavailable as exc:  # what the GET raises for any failure
        log.warning("could not confirm the SNS subscription to %s: %s", topic, exc)
        raise ApiError(502, "subscription not confirmed; retry later") from None
    log.info("confirmed the SNS subscription to %s", topic)
    return {"status": "confirmed"}


class SnsFastPath:
    """ASGI middleware serving ``POST /v1/events/results`` without Quart.

    SES feedback arrives in bursts of small POSTs. Quart's request machinery
    (context, routing, body streaming) cost more than verifying and storing a
    notification, so this path reads the body straight from ASGI and answers
    with :func:`handle_sns`; its answers, errors included, are those of
    :func:`~mailpipe.http.app.error_response`, as Quart's are.
    """

    PATH: Final = "/v1/events/results"

    def __init__(self, app: Any, svc: Pipeline) -> None:
        self.app = app
        self.svc = svc

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one ASGI scope."""
        if scope["type"] != "http" or scope["path"] != self.PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        extra: dict[str, str] = {}
        try:
            body = await _receive_body(receive, MAX_BODY_BYTES)
            status, answer = 200, await handle_sns(self.svc, body, client[0] if client else None)
        except Exception as exc:
            status, answer, extra = error_response(exc, f"POST {self.PATH}")
        payload = json.dumps(answer).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in extra.items()),
        ]
        if status in (408, 413):  # the body was not read to the end
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


BODY_TIMEOUT: Final = 60.0
"""Seconds a client may take to send an SNS message body."""


async def _receive_body(receive: Any, limit: int) -> bytes:
    body = bytearray()
    with trio.move_on_after(BODY_TIMEOUT) as scope:
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                raise ApiError(400, "client disconnected")
            body += event.get("body", b"")
            if len(body) > limit:
                raise ApiError(413, f"SNS message over {limit} bytes")
            if not event.get("more_body", False):
                return bytes(body)
    assert scope.cancelled_caught
    raise ApiError(408, "request body not received in time")
