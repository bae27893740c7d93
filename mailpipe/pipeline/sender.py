"""The sender pool: takes jobs, waits for the limiter, calls the transport.

At most ``max_concurrent`` transport calls run at once, each in a worker
thread. Every permit is the last thing taken before a call, so calls start on
the limiter's schedule. Outcomes go to the recorder; retries wait outside the
pool (holding no slot) and then queue for a slot again.

Shutdown (:meth:`SenderPool.stop`): dispatch stops, waiting retries are
dropped (their rows are still PROCESSING and the service requeues them), and
calls already handed to the provider finish and are recorded. Thread calls are
never abandoned: an abandoned call may still send.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import trio

from mailpipe.compose import Composer
from mailpipe.errors import (
    PermanentSendError,
    ReleaseMissed,
    SendError,
    SendingPaused,
    StoreError,
    Throttled,
    TransientSendError,
)
from mailpipe.model import Outcome
from mailpipe.pipeline.backoff import backoff_delay
from mailpipe.pipeline.jobs import Backlog, Handed, Job
from mailpipe.pipeline.limiter import Limiter
from mailpipe.pipeline.metrics import Metrics
from mailpipe.pipeline.pause import PauseGate
from mailpipe.pipeline.stops import RecentSuppressions, TopicPauses, TopicStops
from mailpipe.status import Status
from mailpipe.transport import Email, Release, SendResult, Transport

log = logging.getLogger(__name__)

MAX_LEAD: Final = 0.25
"""How early, at most, a call starts preparing before its permit. The lead
starts at 15 ms and doubles each time a call misses its permit by more than
its slack (:class:`~mailpipe.errors.ReleaseMissed`). With a fixed 15 ms lead,
an instance at EMAIL_RATE=10 sending 10-recipient bulk calls on the loaded
2-core machine missed 10 permits in a row and sent nothing for 10 s (one run
in four of ``tests/test_instances.py``'s cross-instance stop): each call
reached the wire more than the 5 ms slack after its permit, every time. A
longer lead only holds a worker thread a little longer before the call."""
LEAD_RELAX_S: Final = 60.0
"""After this long with no call missing its permit, the lead halves again (not
below where it started). A lead raised by a passing burst of load would
otherwise hold every call's worker thread up to 250 ms for good: with 20
threads and 50 ms calls, that caps one-recipient calls at 66 a second."""


@dataclass(frozen=True)
class RetryPolicy:
    """How failed sends are retried."""

    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    throttle_delay: float = 0.5


def batch_size(transport_max: int, rate: float) -> int:
    """The largest batch that keeps the limiter exact: it must divide the per-second rate.

    A call of k recipients takes k permits at once; with k dividing ``floor(rate)``,
    evenly spaced calls fill every 1-second window exactly, so the mean stays at
    ``rate`` and no window exceeds it.
    """
    per_second = max(1, math.floor(rate + 1e-9))
    best = 1
    for k in range(1, min(transport_max, per_second) + 1):
        if per_second % k == 0:
            best = k
    return best


class Slot:
    """One of the pool's ``MAX_CONCURRENT`` call slots, given back exactly once.

    ``with slot:`` gives it back at the end of the block, unless
    :meth:`pass_on` handed it to another task first (the call it was taken for).
    """

    def __init__(self, limiter: trio.CapacityLimiter, token: object) -> None:
        self._limiter = limiter
        self._token = token
        self._held = True

    @classmethod
    async def take(cls, limiter: trio.CapacityLimiter) -> Slot:
        """Wait for a free slot of ``limiter`` and take it."""
        token = object()
        await limiter.acquire_on_behalf_of(token)
        return cls(limiter, token)

    def pass_on(self) -> Slot:
        """The same slot, now owned by whoever takes the returned handle."""
        self._held = False
        return Slot(self._limiter, self._token)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._held:
            self._held = False
            self._limiter.release_on_behalf_of(self._token)


class SenderPool:
    """Owner of the send side of the outcome channel."""

    def __init__(
        self,
        transport: Transport,
        limiter: Limiter,
        composer: Composer,
        jobs: trio.MemoryReceiveChannel[list[Job]],
        outcomes: trio.MemorySendChannel[Outcome],
        metrics: Metrics,
        *,
        max_concurrent: int,
        graceful_timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        handed: Handed,
        gate: PauseGate | None = None,
        backlog: Backlog | None = None,
        rng: random.Random | None = None,
        lead: float = 0.015,
    ) -> None:
        self._transport = transport
        self._limiter = limiter
        self.composer = composer
        self._jobs = jobs
        self._outcomes = outcomes
        self._metrics = metrics
        self._slots = trio.CapacityLimiter(max_concurrent)
        self._threads = trio.CapacityLimiter(max_concurrent)
        self._graceful = graceful_timeout
        self._retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._lead = self._base_lead = lead
        self._lead_changed = -math.inf
        self._dispatch_scope = trio.CancelScope()
        self._stopping = False
        self._waiting: trio.Nursery | None = None
        self._workers: trio.Nursery | None = None
        self.max_batch = batch_size(transport.max_batch, limiter.target)
        self._handed = handed
        self.stops = TopicStops()
        self.topic_pauses = TopicPauses()
        self.suppressed = RecentSuppressions()
        self.gate = gate or PauseGate()
        self.in_flight = 0
        self._preparing = 0
        """Requests of batches between their slot and their hand-off (see :meth:`_room_ahead`)."""
        self._backlog = backlog or Backlog()

    def stop_topic(self, topic_id: str, upto: int) -> list[int]:
        """Withhold the topic's requests with ids up to ``upto`` from now on; the
        ids of those already handed to the provider (they cannot be called back).

        Synchronous on purpose: a job is either handed already (and returned
        here) or sees the stop before it is handed.
        """
        self.stops.stop(topic_id, upto)
        return self._handed.of_topic(topic_id)

    def stop(self) -> None:
        """Stop dispatching; calls in flight still finish and are recorded."""
        self._stopping = True
        self._dispatch_scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Dispatch until :meth:`stop` or the job channel ends, then drain."""
        async with self._outcomes, self._jobs, trio.open_nursery() as workers:
            self._workers = workers
            async with trio.open_nursery() as waiting:
                self._waiting = waiting
                with self._dispatch_scope:
                    task_status.started()
                    await self._dispatch()
                self._stopping = True
                waiting.cancel_scope.cancel()
            if self.in_flight:
                log.info("waiting for %d provider calls in flight", self.in_flight)
            workers.cancel_scope.deadline = trio.current_time() + self._graceful

    async def _dispatch(self) -> None:
        async for chunk in self._jobs:
            self._backlog.take(len(chunk))
            await self._submit_all(chunk)

    async def _submit_all(self, jobs: list[Job]) -> None:
        # While throttling has slowed the limiter, calls shrink with the rate: a
        # 40-recipient call would never fit an account that takes 20 a second.
        size = min(self.max_batch, batch_size(self._transport.max_batch, self._limiter.rate))
        for i in range(0, len(jobs), size):
            await self._submit(jobs[i : i + size])

    async def _submit(self, batch: list[Job]) -> None:
        """Take a slot, then compose, wait for the permits and start the call."""
        batch = await self._live(batch)
        if not batch or await self._held(batch):
            return
        slot = await Slot.take(self._slots)
        room_ahead = self._room_ahead(len(batch))
        self._preparing += len(batch)  # until its hand-off (_prepare_and_start)
        if self._limiter.pacing(lead=self._lead) or not room_ahead:
            # The rate binds: one batch at a time, each composed only after the
            # previous call has left, so rendering in another thread never
            # competes for the GIL with a call waiting for its permit.
            await self._prepare_and_start(batch, slot, settle_after=True)
        else:
            # The rate is far away: compose batches side by side.
            assert self._workers is not None
            self._workers.start_soon(self._prepare_and_start, batch, slot, False)

    def _room_ahead(self, k: int) -> bool:
        """Whether a batch of ``k`` may be prepared side by side with those already
        preparing: at most a second's worth of requests are, so no batch waits
        much more than a second for its permit.

        Without this bound, at a low rate, every slot took a batch before the
        first permit showed that the rate binds: at EMAIL_RATE=10, in 10-recipient
        calls with 20 slots, 20 s of permits were reserved at once. Rows of a
        topic stopped or paused meanwhile then waited up to 20 s (the permits
        they would not use, holding other topics back as long), and a
        cross-instance stop in ``tests/test_instances.py`` took longer than its
        10 s bound on the loaded CI machine.
        """
        return self._preparing + k <= max(1, math.floor(self._limiter.rate + 1e-9))

    async def _prepare_and_start(self, batch: list[Job], slot: Slot, settle_after: bool) -> None:
        try:
            await self._prepare_and_start_held(batch, slot, settle_after)
        finally:
            self._preparing -= len(batch)

    async def _prepare_and_start_held(
        self, batch: list[Job], slot: Slot, settle_after: bool
    ) -> None:
        with slot:  # given back here, unless the call takes it over
            # Compose before taking permits: rendering (slow the first time a
            # content is seen) must not make a call leave after its permit.
            composed = await trio.to_thread.run_sync(
                self._compose_all, batch, limiter=self._threads
            )
            sendable = sum(1 for c in composed if isinstance(c, Email))
            try:
                permit = await self._limiter.permit(sendable, lead=self._lead) if sendable else None
            except StoreError as exc:
                # The shared rate lives in the database, and it is away: nothing
                # was reserved, so nothing may leave. The jobs wait and try again.
                delay = 2 * self._retry.throttle_delay
                log.warning(
                    "no permit for %d requests (%s); retrying in %gs", len(batch), exc, delay
                )
                self._later(batch, delay, count=False)
                return
            start = trio.current_time() if permit is None else permit.start
            # Wake a little early: the worker thread serialises the request,
            # then holds it until the permit (see Transport.send's release).
            await trio.sleep_until(start - self._lead)
            # From here to the hand-off nothing awaits: a stop or a pause seen
            # now is the last word, and the call leaves on the permit just taken.
            live, dead = self._split(batch)
            if self._stopping:
                live = []  # still PROCESSING: the service requeues them on the way out
            elif self.gate.paused:
                dead += [Outcome(j.request_id, Status.CREATED, attempts=j.attempt) for j in live]
                live = []
            if live:
                if len(live) < len(batch):
                    kept = {job.request_id for job in live}
                    composed = [
                        c for job, c in zip(batch, composed, strict=True) if job.request_id in kept
                    ]
                for job in live:
                    self._handed.add(job)
                release = (
                    Release(
                        time.perf_counter() + (start - trio.current_time()),
                        permit.report_late,
                        permit.slack,
                    )
                    if self._lead and permit is not None
                    else None
                )
                assert self._workers is not None
                self._workers.start_soon(self._call, live, composed, slot.pass_on(), release)
        if dead:
            await self._emit_stopped(dead)
        if live and settle_after:
            await trio.sleep_until(start + 0.002)

    async def _held(self, batch: list[Job]) -> bool:
        """While the account cannot send, give the rows back (they stay pending,
        nothing fails); the scheduler claims them again after the resume."""
        if not self.gate.paused:
            return False
        await self._emit([Outcome(j.request_id, Status.CREATED, attempts=j.attempt) for j in batch])
        return True

    def _withheld(self, job: Job) -> str | None:
        """Why ``job`` must not be sent now (its ``error``), or None to send it."""
        if self.stops.stopped(job.topic_id, job.request_id):
            return "stopped"
        reason = self.suppressed.reason(job.to)
        return None if reason is None else f"suppressed: {reason}"

    def _split(self, batch: list[Job]) -> tuple[list[Job], list[Outcome]]:
        """The jobs that may be sent now; STOPPED outcomes for the stopped and
        suppressed, CREATED ones (back to the queue, resumable) for paused topics."""
        live: list[Job] = []
        dead: list[Outcome] = []
        for job in batch:
            why = self._withheld(job)
            if why is not None:
                dead.append(Outcome(job.request_id, Status.STOPPED, error=why))
            elif self.topic_pauses.paused(job.topic_id):
                dead.append(Outcome(job.request_id, Status.CREATED, attempts=job.attempt))
            else:
                live.append(job)
        return live, dead

    async def _live(self, batch: list[Job]) -> list[Job]:
        live, dead = self._split(batch)
        if dead:
            await self._emit_stopped(dead)
        return live

    async def _emit_stopped(self, outcomes: list[Outcome]) -> None:
        self._metrics.stopped.inc(sum(1 for o in outcomes if o.status is Status.STOPPED))
        await self._emit(outcomes)

    async def _call(
        self,
        batch: list[Job],
        composed: list[Email | SendResult],
        slot: Slot,
        release: Release | None,
    ) -> None:
        with slot:
            self.in_flight += 1
            self._metrics.in_flight.inc()
            start = trio.current_time()
            try:
                results = await trio.to_thread.run_sync(
                    self._send_blocking, composed, release, limiter=self._threads
                )
            finally:
                self.in_flight -= 1
                self._metrics.in_flight.dec()
        self._metrics.call_seconds.observe(trio.current_time() - start)
        await self._settle(batch, results)

    def _compose_all(self, batch: Sequence[Job]) -> list[Email | SendResult]:
        """Each job's email, or the result of failing to compose it (runs in a thread)."""
        composed: list[Email | SendResult] = []
        for job in batch:
            try:
                composed.append(self.composer.compose(job))
            except (ValueError, SendError) as exc:
                error = (
                    exc
                    if isinstance(exc, SendError)
                    else PermanentSendError("ComposeError", str(exc))
                )
                composed.append(SendResult(error=error))
        return composed

    def _send_blocking(
        self, composed: Sequence[Email | SendResult], release: Release | None
    ) -> list[SendResult]:
        emails = [c for c in composed if isinstance(c, Email)]
        try:
            results = self._transport.send(emails, release) if emails else []
            if len(results) != len(emails):
                raise RuntimeError(f"{len(results)} results for {len(emails)} emails")
        except Exception as exc:  # a bug, not a provider answer: never crash the pool
            log.exception("transport %s failed unexpectedly", self._transport.name)
            error = TransientSendError(type(exc).__name__, str(exc), maybe_sent=True)
            results = [SendResult(error=error) for _ in emails]
        sent = iter(results)
        return [c if isinstance(c, SendResult) else next(sent) for c in composed]

    @property
    def lead(self) -> float:
        """How long before its permit a call starts (its request is built then)."""
        return self._lead

    def _prepare_earlier(self) -> None:
        """A call missed its permit: the next ones start earlier (up to ``MAX_LEAD``)."""
        lead = min(MAX_LEAD, 2 * self._lead)
        if lead > self._lead:
            log.warning(
                "a call reached the wire more than its slack after its permit and did not"
                " leave; calls now start %.0f ms before their permit", lead * 1000,
            )
            self._lead = lead
        self._lead_changed = trio.current_time()

    def _prepare_later(self) -> None:
        """A call left on time: after ``LEAD_RELAX_S`` of those, the lead halves."""
        now = trio.current_time()
        if self._lead > self._base_lead and now - self._lead_changed >= LEAD_RELAX_S:
            self._lead = max(self._base_lead, self._lead / 2)
            self._lead_changed = now
            log.info(
                "no call missed its permit for %.0f s; calls now start %.0f ms before their"
                " permit", LEAD_RELAX_S, self._lead * 1000,
            )

    async def _settle(self, batch: list[Job], results: list[SendResult]) -> None:
        outcomes: list[Outcome] = []
        throttled: list[Job] = []
        transient: list[Job] = []
        missed: list[Job] = []
        for job, result in zip(batch, results, strict=True):
            error = result.error
            tries = job.attempt + 1
            if error is None:
                sent_ok = Outcome(job.request_id, Status.SENT, result.message_id, attempts=tries)
                outcomes.append(sent_ok)
                continue
            if isinstance(error, ReleaseMissed):
                missed.append(job)  # it never left: not an attempt
            elif isinstance(error, Throttled):
                throttled.append(job.retried(failed=False))  # throttling is no failure
            elif isinstance(error, SendingPaused):
                self.gate.pause(f"{error.code}: {error.message}")
                outcomes.append(Outcome(job.request_id, Status.CREATED, attempts=tries))
            elif (
                isinstance(error, TransientSendError)
                and job.failures + 1 < self._retry.max_attempts
            ):
                if error.maybe_sent:
                    self._metrics.maybe_duplicated.inc()
                transient.append(job.retried(failed=True))
            else:
                outcomes.append(
                    Outcome(job.request_id, Status.FAILED, error=str(error), attempts=tries)
                )
                log.warning("request %d to %s failed: %s", job.request_id, job.to, error)
        for job in (*missed, *throttled, *transient):
            # Back from the provider, to be tried again: a stop may take it now
            # (the retry sees the stop before it hands the request over).
            self._handed.settle(job.request_id)
        sent = sum(1 for o in outcomes if o.status is Status.SENT)
        failed = sum(1 for o in outcomes if o.status is Status.FAILED)
        if sent:
            self._metrics.sent.inc(sent)
            self._limiter.succeeded(sent)
        if failed:
            self._metrics.failed.inc(failed)
        if throttled:
            self._metrics.throttled.inc(len(throttled))
            self._limiter.throttled()
            self._metrics.rate.set(self._limiter.rate)
            self._later(throttled, self._retry.throttle_delay)
        if missed:
            self._metrics.release_missed.inc(len(missed))
            self._prepare_earlier()
            self._later(missed, 0.0, count=False)
        else:
            self._prepare_later()
        if transient:
            attempt = transient[0].failures
            self._later(
                transient,
                backoff_delay(
                    attempt, base=self._retry.base_delay, cap=self._retry.max_delay, rng=self._rng
                ),
            )
        await self._emit(outcomes)

    def _later(self, jobs: list[Job], delay: float, *, count: bool = True) -> None:
        if self._stopping or self._waiting is None:
            return  # still PROCESSING: the service requeues them on the way out
        if count:
            self._metrics.retried.inc(len(jobs))
        self._waiting.start_soon(self._retry_after, jobs, delay)

    async def _retry_after(self, jobs: list[Job], delay: float) -> None:
        await trio.sleep(delay)
        await self._submit_all(jobs)

    async def _emit(self, outcomes: list[Outcome]) -> None:
        # Shielded: once a call returned, its outcome must reach the recorder.
        with trio.CancelScope(shield=True):
            for outcome in outcomes:
                await self._outcomes.send(outcome)
