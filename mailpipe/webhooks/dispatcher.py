"""The delivery actor: sends due outbox deliveries, records each attempt.

A claimer leases due deliveries (``store.webhooks.claim``; on PostgreSQL with
``SKIP LOCKED``, so each goes out from one instance) and feeds a bounded
channel, whose send end it owns; ``max_concurrent`` workers, each owning a
clone of the receive end, sign and post one delivery at a time in a worker
thread (never abandoned), at most ``per_endpoint`` to one endpoint at once,
and store the attempt and its verdict (:func:`~mailpipe.webhooks.policy.decide`).
Delivery is at least once: an attempt whose result was not stored (a crash)
is made again once its lease lapses (SQLite: at the next start).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

import trio

from mailpipe.errors import StoreError
from mailpipe.pipeline.metrics import Metrics
from mailpipe.store.webhook_tables import WebhookTables
from mailpipe.timeutil import utcnow
from mailpipe.webhooks.model import Attempt, Claim, Verdict
from mailpipe.webhooks.policy import RetryPolicy, decide
from mailpipe.webhooks.poster import Post
from mailpipe.webhooks.signing import signed_headers

log = logging.getLogger(__name__)

RECORD_RETRIES: Final = 5
"""Tries to store an attempt's result before leaving it to the lease (sent again)."""
KEEP: Final = timedelta(days=7)
"""How long a settled event (delivered or given up) stays visible in the deliveries API."""
PRUNE_EVERY: Final = timedelta(minutes=10)


def lease_for(timeout_s: float) -> float:
    """Seconds a claimed delivery is held: a queue wait and an attempt, with room."""
    return 30.0 + 4 * timeout_s


class Dispatcher:
    """Owner of the outbox's delivery: claimer and workers."""

    def __init__(
        self,
        tables: WebhookTables,
        post: Post,
        metrics: Metrics,
        *,
        policy: RetryPolicy,
        max_concurrent: int,
        per_endpoint: int,
        poll_s: float,
        lease_s: float,
        now: Callable[[], datetime] = utcnow,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._tables = tables
        self._post = post
        self._metrics = metrics
        self._policy = policy
        self._max_concurrent = max_concurrent
        self._per_endpoint = per_endpoint
        self._poll_s = poll_s
        self._lease = timedelta(seconds=lease_s)
        self._now = now
        self._rand = rand
        self._threads = trio.CapacityLimiter(max_concurrent)
        self._endpoints: dict[str, trio.CapacityLimiter] = {}
        self._nudged = trio.Event()
        self._pruned_at: datetime | None = None

    def nudge(self) -> None:
        """Look for due deliveries now rather than at the next poll."""
        self._nudged.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled."""
        send, recv = trio.open_memory_channel[Claim](self._max_concurrent)
        async with trio.open_nursery() as nursery:
            async with recv:
                for _ in range(self._max_concurrent):
                    nursery.start_soon(self._work, recv.clone())
            nursery.start_soon(self._claim_loop, send)
            task_status.started()

    async def _claim_loop(self, send: trio.MemorySendChannel[Claim]) -> None:
        async with send:
            while True:
                self._nudged = trio.Event()
                claimed, next_due = await self._claim()
                for claim in claimed:
                    await send.send(claim)
                if len(claimed) < self._max_concurrent:
                    wait = self._poll_s
                    if next_due is not None:
                        wait = min(wait, max(0.0, (next_due - self._now()).total_seconds()))
                    with trio.move_on_after(wait):
                        await self._nudged.wait()

    async def _claim(self) -> tuple[list[Claim], datetime | None]:
        """What is due now, and when the next pending delivery falls due (None: none)."""
        now = self._now()
        try:
            if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY:
                self._pruned_at = now
                await self._tables.prune(now - KEEP)
            oldest, next_due = await self._tables.pending_times()
            self._metrics.webhook_oldest.set(
                0 if oldest is None else max(0.0, (now - oldest).total_seconds())
            )
            if next_due is None or next_due > now:
                return [], next_due
            claimed = await self._tables.claim(now, self._max_concurrent, now + self._lease)
            # Leased elsewhere (another instance) or just claimed: look again at the poll.
            return claimed, None
        except StoreError as exc:
            log.warning("cannot read the webhook outbox (trying again): %s", exc)
            return [], None

    async def _work(self, recv: trio.MemoryReceiveChannel[Claim]) -> None:
        async with recv:
            async for claim in recv:
                limiter = self._endpoints.setdefault(
                    claim.endpoint.id, trio.CapacityLimiter(self._per_endpoint)
                )
                async with limiter:
                    await self._deliver(claim)

    async def _deliver(self, claim: Claim) -> None:
        now = self._now()
        secrets = claim.endpoint.signing_secrets(now)
        headers = signed_headers(secrets, claim.event_id, now, claim.body)
        attempt: Attempt = await trio.to_thread.run_sync(
            self._post, claim.endpoint.url, headers, claim.body.encode("utf-8"),
            limiter=self._threads,
        )
        done = self._now()
        verdict = decide(attempt, claim, done, self._policy, self._rand)
        # Shielded: an attempt made must be stored, or it is made again.
        with trio.CancelScope(shield=True):
            disabled = await self._record(claim, attempt, verdict, done)
        self._metrics.webhook_attempts.labels(verdict.outcome).inc()
        if verdict.next_attempt_at is not None:
            self.nudge()  # the claimer may be waiting past this retry
        if disabled:
            self._metrics.webhook_disabled.inc()
            log.warning(
                "webhook endpoint %s (%s) disabled: %s",
                claim.endpoint.id, claim.endpoint.url, verdict.disable_reason,
            )
        elif verdict.outcome == "failed":
            log.warning(
                "webhook event %s to endpoint %s given up after %d attempts",
                claim.event_id, claim.endpoint.id, claim.attempts + 1,
            )

    async def _record(
        self, claim: Claim, attempt: Attempt, verdict: Verdict, now: datetime
    ) -> bool:
        for tried in range(1, RECORD_RETRIES + 1):
            try:
                return await self._tables.record(claim, attempt, verdict, now)
            except StoreError as exc:
                log.error(
                    "cannot store webhook attempt of %s (try %d of %d): %s",
                    claim.event_id, tried, RECORD_RETRIES, exc,
                )
                await trio.sleep(min(1.0, self._poll_s))
        return False
