"""SES feedback delivered over SNS: verify the SNS envelope, then read the SES record."""

from mailpipe.feedback.ses_events import (
    MAX_RECIPIENTS,
    FeedbackError,
    SesEvent,
    TooManyRecipients,
    parse_ses_event,
)
from mailpipe.feedback.sns import (
    CertNotFound,
    CertStore,
    CertUnavailable,
    SnsMessage,
    SnsRejected,
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
