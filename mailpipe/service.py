"""The service: one nursery supervising every actor.

Start order (each reports ready through ``nursery.start``): recorder, sender
pool, scheduler, metrics reporter, then HTTP. Shutdown: stop accepting
(hypercorn's ``shutdown_trigger``), stop claiming, let calls in flight finish
and be recorded, then return every row still PROCESSING to CREATED.
"""

from __future__ import annotations

import gc
import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from mailpipe.addresses import AddressValidator
from mailpipe.compose import Composer
from mailpipe.config import Config, default_host
from mailpipe.content.tokens import Tokens
from mailpipe.errors import ConfigError, StoreError
from mailpipe.feedback.sns import SnsVerifier, http_fetch
from mailpipe.http.app import create_app
from mailpipe.http.drain import RequestTracker
from mailpipe.http.feedback import SnsFastPath, make_verifier
from mailpipe.http.server_errors import install_json_error_bodies
from mailpipe.model import Figures, IdempotencyKey, InsertResult, NewMessage, Outcome
from mailpipe.pipeline.cluster import ClusterSync
from mailpipe.pipeline.guard import ReputationGuard
from mailpipe.pipeline.jobs import Backlog, Handed, Job
from mailpipe.pipeline.limiter import Limiter, RateLimiter
from mailpipe.pipeline.metrics import Metrics, Reporter
from mailpipe.pipeline.pause import Announcement, PauseGate
from mailpipe.pipeline.pauses import Pauses
from mailpipe.pipeline.probe import run_pause_probe
from mailpipe.pipeline.recorder import Recorder
from mailpipe.pipeline.scheduler import Scheduler
from mailpipe.pipeline.sender import RetryPolicy, SenderPool, batch_size
from mailpipe.pipeline.shared_rate import SharedRateLimiter
from mailpipe.pipeline.sqs_intake import SqsIntake, make_sqs_client
from mailpipe.reputation import Thresholds, window_start
from mailpipe.secrets_file import load_or_create_secret_file, replace_secret_file
from mailpipe.signals import watch_signals
from mailpipe.store import Cluster, Store, open_store
from mailpipe.timeutil import utcnow
from mailpipe.transport import AccountState, Transport
from mailpipe.transport.factory import open_transport
from mailpipe.webhooks.dispatcher import Dispatcher, lease_for
from mailpipe.webhooks.policy import RetryPolicy as WebhookRetryPolicy
from mailpipe.webhooks.poster import HttpPoster, Limits, Post

log = logging.getLogger(__name__)


