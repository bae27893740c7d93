"""Retry delays: pure functions, so they can be tested exactly."""

from __future__ import annotations

import random


def backoff_delay(
    attempt: int, *, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None
) -> float:
    """Delay before retry number ``attempt`` (1-based): "full jitter" exponential backoff.

    Uniform in ``[0, min(cap, base * 2 ** (attempt - 1))]``, then at least ``base / 2``
    so that retries never hammer a failing endpoint.
    """
    high = min(cap, base * 2 ** max(0, attempt - 1))
    return max(base / 2, (rng or random).uniform(0, high))
