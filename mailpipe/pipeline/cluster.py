"""The cluster actor: what keeps one instance in step with the others on PostgreSQL.

Every second it renews this instance's heartbeat (its lease on the rows it
claimed) and takes back the rows of instances whose lease lapsed. Between
heartbeats it applies the events other instances publish (a topic stopped,
paused or resumed, an address suppressed or lifted, the SES account paused or
resumed) to what this
instance holds, woken by ``LISTEN`` or, failing that, by polling.

An instance that cannot renew its heartbeat for half a lease stops starting
calls (the gate's ``database`` cause): it cannot tell whether its rows are
being taken over. If they were (:class:`~mailpipe.errors.LeaseLost`), it ends:
another instance owns them now.
"""

from __future__ import annotations

import logging
from typing import Final

import trio

from mailpipe.errors import LeaseLost, StoreError
from mailpipe.pipeline.pause import DATABASE, REPUTATION, Announcement, PauseGate
from mailpipe.pipeline.pauses import Pauses
from mailpipe.pipeline.scheduler import Scheduler
from mailpipe.pipeline.sender import SenderPool
from mailpipe.store.base import Cluster, ClusterEvent
from mailpipe.timeutil import utcnow

log = logging.getLogger(__name__)

HEARTBEAT_S: Final = 1.0
"""How often the lease is renewed (a tenth of the default ``LEASE_S``)."""
EVENT_POLL_S: Final = 1.0
"""The longest an event waits to be applied when ``LISTEN`` is not working."""


class ClusterSync:
    """Owner of this instance's registration and of the announcement channel's
    receive end."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        lease_s: float,
        gate: PauseGate,
        pool: SenderPool,
        scheduler: Scheduler,
        pauses: Pauses,
        announcements: trio.MemoryReceiveChannel[Announcement],
    ) -> None:
        self._cluster = cluster
        self._lease_s = lease_s
        self._gate = gate
        self._pool = pool
        self._scheduler = scheduler
        self._pauses = pauses
        self._announcements = announcements
        self._last_beat = trio.current_time()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register, then keep the lease and apply events until cancelled."""
        await self._cluster.heartbeat()
        self._last_beat = trio.current_time()
        _, cursor = await self._cluster.events_since(None)
        log.info("instance %s registered (lease %gs)", self._cluster.instance_id, self._lease_s)
        async with self._announcements, trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_lease)
            nursery.start_soon(self._announce)
            task_status.started()
            await self._follow_events(cursor)

    async def _keep_lease(self) -> None:
        while True:
            await trio.sleep(HEARTBEAT_S)
            try:
                await self._cluster.heartbeat()
            except LeaseLost:
                log.critical(
                    "instance %s: its claimed rows were taken over by another instance after"
                    " %.0fs without a heartbeat; ending so they are not sent twice",
                    self._cluster.instance_id,
                    trio.current_time() - self._last_beat,
                )
                raise
            except StoreError as exc:
                self._beat_failed(exc)
                continue
            self._last_beat = trio.current_time()
            if self._gate.paused_for(DATABASE):
                self._gate.resume(cause=DATABASE)
            await self._recover()

    def _beat_failed(self, exc: StoreError) -> None:
        silent = trio.current_time() - self._last_beat
        if silent >= self._lease_s / 2 and not self._gate.paused_for(DATABASE):
            self._gate.pause(
                f"no heartbeat for {silent:.0f}s (lease {self._lease_s:g}s): {exc}",
                cause=DATABASE,
            )
        else:
            log.warning("heartbeat failed (%.0fs without one): %s", silent, exc)

    async def _recover(self) -> None:
        try:
            recovered = await self._cluster.recover_lapsed(self._lease_s, utcnow())
        except StoreError as exc:
            log.warning("could not check for lapsed instances: %s", exc)
            return
        if recovered.stopped or recovered.requeued:
            log.warning(
                "took back the rows of lapsed instances: %d re-queued, %d stopped",
                recovered.requeued,
                recovered.stopped,
            )
            self._scheduler.nudge()

    async def _follow_events(self, cursor: int) -> None:
        while True:
            try:
                await self._cluster.wait_for_events(EVENT_POLL_S)
                events, cursor = await self._cluster.events_since(cursor)
                for event in events:
                    await self._apply(event)
            except StoreError as exc:
                log.warning("cannot read cluster events (retrying): %s", exc)
                await trio.sleep(EVENT_POLL_S)

    async def _apply(self, event: ClusterEvent) -> None:
        payload = event.payload
        if event.kind == "stop":
            topic, upto = str(payload["topic"]), int(payload["upto"])
            handed = self._pool.stop_topic(topic, upto)
            await self._cluster.stop_own_claims(topic, upto, exclude=handed, now=utcnow())
        elif event.kind == "suppress":
            self._pool.suppressed.add((str(a), str(r)) for a, r in payload["entries"])
        elif event.kind == "lift":
            self._pool.suppressed.discard(str(payload["address"]))
        elif event.kind == "pause":
            self._gate.pause(str(payload["reason"]), announce=False)
        elif event.kind == "resume":
            self._gate.resume(announce=False)
            self._scheduler.nudge()
        elif event.kind == "topic_pause":
            self._pool.topic_pauses.pause(str(payload["topic"]))
        elif event.kind == "topic_resume":
            self._pauses.topic_resumed(str(payload["topic"]))
        elif event.kind == "account_pause":
            self._gate.pause(str(payload["reason"]), cause=REPUTATION, announce=False)
        elif event.kind == "account_resume":
            self._pauses.account_resumed()

    async def _announce(self) -> None:
        async for kind, payload in self._announcements:
            try:
                await self._cluster.publish(kind, payload)
            except StoreError as exc:
                log.warning("could not tell the other instances of %s: %s", kind, exc)
