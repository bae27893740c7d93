"""The scheduler: claims due requests and feeds them to the sender pool.

It claims in batches (``CREATED → PROCESSING``, earliest due first, then
lowest id), loads each content once, and blocks on the bounded job channel
when the senders are busy, so memory stays bounded however large the backlog. It sleeps until the
API nudges it (due-now rows were committed), the earliest ``scheduled_at``
arrives, or ``poll`` seconds pass, whichever is first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime

import trio

from mailpipe.errors import StoreError
from mailpipe.lru import BoundedCache
from mailpipe.model import Content
from mailpipe.pipeline.jobs import Backlog, Job
from mailpipe.pipeline.pause import PauseGate
from mailpipe.store import Store
from mailpipe.timeutil import utcnow

log = logging.getLogger(__name__)

CONTENT_CACHE = 1024
CONTENT_CACHE_BYTES = 64 * 1024 * 1024


class Scheduler:
    """Owner of the send side of the job channel.

    Jobs travel in chunks of up to ``chunk`` consecutive requests sharing one
    content, so the sender pool can hand each chunk to one bulk call.
    """

    def __init__(
        self,
        store: Store,
        jobs: trio.MemorySendChannel[list[Job]],
        *,
        batch: int = 500,
        chunk: int = 50,
        poll: float = 1.0,
        gate: PauseGate | None = None,
        backlog: Backlog | None = None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._jobs = jobs
        self._batch = batch
        self._poll = poll
        self._now = now
        self._wake = trio.Event()
        self._contents: BoundedCache[int, Content] = BoundedCache(
            CONTENT_CACHE, max_weight=CONTENT_CACHE_BYTES, weigh=_content_bytes
        )
        self._scope = trio.CancelScope()
        self.chunk = chunk
        self.backlog = backlog or Backlog()
        self._gate = gate or PauseGate()
        self._store_down = False

    @property
    def queued(self) -> int:
        """Jobs sent into the channel and not yet taken by the sender pool."""
        return self.backlog.count

    def nudge(self) -> None:
        """Due rows were committed: claim now instead of at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming; the job channel is closed as :meth:`run` returns."""
        self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Claim and feed until :meth:`stop`."""
        async with self._jobs:
            with self._scope:
                task_status.started()
                while True:
                    wake = self._wake = trio.Event()
                    try:
                        if not self._gate.paused and await self._claim_and_feed():
                            continue
                        delay = await self._idle_delay()
                    except StoreError as exc:
                        self._store_failed(exc)
                        delay = self._poll
                    else:
                        self._store_back()
                    with trio.move_on_after(delay):
                        await wake.wait()

    def _store_failed(self, exc: StoreError) -> None:
        if not self._store_down:
            log.error("cannot claim due requests (retrying every %gs): %s", self._poll, exc)
        self._store_down = True

    def _store_back(self) -> None:
        if self._store_down:
            log.warning("claiming due requests again")
        self._store_down = False

    async def _claim_and_feed(self) -> int:
        rows = await self._store.claim_due(self._now(), self._batch)
        if not rows:
            return 0
        contents = await self._load({row.content_id for row in rows})
        chunk: list[Job] = []
        for row in rows:
            content = contents[row.content_id]
            if chunk and (len(chunk) >= self.chunk or chunk[0].content.id != content.id):
                await self._feed(chunk)
                chunk = []
            chunk.append(Job(row.id, row.topic_id, row.to, content, data=row.data))
        await self._feed(chunk)
        return len(rows)

    async def _feed(self, chunk: list[Job]) -> None:
        self.backlog.put(len(chunk))
        try:
            await self._jobs.send(chunk)
        except BaseException:
            self.backlog.take(len(chunk))
            raise

    async def _idle_delay(self) -> float:
        if self._gate.paused:
            return self._poll
        due = await self._store.next_scheduled_at()
        if due is None:
            return self._poll
        return min(self._poll, max(0.0, (due - self._now()).total_seconds()))

    async def _load(self, ids: Iterable[int]) -> dict[int, Content]:
        found = {i: c for i in ids if (c := self._contents.get(i)) is not None}
        missing = [i for i in ids if i not in found]
        if missing:
            loaded = await self._store.load_contents(missing)
            found.update(loaded)
            for i, content in loaded.items():
                self._contents.put(i, content)
        return found


def _content_bytes(content: Content) -> int:
    return len(content.html) + len(content.subject)
