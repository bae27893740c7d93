"""Reputation decisions, pure: when a topic or the account must stop sending.

SES reviews an account whose bounce rate reaches 5 % or complaint rate 0.1 %,
and pauses it at about 10 % and 0.5 %. mailpipe pauses a topic (or the whole
account) a little before the review thresholds, once it has sent enough for
the rates to mean something. The figures come from the store over the rolling
window (:meth:`mailpipe.store.base.Store.reputation`); these functions only decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from mailpipe.model import Figures


@dataclass(frozen=True)
class Thresholds:
    """When figures are bad enough to pause: at least ``min_sends`` sends, and a
    bounce rate reaching ``bounce_rate`` or a complaint rate reaching ``complaint_rate``."""

    min_sends: int
    bounce_rate: float
    complaint_rate: float


def window_start(now: datetime, window_h: float) -> datetime:
    """The oldest moment the rolling window of ``window_h`` hours ending at ``now`` covers."""
    return now - timedelta(hours=window_h)


def breach(figures: Figures, limits: Thresholds, *, scope: str) -> str | None:
    """Why ``figures`` must pause ``scope`` ("topic" or "account"), or None.

    Too few sends decide nothing: 2 bounces of 10 sends are not a bad list yet.
    The bounce rate is checked first (the likelier cause, and the one SES acts
    on soonest).
    """
    if figures.sends < limits.min_sends:
        return None
    if figures.bounces and figures.bounce_rate >= limits.bounce_rate:
        return (
            f"{scope} bounce rate {figures.bounce_rate:.2%} ({figures.bounces} permanent"
            f" bounces of {figures.sends} sends) reached PAUSE_BOUNCE_RATE"
            f" {limits.bounce_rate:.2%}"
        )
    if figures.complaints and figures.complaint_rate >= limits.complaint_rate:
        return (
            f"{scope} complaint rate {figures.complaint_rate:.3%} ({figures.complaints}"
            f" complaints of {figures.sends} sends) reached PAUSE_COMPLAINT_RATE"
            f" {limits.complaint_rate:.3%}"
        )
    return None
