"""The recorder: writes send outcomes to the store in batches.

One transaction per batch (at most ``max_batch`` outcomes, or whatever arrived
within ``max_delay`` seconds of the first), so the database never limits the
send rate. It drains its channel to the end before returning, so every outcome
the senders produced is stored before shutdown finishes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import trio

from mailpipe.errors import StoreError
from mailpipe.model import Outcome
from mailpipe.pipeline.jobs import Handed
from mailpipe.store import Store
from mailpipe.timeutil import utcnow

log = logging.getLogger(__name__)


class Recorder:
    """Owner of the receive side of the outcome channel."""

    def __init__(
        self,
        store: Store,
        outcomes: trio.MemoryReceiveChannel[Outcome],
        *,
        handed: Handed,
        max_batch: int = 500,
        max_delay: float = 0.1,
        retry_delay: float = 1.0,
        max_retries: int = 600,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._outcomes = outcomes
        self._handed = handed
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._retry_delay = retry_delay
        self._max_retries = max_retries
        self._now = now

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Record outcomes until the channel is closed and drained."""
        async with self._outcomes:
            task_status.started()
            while True:
                batch = await self._collect()
                if not batch:
                    return
                await self._write(batch)

    async def _collect(self) -> list[Outcome]:
        try:
            batch = [await self._outcomes.receive()]
        except trio.EndOfChannel:
            return []
        with trio.move_on_after(self._max_delay):
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._outcomes.receive_nowait())
                except trio.WouldBlock:
                    try:
                        batch.append(await self._outcomes.receive())
                    except trio.EndOfChannel:
                        break
                except trio.EndOfChannel:
                    break
        return batch

    async def _write(self, batch: list[Outcome]) -> None:
        # Shielded: an outcome that was received must reach the database even
        # while the service is being cancelled, or a sent email would be sent again.
        with trio.CancelScope(shield=True):
            for attempt in range(1, self._max_retries + 1):
                try:
                    await self._store.record_outcomes(batch, self._now())
                    break
                except StoreError as exc:
                    log.error(
                        "cannot record %d outcomes (attempt %d of %d): %s",
                        len(batch),
                        attempt,
                        self._max_retries,
                        exc,
                    )
                    await trio.sleep(self._retry_delay)
            else:
                log.critical(
                    "gave up recording %d outcomes; those requests stay in processing and "
                    "are sent again after a restart",
                    len(batch),
                )
        for outcome in batch:
            self._handed.settle(outcome.request_id)
