"""The SQS intake: SES feedback pulled from an SQS queue (``SQS_QUEUE_URL``).

One long poll at a time (boto3 ``sqs`` in a worker thread, never abandoned:
``SQS_WAIT_S`` bounds how long a shutdown waits for it), up to ten messages
each. Every message is read (:mod:`mailpipe.feedback.sqs`), verified with the
same SNS verifier as ``POST /v1/events/results`` when SNS-wrapped, and stored
and acted on by the same :func:`~mailpipe.http.feedback.record_event`. A
message is deleted only after its record was committed (or was a duplicate);
one that cannot be read or verified is left for the queue's redrive policy and
logged once; one that could not be stored is left to be received again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import boto3
import trio
from botocore.config import Config as BotoConfig

from mailpipe.errors import CertUnavailable, FeedbackError, SnsRejected, StoreError
from mailpipe.feedback.ses_events import parse_ses_event
from mailpipe.feedback.sns import NOTIFICATION
from mailpipe.feedback.sqs import read_body
from mailpipe.http.feedback import record_event
from mailpipe.lru import BoundedCache

if TYPE_CHECKING:
    from mailpipe.http.facade import Pipeline

log = logging.getLogger(__name__)

BATCH: Final = 10
"""Messages per receive: SQS's maximum."""
RETRY_S: Final = 5.0
"""Seconds between receives after the queue did not answer."""
LOGGED: Final = 10_000
"""Unreadable messages remembered so each is logged once, not at every redelivery."""


def make_sqs_client(region: str, wait_s: int) -> Any:
    """An ``sqs`` client whose read timeout outlasts a long poll."""
    config = BotoConfig(region_name=region, read_timeout=wait_s + 10, connect_timeout=5,
                        retries={"mode": "standard", "total_max_attempts": 3})
    return boto3.session.Session().client("sqs", config=config)


class SqsIntake:
    """Owner of the queue's client and of its one worker thread."""

    def __init__(
        self, svc: Pipeline, client: Any, queue_url: str, *, raw_allowed: bool, wait_s: int
    ) -> None:
        self._svc = svc
        self._client = client
        self._url = queue_url
        self._raw = raw_allowed
        self._wait_s = wait_s
        self._thread = trio.CapacityLimiter(1)
        self._logged: BoundedCache[str, bool] = BoundedCache(LOGGED)
        self._failing = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive, store and delete until cancelled."""
        log.info("reading SES feedback from SQS queue %s (raw messages %s)",
                 self._url, "accepted" if self._raw else "refused")
        task_status.started()
        while True:
            try:
                messages = await trio.to_thread.run_sync(self._receive, limiter=self._thread)
            except Exception as exc:  # botocore: the queue is away or refuses us
                if not self._failing:
                    log.error("cannot receive from SQS queue %s (retrying every %gs): %s",
                              self._url, RETRY_S, exc)
                self._failing = True
                await trio.sleep(RETRY_S)
                continue
            if self._failing:
                log.warning("receiving from SQS queue %s again", self._url)
                self._failing = False
            done = [m["ReceiptHandle"] for m in messages if await self._handle(m)]
            if done:
                await self._delete(done)

    def _receive(self) -> list[dict[str, Any]]:
        answer = self._client.receive_message(
            QueueUrl=self._url, MaxNumberOfMessages=BATCH, WaitTimeSeconds=self._wait_s,
        )
        return list(answer.get("Messages", []))

    async def _handle(self, message: dict[str, Any]) -> bool:
        """Store the message's record; True when it may be deleted."""
        sqs_id = str(message.get("MessageId", ""))
        try:
            record = read_body(str(message.get("Body", "")), sqs_id, raw_allowed=self._raw)
            if record.sns is not None:
                if record.sns["Type"] != NOTIFICATION:
                    raise FeedbackError(f"SNS {record.sns['Type']} is not a notification")
                await trio.to_thread.run_sync(self._svc.sns_verifier.verify, record.sns)
            event = parse_ses_event(record.text)
        except (FeedbackError, SnsRejected) as exc:
            self._unreadable(sqs_id, exc)
            return False
        except CertUnavailable as exc:
            log.warning("SQS message %s not verifiable now (received again later): %s",
                        sqs_id, exc)
            return False
        try:
            outcome = await record_event(self._svc, record.dedup_id, event)
        except StoreError as exc:
            log.error("SQS message %s not stored (received again later): %s", sqs_id, exc)
            return False
        if outcome.duplicate:
            log.info("SQS message %s was already stored (%s)", sqs_id, record.dedup_id)
        return True

    def _unreadable(self, sqs_id: str, exc: Exception) -> None:
        if self._logged.get(sqs_id) is None:
            self._logged.put(sqs_id, True)
            log.warning("SQS message %s refused and left for the queue's redrive policy: %s",
                        sqs_id, exc)

    async def _delete(self, receipts: list[str]) -> None:
        entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)]

        def delete() -> Any:
            return self._client.delete_message_batch(QueueUrl=self._url, Entries=entries)

        try:
            answer = await trio.to_thread.run_sync(delete, limiter=self._thread)
        except Exception as exc:  # stored already: a redelivery is deduplicated
            log.warning("could not delete %d stored SQS messages (their redelivery is"
                        " deduplicated): %s", len(receipts), exc)
            return
        for failed in answer.get("Failed", []):
            log.warning("SQS did not delete a stored message (%s)", failed.get("Message"))