@dataclass
class Service:
    """Everything the actors and the HTTP handlers share."""

    config: Config
    store: Store
    api_key: str
    transport: Transport
    metrics: Metrics
    limiter: Limiter
    gate: PauseGate
    scheduler: Scheduler
    pool: SenderPool
    recorder: Recorder
    tokens: Tokens
    """Signs and checks the open, click and unsubscribe links."""
    pauses: Pauses
    guard: ReputationGuard
    cluster_sync: ClusterSync | None = None
    """Keeps this instance in step with the others (PostgreSQL only)."""
    dispatcher: Dispatcher | None = None
    """Delivers the webhook outbox."""
    addresses: AddressValidator = field(default_factory=AddressValidator)
    cpu_limiter: trio.CapacityLimiter = field(default_factory=partial(trio.CapacityLimiter, 2))
    shutdown_requested: trio.Event = field(default_factory=trio.Event)
    stopping: bool = False
    url: str = ""
    base_url: str = ""
    """Where links in emails point: ``SERVER_HOST``, or this instance as bound."""
    sns_get: Callable[[str], bytes] = field(default=http_fetch)
    """GETs SNS certificates and SubscribeURLs (blocking; run in a thread); tests replace it."""
    sns_verifier: SnsVerifier = field(init=False)
    account: AccountState = field(default_factory=AccountState)
    """What the provider last said of the account."""

    def __post_init__(self) -> None:
        self.sns_verifier = make_verifier(self.config, self._sns_fetch)

    def _sns_fetch(self, url: str) -> bytes:
        return self.sns_get(url)

    @property
    def send_rate(self) -> float:
        """The rate sends are held to: ``EMAIL_RATE``, capped at start by the SES
        account's MaxSendRate."""
        return self.limiter.target

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        self.shutdown_requested.set()

    # -- the HTTP edge's façade (mailpipe.http.facade.Pipeline) --------------

    async def accept(
        self, messages: Sequence[NewMessage], key: IdempotencyKey | None
    ) -> InsertResult:
        """Store a validated send and wake the scheduler if any of it is due."""
        result = await self.store.insert_messages(messages, utcnow(), key=key)
        if not result.replayed:
            self.metrics.accepted.inc(result.count)
            if result.due_now:
                self.scheduler.nudge()
        return result

    async def stop_topic(self, topic_id: str) -> int:
        """Stop every request of the topic not yet handed to SES; how many.

        The pool withholds the topic's claimed jobs from now on and names those
        already handed, which the store's stop leaves to finish.
        """
        upto = await self.store.max_request_id(topic_id)
        if upto is None:
            return 0
        handed = self.pool.stop_topic(topic_id, upto)
        stopped = await self.store.stop_topic(topic_id, upto, exclude=handed, now=utcnow())
        self.metrics.stopped.inc(stopped)
        return stopped

    def webhooks_due(self) -> None:
        """A webhook delivery was made due now: look at the outbox at once."""
        if self.dispatcher is not None:
            self.dispatcher.nudge()
    async def pause_topic(self, topic_id: str, reason: str) -> bool | None:
        """Pause the topic by hand; None when it has no requests, False when it was
        paused already."""
        if await self.store.max_request_id(topic_id) is None:
            return None
        now = utcnow()
        figures = await self.store.reputation(topic_id, self.window_start(now))
        return await self.pauses.pause_topic(topic_id, reason, "user", figures, now)

    async def resume_topic(self, topic_id: str) -> bool | None:
        """Resume the topic; None when it has no requests, False when it was not paused."""
        if await self.store.max_request_id(topic_id) is None:
            return None
        return await self.pauses.resume_topic(topic_id)

    async def resume_account(self) -> bool:
        """Lift the account's pause; False when there was none."""
        return await self.pauses.resume_account()

    def bad_feedback(self, request_ids: Iterable[int]) -> None:
        """A permanent bounce or a complaint about these requests was stored."""
        self.guard.feedback(request_ids)

    def window_start(self, now: datetime) -> datetime:
        """Where the reputation window ending at ``now`` begins."""
        return window_start(now, self.config.reputation_window_h)

    async def reputation(self, topic_id: str | None) -> Figures:
        """The topic's (None: the account's) figures over the reputation window."""
        return await self.store.reputation(topic_id, self.window_start(utcnow()))

    async def account_state(self) -> AccountState:
        """What the provider says of the account now (``GetAccount`` on SES)."""
        state = await trio.to_thread.run_sync(self.transport.account_state)
        before, now = self.account.enforcement_status, state.enforcement_status
        if now is not None and now != before:
            if now != "HEALTHY":
                log.error("SES EnforcementStatus is %s (SendingEnabled %s): see the SES"
                          " console's reputation page", now, state.sending_enabled)
            elif before is not None:
                log.warning("SES EnforcementStatus is HEALTHY again")
        if now is not None or self.account.enforcement_status is None:
            self.account = state
        return state

    def suppressed(self, entries: Iterable[tuple[str, str]]) -> None:
        """Withhold claimed rows to these (address, reason) pairs too."""
        self.pool.suppressed.add(entries)

    def lifted(self, address: str) -> None:
        """Forget ``address``'s suppression here (even when the store had none)."""
        self.pool.suppressed.discard(address)

    async def readiness(self) -> tuple[str, str] | None:
        """None when ready; else (status, reason)."""
        try:
            await self.store.ping()
        except StoreError as exc:
            return "unavailable", f"store: {exc}"
        if self.gate.paused:
            return "paused", f"sending paused: {self.gate.reason}"
        enforcement = self.account.enforcement_status
        if enforcement not in (None, "HEALTHY"):
            return "enforcement", f"SES EnforcementStatus is {enforcement}"
        if self.stopping:
            return "stopping", "shutting down"
        return None

    def metrics_text(self) -> bytes:
        """The Prometheus exposition, sampled gauges brought up to date first."""
        self.metrics.queued.set(self.scheduler.queued)
        self.metrics.rate.set(self.limiter.rate)
        self.metrics.paused.set(1 if self.gate.paused else 0)
        return self.metrics.exposition()


