"""The reputation guard: pauses a topic, or the account, before SES acts.

It checks a topic's figures when a permanent bounce or a complaint about one
of its requests was stored (:meth:`ReputationGuard.feedback`), and again every
``REPUTATION_CHECK_S`` seconds while that feedback is in the window (a topic
reaches ``REPUTATION_MIN_SENDS`` by sending, with no new feedback); the
account's at the same times. The account's figures are also the
``mailpipe_reputation_*`` gauges. A topic resumed by a user is paused again
only by bad feedback that arrives after the resume; so is the account. The figures
come from the store over the rolling window; :func:`mailpipe.reputation.breach`
decides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Final

import trio

from mailpipe.errors import StoreError
from mailpipe.lru import BoundedCache
from mailpipe.model import Figures
from mailpipe.pipeline.metrics import Metrics
from mailpipe.pipeline.pauses import Pauses
from mailpipe.pipeline.stops import MAX_TOPICS
from mailpipe.reputation import Thresholds, breach, window_start
from mailpipe.store.base import Store
from mailpipe.timeutil import utcnow

log = logging.getLogger(__name__)

MAX_PENDING: Final = 10_000
"""Requests with new bad feedback waiting for a check; beyond that the rest wait
for the next bad feedback of their topics (a burst that large pauses them anyway)."""


class ReputationGuard:
    """Owner of the requests waiting for a check."""

    def __init__(
        self,
        store: Store,
        pauses: Pauses,
        metrics: Metrics,
        *,
        topic: Thresholds,
        account: Thresholds,
        window_h: float,
        interval: float,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._pauses = pauses
        self._metrics = metrics
        self._topic = topic
        self._account = account
        self._window_h = window_h
        self._interval = interval
        self._now = now
        self._pending: set[int] = set()
        self._watched: BoundedCache[str, float] = BoundedCache(MAX_TOPICS)
        self._wake = trio.Event()
        self.account_figures = Figures()
        self._last_bad: float | None = None

    def feedback(self, request_ids: Iterable[int]) -> None:
        """A permanent bounce or a complaint about these requests was stored."""
        self._last_bad = trio.current_time()
        for rid in request_ids:
            if len(self._pending) >= MAX_PENDING:
                break
            self._pending.add(rid)
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check on feedback and every ``interval`` seconds, until cancelled."""
        task_status.started()
        while True:
            with trio.move_on_after(self._interval):
                await self._wake.wait()
            self._wake = trio.Event()
            pending, self._pending = sorted(self._pending), set()
            try:
                await self.check(pending)
            except StoreError as exc:
                log.warning("reputation check failed (retried): %s", exc)
                self._pending.update(pending)

    async def check(self, request_ids: list[int]) -> None:
        """Pause the topics of these requests and the topics watched since their bad
        feedback, and the account, whose figures breach."""
        now = self._now()
        since = window_start(now, self._window_h)
        clock = trio.current_time()
        for topic_id in await self._store.topics_of(request_ids):
            self._watched.put(topic_id, clock)
        for topic_id, seen in self._watched.items():
            resumed = self._pauses.resumed_at(topic_id)
            if (resumed is not None and resumed >= seen) or clock - seen > self._window_h * 3600:
                self._watched.pop(topic_id)  # resumed after that feedback, or it aged out
                continue
            figures = await self._store.reputation(topic_id, since)
            reason = breach(figures, self._topic, scope="topic")
            if reason is not None:
                await self._pauses.pause_topic(topic_id, reason, "auto", figures, now)
                self._watched.pop(topic_id)
        figures = await self._store.reputation(None, since)
        self.account_figures = figures
        self._metrics.reputation(figures)
        reason = breach(figures, self._account, scope="account")
        resumed = self._pauses.account_resumed_at
        if resumed is not None and (self._last_bad is None or self._last_bad <= resumed):
            reason = None  # resumed since the last bad feedback: only new feedback re-pauses
        if reason is not None and await self._pauses.pause_account(reason, "auto", figures, now):
            log.error("account paused: %s; resume with POST /v1/account/resume", reason)
