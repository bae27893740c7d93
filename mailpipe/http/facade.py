"""What the HTTP edge needs of the rest of mailpipe: the :class:`Pipeline` protocol.

Handlers take a ``Pipeline`` and nothing else: the settings and signers they
read, the store for what they look up, and the few operations that touch the
running pipeline (accepting a send, stopping a topic, suppressing and lifting
addresses, readiness, metrics). The service implements it; tests can pass a
small fake. Each rule behind an operation sits next to the state it protects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import trio

from mailpipe.addresses import AddressValidator
from mailpipe.config import Config
from mailpipe.content.tokens import Tokens
from mailpipe.feedback.sns import SnsVerifier
from mailpipe.model import Figures, IdempotencyKey, InsertResult, NewMessage
from mailpipe.store.base import Store
from mailpipe.transport import AccountState


class Pipeline(Protocol):
    """The running mailpipe, as the HTTP handlers see it."""

    config: Config
    api_key: str
    store: Store
    """For reads, and for writes that no actor holds state about."""
    tokens: Tokens
    """Signs and checks the open, click and unsubscribe links."""
    base_url: str
    """Where links in emails point (``SERVER_HOST`` or this instance as bound)."""
    sns_verifier: SnsVerifier

    @property
    def sns_get(self) -> Callable[[str], bytes]:
        """GETs SNS certificates and SubscribeURLs (blocking: run it in a thread)."""

    addresses: AddressValidator

    @property
    def send_rate(self) -> float:
        """The rate sends are held to: ``EMAIL_RATE``, capped at start by the SES
        account's MaxSendRate."""

    cpu_limiter: trio.CapacityLimiter
    """Bounds CPU-heavy request work (validation) run in threads."""

    async def accept(
        self, messages: Sequence[NewMessage], key: IdempotencyKey | None
    ) -> InsertResult:
        """Store a validated send (one transaction) and wake the scheduler if any is due."""

    async def stop_topic(self, topic_id: str) -> int:
        """Stop every request of the topic not yet handed to SES; how many."""

    def webhooks_due(self) -> None:
        """A webhook delivery was made due now (a retry by hand): deliver it soon."""
    async def pause_topic(self, topic_id: str, reason: str) -> bool | None:
        """Pause the topic by hand; None when it has no requests, False when paused already."""

    async def resume_topic(self, topic_id: str) -> bool | None:
        """Resume the topic; None when it has no requests, False when it was not paused."""

    async def resume_account(self) -> bool:
        """Lift the account's pause; False when there was none."""

    async def reputation(self, topic_id: str | None) -> Figures:
        """The topic's (None: the account's) figures over the reputation window."""

    async def account_state(self) -> AccountState:
        """What the provider says of the account now."""

    def bad_feedback(self, request_ids: Iterable[int]) -> None:
        """A permanent bounce or a complaint about these requests was stored."""

    def suppressed(self, entries: Iterable[tuple[str, str]]) -> None:
        """(address, reason) pairs the store just suppressed: withhold claimed rows too."""

    def lifted(self, address: str) -> None:
        """The suppression of ``address`` was deleted."""

    async def readiness(self) -> tuple[str, str] | None:
        """None when ready; else (status, reason), e.g. ``("paused", "sending paused: …")``."""

    def metrics_text(self) -> bytes:
        """The Prometheus exposition of this instance's figures."""
