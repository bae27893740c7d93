"""A transport whose answers come from a function: the test seam of the sender pool.

In the style of ``httpx.MockTransport``: ``MockTransport(handler)`` calls
``handler(emails)`` (in the pool's worker thread) for each call and returns
what it returns, one :class:`~mailpipe.transport.SendResult` per email.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mailpipe.transport import AccountState, Email, Release, SendResult

Handler = Callable[[Sequence[Email]], list[SendResult]]


def accept_all(emails: Sequence[Email]) -> list[SendResult]:
    """Every email sent, with a message id made from its request id."""
    return [SendResult(message_id=f"mock-{email.request_id}") for email in emails]


class MockTransport:
    """A :class:`~mailpipe.transport.Transport` answering with ``handler``."""

    name = "mock"

    def __init__(
        self, handler: Handler = accept_all, *, max_batch: int = 50, blocker: str | None = None
    ) -> None:
        self.handler = handler
        self.max_batch = max_batch
        self.blocker = blocker
        """What :meth:`account_blocker` answers (None: the account can send)."""
        self.calls: list[list[Email]] = []
        """Every call's emails, in order."""

    def send(self, emails: Sequence[Email], release: Release | None = None) -> list[SendResult]:
        """Record the call and answer with ``handler`` (``release`` is not waited for)."""
        self.calls.append(list(emails))
        return self.handler(emails)

    def account_blocker(self) -> str | None:
        """``blocker``."""
        return self.blocker

    def account_state(self) -> AccountState:
        """No quota to report; this transport can always send."""
        return AccountState(sending_enabled=True)

    def close(self) -> None:
        """Nothing to release."""