async def resolve_secret(
    configured: str | None, path: Path, nbytes: int, name: str, cluster: Cluster | None
) -> str:
    """The configured secret, or one generated once into ``path``.

    With several instances (``cluster``), a generated secret is the one the
    first instance stored in the database, so that every instance accepts the
    same API key and the same tracking links; ``path`` then holds a copy.
    """
    if configured:
        return configured
    try:
        secret = load_or_create_secret_file(path, nbytes)
        if cluster is not None:
            shared = await cluster.shared_secret(name, secret)
            if shared != secret:
                replace_secret_file(path, shared)
                secret = shared
    except OSError as exc:  # a full or read-only data directory: one line, exit 1
        raise StoreError(f"cannot write the secret file {path}: {exc}") from exc
    log.info("%s is not set; using the generated key in %s", name.upper(), path)
    return secret


def public_base_url(config: Config, bound: str) -> str:
    """``SERVER_HOST``; when it was left to default with ``SERVER_PORT=0``, the
    default host at the port actually bound (never ``localhost:0``)."""
    if config.server_port == 0 and config.server_host == default_host(0):
        return default_host(int(bound.rsplit(":", 1)[1]))
    return config.server_host


def channel_capacity(rate: float) -> int:
    """Claimed jobs held in memory: about two seconds of sending, within bounds."""
    return max(100, min(10_000, int(2 * rate)))


