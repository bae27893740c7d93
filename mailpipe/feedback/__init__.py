"""SES feedback delivered over SNS: verify the SNS envelope, then read the SES record."""

from mailpipe.errors import (
    CertNotFound,
    CertUnavailable,
    FeedbackError,
    SnsRejected,
    TooManyRecipients,
)
from mailpipe.feedback.ses_events import MAX_RECIPIENTS, SesEvent, parse_ses_event
from mailpipe.feedback.sns import (
    CertStore,
    SnsMessage,
    SnsVerifier,
    check_cert_url,
    check_sns_url,
    http_fetch,
    parse_sns,
    string_to_sign,
)

__all__ = [
    "MAX_RECIPIENTS",
    "CertNotFound",
    "CertStore",
    "CertUnavailable",
    "FeedbackError",
    "SesEvent",
    "SnsMessage",
    "SnsRejected",
    "SnsVerifier",
    "TooManyRecipients",
    "check_cert_url",
    "check_sns_url",
    "http_fetch",
    "parse_ses_event",
    "parse_sns",
    "string_to_sign",
]
