"""Exceptions raised by mailpipe.

    MailpipeError
     ├── ConfigError            a setting is missing or invalid
     ├── StoreError             the database failed
     │    └── StoreInUse         another mailpipe holds this SQLite database
     ├── KeyReused              an Idempotency-Key came back with another body
     ├── LeaseLost              another instance took this instance's claims over
     └── SendError              a transport could not hand a message to SES
          ├── Throttled          SES refused for rate: retry later, slow down
          ├── TransientSendError temporary failure: retry with backoff
          ├── PermanentSendError this message will never be accepted
          └── SendingPaused      the account cannot send at all right now
"""

from __future__ import annotations


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


class StoreInUse(StoreError):
    """Another mailpipe process holds the SQLite database (one instance per file)."""


class KeyReused(MailpipeError):
    """The idempotency key was used before with a different body."""


class LeaseLost(MailpipeError):
    """This instance missed its heartbeat so long that others took its claimed rows."""