async def run_service(
    config: Config,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Service] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until a shutdown is requested (SIGINT/SIGTERM or :meth:`Service.request_shutdown`)."""
    async with open_store(config.store_address, lease_s=config.lease_s) as store:
        recovered = await store.recover_claims(utcnow())
        if recovered.stopped:
            log.warning(
                "stopped %d requests of topics stopped (DELETE) before an unclean exit: they"
                " were in an SES call or waiting for a retry then, and are not sent again",
                recovered.stopped,
            )
        if recovered.requeued:
            log.warning(
                "re-queued %d requests left in processing by an unclean stop", recovered.requeued
            )
        api_key = await resolve_secret(
            config.api_key, config.data_dir / "api_key", 24, "api_key", store.cluster
        )
        tracking = await resolve_secret(
            config.tracking_secret,
            config.data_dir / "tracking_secret",
            32,
            "tracking_secret",
            store.cluster,
        )
        poster = HttpPoster(
            Limits(config.webhook_timeout_s, config.webhook_max_response_bytes,
                   config.webhook_allow_private),
            max_connections=config.webhook_max_concurrent,
        )
        try:
            async with open_transport(config) as (transport, rate):
                svc = _assemble(config, store, api_key, tracking.encode("utf-8"), transport, rate)
                svc.dispatcher = _dispatcher(config, store, svc.metrics, poster)
                await _supervise(svc, handle_signals, task_status)
        finally:
            poster.close()
        await _release_claims(store, svc)
    log.info("stopped")


def _dispatcher(config: Config, store: Store, metrics: Metrics, post: Post) -> Dispatcher:
    policy = WebhookRetryPolicy(
        base_s=config.webhook_backoff_s,
        max_s=config.webhook_backoff_max_s,
        retry_hours=config.webhook_retry_hours,
    )
    return Dispatcher(
        store.webhooks, post, metrics, policy=policy,
        max_concurrent=config.webhook_max_concurrent, per_endpoint=config.webhook_per_endpoint,
        poll_s=config.webhook_poll_s, lease_s=lease_for(config.webhook_timeout_s),
    )


async def _release_claims(store: Store, svc: Service) -> None:
    """Return claimed but unsent rows to the queue; a store that cannot take the
    write (disk full, file deleted) is logged: the next start does the same."""
    try:
        released = await store.release_claims(svc.pool.stops.items(), utcnow())
    except StoreError as exc:
        log.error("cannot return claimed rows to the queue (the next start does): %s", exc)
        return
    if released.requeued:
        log.info("returned %d claimed but unsent requests to the queue", released.requeued)


def _assemble(
    config: Config,
    store: Store,
    api_key: str,
    tracking_secret: bytes,
    transport: Transport,
    rate: float,
) -> Service:
    metrics = Metrics()
    limiter: Limiter = (
        RateLimiter(rate) if store.cluster is None else SharedRateLimiter(store.cluster, rate)
    )
    metrics.rate.set(rate)
    metrics.identify(
        store.cluster.instance_id if store.cluster is not None else socket.gethostname(),
        "sqlite" if store.cluster is None else "postgresql",
    )
    announce_send, announce_recv = trio.open_memory_channel[Announcement](64)
    gate = PauseGate(announce_send if store.cluster is not None else None)
    handed = Handed()
    capacity = channel_capacity(rate)
    chunk = batch_size(transport.max_batch, rate)
    jobs_send, jobs_recv = trio.open_memory_channel[list[Job]](max(2, capacity // chunk))
    outcomes_send, outcomes_recv = trio.open_memory_channel[Outcome](10_000)
    backlog = Backlog()
    scheduler = Scheduler(
        store, jobs_send, batch=min(capacity, 1000), chunk=chunk, gate=gate, backlog=backlog
    )
    tokens = Tokens(tracking_secret)
    pool = SenderPool(
        transport,
        limiter,
        Composer(
            config.email_sender or "mailpipe@localhost", tokens, config.server_host,
            feedback_sender_id=config.feedback_sender_id,
        ),
        jobs_recv,
        outcomes_send,
        metrics,
        max_concurrent=config.max_concurrent,
        graceful_timeout=config.graceful_timeout,
        retry=RetryPolicy(max_attempts=config.max_attempts),
        handed=handed,
        gate=gate,
        backlog=backlog,
    )
    recorder = Recorder(store, outcomes_recv, handed=handed)
    pauses = Pauses(store, pool, gate, scheduler)
    guard = ReputationGuard(
        store, pauses, metrics,
        topic=Thresholds(
            config.reputation_min_sends, config.pause_bounce_rate, config.pause_complaint_rate
        ),
        account=Thresholds(
            config.account_min_sends, config.pause_bounce_rate, config.pause_complaint_rate
        ),
        window_h=config.reputation_window_h, interval=config.reputation_check_s,
    )
    cluster_sync = None
    if store.cluster is not None:
        cluster_sync = ClusterSync(
            store.cluster, lease_s=config.lease_s, gate=gate, pool=pool, scheduler=scheduler,
            pauses=pauses, announcements=announce_recv,
        )
    return Service(
        config, store, api_key, transport, metrics, limiter, gate, scheduler, pool, recorder,
        tokens, pauses, guard, cluster_sync,
    )


async def _supervise(
    svc: Service, handle_signals: bool, task_status: trio.TaskStatus[Service]
) -> None:
    """The pipeline (http, recorder, pool, scheduler) inside a background nursery
    (signals, store upkeep, cluster, pause probe, reporter). The pipeline ends by
    itself once shutdown is requested: HTTP drains, the scheduler closes the
    jobs channel, the pool drains and closes the outcomes, the recorder drains.
    Then the background is cancelled."""
    async with trio.open_nursery() as background:
        if handle_signals:
            await background.start(watch_signals, svc.request_shutdown)
        await background.start(svc.store.run_upkeep)
        if svc.cluster_sync is not None:
            await background.start(svc.cluster_sync.run)
        await svc.pauses.restore()  # before anything is claimed
        async with trio.open_nursery() as pipeline:
            # HTTP binds before the scheduler claims anything: a port in use
            # ends the start before a single row is touched.
            binds = await pipeline.start(_serve_http, svc)
            svc.url = binds[0]
            svc.base_url = public_base_url(svc.config, svc.url)
            svc.pool.composer.base_url = svc.base_url
            await pipeline.start(svc.recorder.run)
            await pipeline.start(svc.pool.run)
            await pipeline.start(svc.scheduler.run)
            await background.start(
                partial(
                    run_pause_probe,
                    svc.gate,
                    svc.transport,
                    svc.config.pause_probe_s,
                    svc.scheduler.nudge,
                )
            )
            await background.start(Reporter(svc.metrics, svc.scheduler.backlog).run)
            if svc.dispatcher is not None:
                await background.start(svc.dispatcher.run)
            await background.start(svc.guard.run)
            if svc.config.sqs_queue_url is not None:
                intake = SqsIntake(
                    svc, make_sqs_client(svc.config.aws_region, svc.config.sqs_wait_s),
                    svc.config.sqs_queue_url, raw_allowed=svc.config.sqs_raw_messages,
                    wait_s=svc.config.sqs_wait_s,
                )
                await background.start(intake.run)
            await background.start(partial(run_account_watch, svc))
            log.info(
                "mailpipe ready on %s: transport=%s rate=%g/s max_concurrent=%d store=%s",
                svc.url,
                svc.transport.name,
                svc.limiter.target,
                svc.config.max_concurrent,
                "postgresql" if svc.store.cluster is not None else "sqlite",
            )
            # Start-up objects (modules, models, botocore's service data) live as
            # long as the process: keep them out of the collector's way, so a
            # full collection does not stall a call waiting for its permit.
            gc.freeze()
            task_status.started(svc)
            await svc.shutdown_requested.wait()
            log.info(
                "shutting down: finishing calls in flight (at most %gs)",
                svc.config.graceful_timeout,
            )
            svc.stopping = True
            svc.scheduler.stop()
            svc.pool.stop()
        background.cancel_scope.cancel()


async def run_account_watch(
    svc: Service, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Ask the provider for the account's standing every ``ACCOUNT_CHECK_S`` seconds;
    an SES EnforcementStatus other than HEALTHY is logged when it changes."""
    task_status.started()
    while True:
        await svc.account_state()
        await trio.sleep(svc.config.account_check_s)


async def _serve_http(
    svc: Service, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    install_json_error_bodies()
    hc = HyperConfig()
    hc.bind = [f"{svc.config.server_bind}:{svc.config.server_port}"]
    hc.graceful_timeout = svc.config.graceful_timeout
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    app = RequestTracker(SnsFastPath(create_app(svc), svc))

    async def drain_then_close(nursery: trio.Nursery) -> None:
        await svc.shutdown_requested.wait()  # hypercorn stops accepting on the same trigger
        with trio.move_on_after(svc.config.graceful_timeout):
            await app.wait_idle()
        nursery.cancel_scope.cancel()  # only idle keep-alive connections are left

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_then_close, nursery)
        try:
            binds = await nursery.start(
                partial(serve, cast(Any, app), hc, shutdown_trigger=svc.shutdown_requested.wait)
            )
        except BaseException as exc:
            refused = _bind_error(exc)
            if refused is None:
                raise
            raise ConfigError(
                f"SERVER_PORT={svc.config.server_port}: cannot listen on {hc.bind[0]}: {refused}"
            ) from None
        task_status.started(binds)


def _bind_error(exc: BaseException) -> OSError | None:
    """The socket error behind a failed start of hypercorn, if that is what it was."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError) else None
