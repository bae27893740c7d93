"""When to try a delivery again, and when to give up or disable (pure, clock passed in).

2xx is delivered; 410 Gone disables the endpoint; anything else (another
status, no response) is retried with exponential backoff and jitter until the
event is ``retry_hours`` old, then given up. An endpoint that has not answered
2xx for the whole window is disabled.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailpipe.webhooks.model import DELIVERED, FAILED, GONE, PENDING, RETRY, Attempt, Claim, Verdict


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff ``base_s * 2**(n-1)`` after the n-th failure, at most ``max_s``, of which
    a random part (``jitter``, 0..1) is taken off; give up after ``retry_hours``."""

    base_s: float = 10.0
    max_s: float = 3600.0
    retry_hours: float = 24.0
    jitter: float = 0.5

    @property
    def window(self) -> timedelta:
        """How long an event is retried, and an endpoint may fail before it is disabled."""
        return timedelta(hours=self.retry_hours)

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (1, 2, ...)."""
        full = min(self.max_s, self.base_s * 2.0 ** min(failures - 1, 60))
        return full * (1 - self.jitter * rand())


def decide(
    attempt: Attempt,
    claim: Claim,
    now: datetime,
    policy: RetryPolicy,
    rand: Callable[[], float] = random.random,
) -> Verdict:
    """What ``attempt`` (the claim's ``attempts + 1``-th) means for its delivery and endpoint."""
    code = attempt.status_code
    if code is not None and 200 <= code < 300:
        return Verdict(DELIVERED, DELIVERED, None)
    if code == 410:
        return Verdict(GONE, PENDING, None, "endpoint answered 410 Gone")
    failing_since = claim.endpoint.failing_since or now
    disable = None
    if now - failing_since >= policy.window:
        disable = f"no 2xx answer for {policy.retry_hours:g} h (WEBHOOK_RETRY_HOURS)"
    nxt = now + timedelta(seconds=policy.delay(claim.attempts + 1, rand))
    if nxt - claim.created_at > policy.window:
        return Verdict(FAILED, FAILED, None, disable)
    return Verdict(RETRY, PENDING, nxt, disable)
