"""Pausing and resuming a topic or the whole account, by the guard or by a user.

A pause is stored first (it survives a restart, and the store's claims pass a
paused topic by), then applied to what this instance holds: the pool gives a
paused topic's claimed requests back to the queue, unsent, and the gate's
``reputation`` cause holds all sending for an account pause. Other instances
on PostgreSQL apply it when its event reaches them (see
:mod:`mailpipe.pipeline.cluster`).
"""

from __future__ import annotations

import logging
from datetime import datetime

import trio

from mailpipe.lru import BoundedCache
from mailpipe.model import Figures, Pause
from mailpipe.pipeline.pause import REPUTATION, PauseGate
from mailpipe.pipeline.scheduler import Scheduler
from mailpipe.pipeline.sender import SenderPool
from mailpipe.pipeline.stops import MAX_TOPICS
from mailpipe.store.base import Store

log = logging.getLogger(__name__)


class Pauses:
    """The one place pauses are taken and lifted."""

    def __init__(
        self, store: Store, pool: SenderPool, gate: PauseGate, scheduler: Scheduler
    ) -> None:
        self._store = store
        self._pool = pool
        self._gate = gate
        self._scheduler = scheduler
        self._resumed: BoundedCache[str, float] = BoundedCache(MAX_TOPICS)
        self.account_resumed_at: float | None = None
        """When (trio clock) the account was last resumed while this process ran."""

    async def restore(self) -> None:
        """At start-up: hold what the store says is paused."""
        for topic_id in await self._store.paused_topics():
            self._pool.topic_pauses.pause(topic_id)
        pause = await self._store.account_pause()
        if pause is not None:
            self._gate.pause(pause.reason, cause=REPUTATION, announce=False)

    async def pause_topic(
        self, topic_id: str, reason: str, by: str, figures: Figures, now: datetime
    ) -> bool:
        """Pause the topic; False when it was paused already (that pause is kept).

        The pool holds the topic back before the pause is stored, so nothing
        claimed leaves in between; a failed store lifts that hold again.
        """
        already = self._pool.topic_pauses.paused(topic_id)
        self._pool.topic_pauses.pause(topic_id)
        try:
            stored = await self._store.pause_topic(topic_id, Pause(reason, by, now, figures))
        except BaseException:
            if not already:
                self._pool.topic_pauses.resume(topic_id)
            raise
        if stored:
            log.warning("topic %s paused (%s): %s; its requests stay pending until"
                        " POST /v1/topics/%s/resume", topic_id, by, reason, topic_id)
        return stored

    async def resume_topic(self, topic_id: str) -> bool:
        """Resume the topic; False when it was not paused."""
        resumed = await self._store.resume_topic(topic_id)
        self.topic_resumed(topic_id)
        if resumed:
            log.warning("topic %s resumed", topic_id)
        return resumed

    def topic_resumed(self, topic_id: str) -> None:
        """The topic was resumed (here, or by another instance): send its requests."""
        self._resumed.put(topic_id, trio.current_time())
        self._pool.topic_pauses.resume(topic_id)
        self._scheduler.nudge()

    def resumed_at(self, topic_id: str) -> float | None:
        """When (trio clock) the topic was last resumed while this process ran, or None."""
        return self._resumed.get(topic_id)

    async def pause_account(self, reason: str, by: str, figures: Figures, now: datetime) -> bool:
        """Pause all sending; False when the account was paused already."""
        stored = await self._store.pause_account(Pause(reason, by, now, figures))
        self._gate.pause(reason, cause=REPUTATION, announce=False)
        return stored

    async def resume_account(self) -> bool:
        """Resume sending after an account pause; False when there was none."""
        resumed = await self._store.resume_account()
        self.account_resumed()
        return resumed

    def account_resumed(self) -> None:
        """The account was resumed (here, or by another instance): send again."""
        self.account_resumed_at = trio.current_time()
        self._gate.resume(cause=REPUTATION, announce=False)
        self._scheduler.nudge()
