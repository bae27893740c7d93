"""Sort every SES failure into one of the four things mailpipe does about it.

A pure function over exceptions; no I/O. See the table in ``tests/test_classify.py``.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from mailpipe.errors import (
    PermanentSendError,
    SendError,
    SendingPaused,
    Throttled,
    TransientSendError,
)

THROTTLING_CODES = frozenset(
    {"TooManyRequestsException", "LimitExceededException", "Throttling", "ThrottlingException"}
)
ACCOUNT_CODES = frozenset({"SendingPausedException", "AccountSuspendedException"})
# Credentials or permissions are wrong: no message can go out until a person
# fixes it, so hold everything rather than fail the whole list.
AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
    }
)
PERMANENT_CODES = frozenset(
    {
        "MessageRejected",
        "MailFromDomainNotVerifiedException",
        "MailFromDomainNotVerified",
        "BadRequestException",
        "NotFoundException",
        "InvalidParameterValue",
        "ValidationException",
        "ConfigurationSetDoesNotExist",
    }
)


def classify(exc: BaseException) -> SendError:
    """The :class:`SendError` subclass that says how to treat ``exc``.

    ``Throttled``: retry later and slow down. ``TransientSendError``: retry with
    backoff (``maybe_sent`` when SES may have accepted it before the failure).
    ``PermanentSendError``: fail the request now. ``SendingPaused``: stop all
    sending until the account can send again.
    """
    if isinstance(exc, SendError):
        return exc
    if isinstance(exc, ClientError):
        return classify_code(
            str(exc.response.get("Error", {}).get("Code", "")),
            str(exc.response.get("Error", {}).get("Message", "")),
            int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0),
        )
    if isinstance(exc, ReadTimeoutError | ConnectionClosedError):
        # The request reached SES; it may have been accepted.
        return TransientSendError(type(exc).__name__, str(exc), maybe_sent=True)
    if isinstance(exc, ConnectTimeoutError | EndpointConnectionError):
        return TransientSendError(type(exc).__name__, str(exc))
    if isinstance(exc, BotoCoreError | OSError):
        return TransientSendError(type(exc).__name__, str(exc), maybe_sent=True)
    return TransientSendError(type(exc).__name__, str(exc), maybe_sent=True)


def classify_code(code: str, message: str, http_status: int = 0) -> SendError:
    """Classify a provider error code (also used for per-entry bulk results)."""
    if "daily message quota exceeded" in message.lower():
        # Retrying at any rate is pointless until the 24-hour window moves on:
        # hold everything and let the probe look again.
        return SendingPaused(code or "Throttling", message)
    if code in THROTTLING_CODES or "maximum sending rate exceeded" in message.lower():
        return Throttled(code or "Throttling", message)
    if code in ACCOUNT_CODES or code in AUTH_CODES:
        return SendingPaused(code, message)
    if code in PERMANENT_CODES:
        return PermanentSendError(code, message)
    if http_status == 429:
        return Throttled(code or "HTTP429", message)
    if http_status >= 500 or http_status == 0:
        return TransientSendError(code or f"HTTP{http_status}", message, maybe_sent=True)
    if http_status == 403:
        return SendingPaused(code or "HTTP403", message)
    return PermanentSendError(code or f"HTTP{http_status}", message)


# SendBulkEmail reports each entry's fate as a status; map it to the error code
# the same failure has in a single SendEmail, then classify as usual.
BULK_STATUS_CODES = {
    "MESSAGE_REJECTED": "MessageRejected",
    "MAIL_FROM_DOMAIN_NOT_VERIFIED": "MailFromDomainNotVerifiedException",
    "CONFIGURATION_SET_NOT_FOUND": "NotFoundException",
    "TEMPLATE_NOT_FOUND": "NotFoundException",
    "INVALID_SENDING_POOL_NAME": "BadRequestException",
    "INVALID_PARAMETER": "BadRequestException",
    "ACCOUNT_SUSPENDED": "AccountSuspendedException",
    "ACCOUNT_SENDING_PAUSED": "SendingPausedException",
    "CONFIGURATION_SET_SENDING_PAUSED": "SendingPausedException",
    "ACCOUNT_THROTTLED": "TooManyRequestsException",
    "ACCOUNT_DAILY_QUOTA_EXCEEDED": "SendingPausedException",
}


def classify_bulk_status(status: str, message: str) -> SendError:
    """Classify one failed ``SendBulkEmail`` entry (``TRANSIENT_FAILURE``, ``FAILED`` and
    unknown statuses are retried)."""
    code = BULK_STATUS_CODES.get(status)
    if code is None:
        return TransientSendError(status, message)
    return classify_code(code, message)
