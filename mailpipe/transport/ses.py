"""Amazon SES v2 transport (boto3 ``sesv2``).

boto3 honours ``AWS_ENDPOINT_URL_SESV2`` / ``AWS_ENDPOINT_URL`` on its own, so
any SES-compatible endpoint works without code here.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.stub import Stubber

from mailpipe.errors import TransientSendError
from mailpipe.transport import AccountState, Email, Release, SendResult, hold_until
from mailpipe.transport.classify import classify, classify_bulk_status

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
        # The transport builds every request itself; validating each 50-entry
        # bulk call again cost about a quarter of the sender's CPU.
        parameter_validation=False,
    )
    client: SESV2Client = boto3.session.Session().client("sesv2", config=config)
    return client


# SES limits ReplacementTemplateData to 262,144 characters per entry; an email
# whose rendered parts do not fit goes out on its own with SendEmail.
MAX_REPLACEMENT_DATA = 262_144
# A minimal inline template: every part is a replacement value, so each entry
# carries its fully rendered subject, HTML and text. SES substitutes inline
# templates plainly and does not escape HTML.
BULK_TEMPLATE = {"Subject": "{{subject}}", "Html": "{{html}}", "Text": "{{text}}"}
BULK_TEMPLATE_NO_TEXT = {"Subject": "{{subject}}", "Html": "{{html}}"}


# A bare HTTP 404 (no AWS error code) means the endpoint lacks the operation;
# SES's own NotFoundException (an unknown configuration set) is a permanent error.
UNSUPPORTED_CODES = frozenset({"404", "HTTP404", "UnknownOperationException"})


class SesTransport:
    """Sends one email with ``SendEmail`` and up to 50 with one ``SendBulkEmail``.

    Every recipient keeps its own headers (``X-Request-ID``, List-Unsubscribe),
    tags and rendered content in a bulk call, and each entry's result maps back
    to its email.
    """

    name = "ses"
    max_batch = 50

    def __init__(self, client: SESV2Client, *, config_set: str | None = None) -> None:
        self.client = client
        self.config_set = config_set
        self._local = threading.local()
        self.bulk_supported = True
        # Runs in the calling thread after the request is built and signed,
        # right before it goes on the wire: the permit is honoured there.
        client.meta.events.register("before-send.sesv2", self._hold)
        client.meta.events.register("before-call.sesv2.SendBulkEmail", self._swap_body)

    def _hold(self, **_: Any) -> None:
        # A missed release raises out of botocore before anything is sent, and
        # stays set: every call of this send then misses it too.
        hold_until(getattr(self._local, "release", None))
        self._local.release = None  # later calls of the same send go at once

    def _swap_body(self, params: dict[str, Any], **_: Any) -> None:
        # botocore's generic serializer walks every entry of a bulk call in
        # Python and took a third of the sender's CPU; the body is plain JSON
        # of the same fields, so json.dumps (in C) produces it instead. It is
        # swapped in before signing, so the signature covers it.
        body = getattr(self._local, "body", None)
        if body is not None:
            params["body"] = body
            self._local.body = None

    def send(self, emails: Sequence[Email], release: Release | None = None) -> list[SendResult]:
        """Send ``emails`` (one content): a bulk call where possible, released at ``release``."""
        self._local.release = release
        try:
            if len(emails) == 1:
                return [self._send_one(emails[0])]
            return self._send_bulk(emails)
        finally:
            self._local.release = None

    def _send_bulk(self, emails: Sequence[Email]) -> list[SendResult]:
        data = [_replacement_data(email) for email in emails]
        bulk = [i for i, d in enumerate(data) if len(d) <= MAX_REPLACEMENT_DATA]
        results: dict[int, SendResult] = {}
        if len(bulk) == 1:
            results[bulk[0]] = self._send_one(emails[bulk[0]])
        elif bulk:
            results.update(
                zip(
                    bulk,
                    self._bulk_call([emails[i] for i in bulk], [data[i] for i in bulk]),
                    strict=True,
                )
            )
        for i in range(len(emails)):
            if i not in results:
                results[i] = self._send_one(emails[i])
        return [results[i] for i in range(len(emails))]

    def _bulk_call(self, emails: Sequence[Email], data: Sequence[str]) -> list[SendResult]:
        with_text = all(email.text is not None for email in emails)
        kwargs: dict[str, Any] = {
            "FromEmailAddress": emails[0].sender,
            "DefaultContent": {
                "Template": {
                    "TemplateContent": BULK_TEMPLATE if with_text else BULK_TEMPLATE_NO_TEXT,
                    "TemplateData": "{}",
                }
            },
            "BulkEmailEntries": [
                {
                    "Destination": {"ToAddresses": [email.to]},
                    "ReplacementEmailContent": {
                        "ReplacementTemplate": {"ReplacementTemplateData": entry_data}
                    },
                    "ReplacementHeaders": [{"Name": n, "Value": v} for n, v in email.headers],
                    "ReplacementTags": [{"Name": n, "Value": v} for n, v in email.tags],
                }
                for email, entry_data in zip(emails, data, strict=True)
            ],
        }
        if self.config_set:
            kwargs["ConfigurationSetName"] = self.config_set
        self._local.body = json.dumps(kwargs, ensure_ascii=False).encode()
        if not self.bulk_supported:
            return [self._send_one(email) for email in emails]
        try:
            response = self.client.send_bulk_email(
                FromEmailAddress=kwargs["FromEmailAddress"],
                DefaultContent=kwargs["DefaultContent"],
                BulkEmailEntries=[],  # the real entries are in the swapped body
            )
        except Exception as exc:  # the whole call failed: every entry shares the error
            error = classify(exc)
            if error.code in UNSUPPORTED_CODES:
                # An SES-compatible endpoint without SendBulkEmail (moto, some
                # emulators) answers a bare 404: use single sends from now on.
                log.warning("the SES endpoint has no SendBulkEmail (%s); sending singly", error)
                self.bulk_supported = False
                return [self._send_one(email) for email in emails]
            return [SendResult(error=error) for _ in emails]
        finally:
            self._local.body = None
        entries = response.get("BulkEmailEntryResults", [])
        if len(entries) != len(emails):
            error = TransientSendError(
                "BulkResultMismatch",
                f"{len(entries)} results for {len(emails)} entries",
                maybe_sent=True,
            )
            return [SendResult(error=error) for _ in emails]
        return [_entry_result(entry) for entry in entries]

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

    def warm_up(self, sender: str) -> None:
        """Build one request of each kind without sending it.

        botocore loads an operation's model, serializer and endpoint rules on
        its first call (about 80 ms for SendBulkEmail here); done at start-up,
        the first real call leaves on its permit instead of late.
        """
        entry: Any = {"Destination": {"ToAddresses": [sender]}}
        template: Any = BULK_TEMPLATE
        with Stubber(self.client) as stub:
            stub.add_response("send_bulk_email", {"BulkEmailEntryResults": []})
            stub.add_response("send_email", {"MessageId": "warm-up"})
            self.client.send_bulk_email(
                FromEmailAddress=sender,
                DefaultContent={"Template": {"TemplateContent": template, "TemplateData": "{}"}},
                BulkEmailEntries=[entry],
            )
            self.client.send_email(
                FromEmailAddress=sender,
                Destination={"ToAddresses": [sender]},
                Content={"Simple": {"Subject": {"Data": "-"}, "Body": {"Html": {"Data": "-"}}}},
            )

    def account_blocker(self) -> str | None:
        """None when ``GetAccount`` says the account may send, else why not."""
        try:
            account = self.get_account()
        except Exception as exc:  # classified: a failing probe just keeps the pause
            error = classify(exc)
            return f"GetAccount failed: {error}"
        if not account.get("SendingEnabled", True):
            return "SendingEnabled is false"
        if account.get("EnforcementStatus") == "SHUTDOWN":
            return "EnforcementStatus is SHUTDOWN"
        return None

    def account_state(self) -> AccountState:
        """``GetAccount``'s quota, EnforcementStatus and SendingEnabled."""
        try:
            account = self.get_account()
        except Exception as exc:  # classified, reported as the state's error
            return AccountState(error=str(classify(exc)))
        quota = account.get("SendQuota") or {}
        return AccountState(
            max_24_hour_send=quota.get("Max24HourSend"),
            max_send_rate=quota.get("MaxSendRate"),
            sent_last_24_hours=quota.get("SentLast24Hours"),
            enforcement_status=account.get("EnforcementStatus"),
            sending_enabled=account.get("SendingEnabled"),
        )

    def close(self) -> None:
        """Close the client's connection pool."""
        self.client.close()


def _replacement_data(email: Email) -> str:
    values = {"subject": email.subject, "html": email.html}
    if email.text is not None:
        values["text"] = email.text
    return json.dumps(values, ensure_ascii=False)


def _entry_result(entry: Mapping[str, Any]) -> SendResult:
    status = str(entry.get("Status", ""))
    if status == "SUCCESS":
        # Sent, even if SES left out the id: retrying would send it twice.
        return SendResult(message_id=str(entry.get("MessageId") or "unknown"))
    return SendResult(error=classify_bulk_status(status, str(entry.get("Error", ""))))
