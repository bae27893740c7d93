"""Exceptions raised by mailpipe.

MailpipeError
 ├── ConfigError            a setting is missing or invalid
 ├── StoreError             the database failed or is away
 │    └── StoreInUse         another mailpipe holds this SQLite database
 ├── LeaseLost              another instance took this instance's claims over
 ├── RequestInvalid         a send request that cannot be accepted as it is
 │    └── RequestTooLarge    ... because of its size
 ├── InvalidAddress         not an email address SES can send to
 ├── TemplateError          a template cannot be compiled or rendered
 ├── LimitExceeded          a render went over one of its bounds
 ├── KeyReused              an Idempotency-Key came back with another body
 ├── FeedbackError          a text that is not an SES feedback record
 │    └── TooManyRecipients  an SES record naming more recipients than SES does
 ├── SnsRejected            an SNS message that is not verifiably from SNS
 ├── CertUnavailable        an SNS signing certificate cannot be had now
 │    └── CertNotFound       ... because SNS says it does not exist
 ├── ApiError               an HTTP answer a handler gives (it has a status)
 └── SendError              a transport could not hand a message to SES
      ├── Throttled          SES refused for rate: retry later, slow down
      ├── TransientSendError temporary failure: retry with backoff
      ├── PermanentSendError this message will never be accepted
      └── SendingPaused      the account cannot send at all right now
"""

from __future__ import annotations

from typing import Any


class MailpipeError(Exception):
    """Base class of every error mailpipe raises on purpose."""


class ConfigError(MailpipeError):
    """A setting is invalid; the message names the variable."""


class StoreError(MailpipeError):
    """The store could not complete an operation."""


class SendError(MailpipeError):
    """A transport call failed; ``code`` is the provider's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class Throttled(SendError):
    """The provider refused for rate; the message should be retried."""


class TransientSendError(SendError):
    """A temporary failure; ``maybe_sent`` when the provider may have accepted it."""

    def __init__(self, code: str, message: str, *, maybe_sent: bool = False) -> None:
        super().__init__(code, message)
        self.maybe_sent = maybe_sent


class PermanentSendError(SendError):
    """The provider will never accept this message."""


class SendingPaused(SendError):
    """The account may not send at all (paused or suspended)."""


class ReleaseMissed(SendError):
    """The call could not leave within its permit's slack, so it did not leave:
    it needs a new permit (see :mod:`mailpipe.pipeline.limiter`)."""


class StoreInUse(StoreError):
    """Another mailpipe process holds the SQLite database (one instance per file)."""


class KeyReused(MailpipeError):
    """The idempotency key was used before with a different body."""


class LeaseLost(MailpipeError):
    """This instance missed its heartbeat so long that others took its claimed rows."""


class RequestInvalid(MailpipeError):
    """A send request that cannot be accepted as it is; the message says where and why."""


class RequestTooLarge(RequestInvalid):
    """A send request over a size limit (recipients, bytes)."""


class InvalidAddress(MailpipeError):
    """An address that is not valid email syntax; ``reason`` says why."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"invalid email address {address!r}: {reason}")
        self.address = address
        self.reason = reason


class TemplateError(MailpipeError):
    """A template cannot be compiled or rendered.

    ``field`` is ``"subject"``, ``"content"`` (the HTML) or ``"text"``;
    ``recipient`` is set when the failure is specific to one recipient's data.
    """

    def __init__(self, field: str, detail: str, *, recipient: str | None = None) -> None:
        where = f"recipient {recipient}: {field}" if recipient is not None else field
        super().__init__(f"{where}: {detail}")
        self.field = field
        self.detail = detail
        self.recipient = recipient

    def for_recipient(self, recipient: str) -> TemplateError:
        """Return the same error, attributed to ``recipient``."""
        return TemplateError(self.field, self.detail, recipient=recipient)


class LimitExceeded(MailpipeError):
    """A render went over one of its bounds; the message names the bound."""

    @property
    def message(self) -> str:
        """The bound exceeded (what ``TemplateError`` shows)."""
        return str(self)


class FeedbackError(MailpipeError):
    """A text that is not an SES feedback record at all."""


class TooManyRecipients(FeedbackError):
    """An SES record naming more recipients than ``limit``: refused, not stored."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"SES record names {count} recipients; at most {limit}")
        self.count = count


class SnsRejected(MailpipeError):
    """An SNS message was refused; ``reason`` is short, specific and safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CertUnavailable(MailpipeError):
    """The signing certificate could not be obtained now; a retry may succeed."""


class CertNotFound(CertUnavailable):
    """The SNS host answered that the certificate does not exist (403, 404, 410).

    SNS never signs with a certificate it does not serve, so this names a
    made-up one; ``CertStore`` does not ask for the same name again for a while.
    """


class ApiError(MailpipeError):
    """An answer a handler gives: ``{"error": message, **extra}`` with ``status``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra
