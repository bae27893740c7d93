"""Every SES failure sorted into one of four treatments (a pure function)."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from urllib3.exceptions import ProtocolError

from mailpipe.errors import (
    PermanentSendError,
    SendError,
    SendingPaused,
    Throttled,
    TransientSendError,
)
from mailpipe.transport.classify import classify


def client_error(code: str, message: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message},
         "ResponseMetadata": {"HTTPStatusCode": status}},
        "SendEmail",
    )


TABLE: list[tuple[BaseException, type[SendError], bool]] = [
    # throttled: retry later, slow down, never a failure
    (client_error("TooManyRequestsException", "Maximum sending rate exceeded.", 429),
     Throttled, False),
    (client_error("LimitExceededException", "Too many instances", 400), Throttled, False),
    (client_error("Throttling", "Maximum sending rate exceeded.", 400), Throttled, False),
    (client_error("Throttling", "Daily message quota exceeded.", 400), SendingPaused, False),
    (client_error("SomethingNew", "Maximum sending rate exceeded.", 400), Throttled, False),
    (client_error("", "", 429), Throttled, False),
    # transient: retry with backoff up to MAX_ATTEMPTS
    (client_error("InternalFailure", "boom", 500), TransientSendError, True),
    (client_error("ServiceUnavailable", "later", 503), TransientSendError, True),
    (ReadTimeoutError(endpoint_url="https://email"), TransientSendError, True),
    (ConnectionClosedError(endpoint_url="https://email"), TransientSendError, True),
    (ConnectTimeoutError(endpoint_url="https://email"), TransientSendError, False),
    (EndpointConnectionError(endpoint_url="https://email"), TransientSendError, False),
    (ProtocolError("Connection aborted."), TransientSendError, True),
    (ConnectionResetError(104, "reset"), TransientSendError, True),
    # permanent: fail now, with SES's code and message
    (client_error("MessageRejected", "Email address is not verified.", 400),
     PermanentSendError, False),
    (client_error("MailFromDomainNotVerifiedException", "not verified", 400),
     PermanentSendError, False),
    (client_error("BadRequestException", "bad", 400), PermanentSendError, False),
    (client_error("NotFoundException", "no such config set", 404), PermanentSendError, False),
    (client_error("UnknownClientError", "?", 400), PermanentSendError, False),
    # account: pause everything, keep rows pending
    (client_error("SendingPausedException", "paused", 400), SendingPaused, False),
    (client_error("AccountSuspendedException", "suspended", 400), SendingPaused, False),
    (client_error("UnrecognizedClientException", "bad key", 403), SendingPaused, False),
    (client_error("AccessDeniedException", "no ses:SendEmail", 403), SendingPaused, False),
]


@pytest.mark.parametrize(("exc", "kind", "maybe_sent"), TABLE,
                         ids=[f"{type(e).__name__}-{i}" for i, (e, _, _) in enumerate(TABLE)])
def test_classification(exc: BaseException, kind: type[SendError], maybe_sent: bool) -> None:
    result = classify(exc)
    assert type(result) is kind
    if isinstance(result, TransientSendError):
        assert result.maybe_sent is maybe_sent


def test_error_text_keeps_the_ses_code_and_message() -> None:
    error = classify(client_error("MessageRejected", "Email address is not verified.", 400))
    assert str(error) == "MessageRejected: Email address is not verified."
    assert error.code == "MessageRejected"
