"""Amazon SES v2 transport (boto3 ``sesv2``).

boto3 honours ``AWS_ENDPOINT_URL_SESV2`` / ``AWS_ENDPOINT_URL`` on its own, so
any SES-compatible endpoint works without code here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config as BotoConfig

from mailpipe.transport import Email, SendResult, hold_until
from mailpipe.transport.classify import classify

if TYPE_CHECKING:
    from mypy_boto3_sesv2 import SESV2Client

log = logging.getLogger(__name__)


def make_client(region: str, max_concurrent: int) -> SESV2Client:
    """One sesv2 client for all threads, with a pool as large as the concurrency.

    botocore's own retries are off (``total_max_attempts=1``; its ``max_attempts``
    counts retries, not attempts): a retry inside botocore would
    hide throttling from the limiter, hold a concurrency slot while it sleeps,
    and re-send after a timeout without the sender counting it. The sender pool
    classifies each failure and retries itself.
    """
    config = BotoConfig(
        region_name=region,
        max_pool_connections=max(10, max_concurrent),
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=20,
        tcp_keepalive=True,
    )
    client: SESV2Client = boto3.session.Session().client("sesv2", config=config)
    return client


class SesTransport:
    """Sends each email with ``SendEmail`` (Simple content, headers, tags)."""

    name = "ses"
    max_batch = 1

    def __init__(self, client: SESV2Client, *, config_set: str | None = None) -> None:
        self.client = client
        self.config_set = config_set
        self._local = threading.local()
        # Runs in the calling thread after the request is built and signed,
        # right before it goes on the wire: the permit is honoured there.
        client.meta.events.register("before-send.sesv2", self._hold)

    def _hold(self, **_: Any) -> None:
        hold_until(getattr(self._local, "release_at", None))
        self._local.release_at = None  # later calls of the same send go at once

    def send(self, emails: Sequence[Email], release_at: float | None = None) -> list[SendResult]:
        """Send each email with its own ``SendEmail`` call, the first at ``release_at``."""
        self._local.release_at = release_at
        try:
            return [self._send_one(email) for email in emails]
        finally:
            self._local.release_at = None

    def _send_one(self, email: Email) -> SendResult:
        body: dict[str, Any] = {"Html": {"Data": email.html, "Charset": "UTF-8"}}
        if email.text is not None:
            body["Text"] = {"Data": email.text, "Charset": "UTF-8"}
        kwargs: dict[str, Any] = {
            "FromEmailAddress": email.sender,
            "Destination": {"ToAddresses": [email.to]},
            "Content": {
                "Simple": {
                    "Subject": {"Data": email.subject, "Charset": "UTF-8"},
                    "Body": body,
                    "Headers": [{"Name": n, "Value": v} for n, v in email.headers],
                }
            },
            "EmailTags": [{"Name": n, "Value": v} for n, v in email.tags],
        }
        if self.config_set:
            kwargs["ConfigurationSetName"] = self.config_set
        try:
            response = self.client.send_email(**kwargs)
        except Exception as exc:  # classified, never swallowed: the result carries it
            return SendResult(error=classify(exc))
        return SendResult(message_id=response["MessageId"])

    def get_account(self) -> dict[str, Any]:
        """The account's sending state and quota (``GetAccount``)."""
        response: dict[str, Any] = dict(self.client.get_account())
        return response

    def close(self) -> None:
        """Close the client's connection pool."""
        self.client.close()
