"""The service: one nursery supervising every actor.

Start order (each reports ready through ``nursery.start``): recorder, sender
pool, scheduler, metrics reporter, then HTTP. Shutdown: stop accepting
(hypercorn's ``shutdown_trigger``), stop claiming, let calls in flight finish
and be recorded, then return every row still PROCESSING to CREATED.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from mailpipe.addresses import AddressValidator
from mailpipe.compose import Composer
from mailpipe.config import Config
from mailpipe.content.tokens import Tokens, load_or_create_secret
from mailpipe.feedback.sns import SnsVerifier, http_fetch
from mailpipe.http.app import create_app
from mailpipe.http.drain import RequestTracker
from mailpipe.http.feedback import SnsFastPath, make_verifier
from mailpipe.jobs import Job
from mailpipe.limiter import RateLimiter
from mailpipe.metrics import Metrics, Reporter
from mailpipe.pause import PauseGate
from mailpipe.probe import run_pause_probe
from mailpipe.recorder import Recorder
from mailpipe.scheduler import Scheduler
from mailpipe.secrets_file import load_or_create_secret_file
from mailpipe.sender import RetryPolicy, SenderPool, batch_size
from mailpipe.signals import watch_signals
from mailpipe.store import Outcome, Store, open_store
from mailpipe.timeutil import utcnow
from mailpipe.transport import Transport
from mailpipe.transport.factory import open_transport

log = logging.getLogger(__name__)


@dataclass
class Service:
    """Everything the actors and the HTTP handlers share."""

    config: Config
    store: Store
    api_key: str
    transport: Transport
    metrics: Metrics
    limiter: RateLimiter
    gate: PauseGate
    scheduler: Scheduler
    pool: SenderPool
    recorder: Recorder
    jobs: trio.MemoryReceiveChannel[list[Job]]
    handed: dict[int, str]
    addresses: AddressValidator = field(default_factory=AddressValidator)
    cpu_limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(2))
    shutdown_requested: trio.Event = field(default_factory=trio.Event)
    stopping: bool = False
    url: str = ""
    sns_verifier: SnsVerifier = field(init=False)
    tokens: Tokens = field(init=False)
    """Signs and checks the open, click and unsubscribe links."""
    sns_get: Callable[[str], bytes] = field(default=http_fetch)
    """GETs SNS certificates and SubscribeURLs (blocking; run in a thread); tests replace it."""

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        self.shutdown_requested.set()

    def refresh_gauges(self) -> None:
        """Bring the sampled gauges up to date (before a scrape)."""
        self.metrics.queued.set(self.scheduler.queued)
        self.metrics.rate.set(self.limiter.rate)
        self.metrics.paused.set(1 if self.gate.paused else 0)


def resolve_api_key(config: Config) -> str:
    """The configured ``API_KEY``, or one generated once into ``<data dir>/api_key``."""
    if config.api_key:
        return config.api_key
    path = config.data_dir / "api_key"
    key = load_or_create_secret_file(path, 24)
    log.info("API_KEY is not set; using the generated key in %s", path.resolve())
    return key


def resolve_tracking_secret(config: Config) -> bytes:
    """The configured ``TRACKING_SECRET``, or one generated once into
    ``<data dir>/tracking_secret``."""
    if config.tracking_secret:
        return config.tracking_secret.encode("utf-8")
    path = config.data_dir / "tracking_secret"
    secret = load_or_create_secret(path)
    log.info("TRACKING_SECRET is not set; using the generated key in %s", path.resolve())
    return secret


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
        api_key = resolve_api_key(config)
        async with open_transport(config) as (transport, rate):
            svc = _assemble(config, store, api_key, transport, rate)
            await _supervise(svc, handle_signals, task_status)
        released = await store.release_claims(svc.pool.stops.items(), utcnow())
        if released.requeued:
            log.info("returned %d claimed but unsent requests to the queue", released.requeued)
    log.info("stopped")


def _assemble(
    config: Config, store: Store, api_key: str, transport: Transport, rate: float
) -> Service:
    metrics = Metrics()
    limiter = RateLimiter(rate)
    metrics.rate.set(rate)
    gate = PauseGate()
    handed: dict[int, str] = {}
    capacity = channel_capacity(rate)
    chunk = batch_size(transport.max_batch, rate)
    jobs_send, jobs_recv = trio.open_memory_channel[list[Job]](max(2, capacity // chunk))
    outcomes_send, outcomes_recv = trio.open_memory_channel[Outcome](10_000)
    scheduler = Scheduler(store, jobs_send, batch=min(capacity, 1000), chunk=chunk)
    scheduler.paused = lambda: gate.paused
    tokens = Tokens(resolve_tracking_secret(config))
    pool = SenderPool(
        transport,
        limiter,
        Composer(config.email_sender or "mailpipe@localhost", tokens, config.server_host),
        jobs_recv,
        outcomes_send,
        metrics,
        max_concurrent=config.max_concurrent,
        graceful_timeout=config.graceful_timeout,
        retry=RetryPolicy(max_attempts=config.max_attempts),
        handed=handed,
        gate=gate,
    )
    pool.on_receive = lambda n: setattr(scheduler, "queued", scheduler.queued - n)
    recorder = Recorder(store, outcomes_recv, handed=handed)
    svc = Service(
        config,
        store,
        api_key,
        transport,
        metrics,
        limiter,
        gate,
        scheduler,
        pool,
        recorder,
        jobs_recv,
        handed,
    )
    svc.sns_verifier = make_verifier(config, lambda url: svc.sns_get(url))
    svc.tokens = tokens
    return svc


async def _supervise(
    svc: Service, handle_signals: bool, task_status: trio.TaskStatus[Service]
) -> None:
    aux = [trio.CancelScope() for _ in range(4)]  # signals, reporter, probe, checkpoints
    async with trio.open_nursery() as nursery:
        if handle_signals:
            await nursery.start(_in_scope, aux[0], partial(watch_signals, svc.request_shutdown))
        await nursery.start(_in_scope, aux[3], svc.store.run_upkeep)
        # HTTP binds before the scheduler claims anything: a port in use ends
        # the start before a single row is touched.
        binds = await nursery.start(_serve_http, svc)
        svc.url = binds[0]
        await nursery.start(svc.recorder.run)
        await nursery.start(svc.pool.run)
        await nursery.start(svc.scheduler.run)
        await nursery.start(_in_scope, aux[2], partial(
            run_pause_probe, svc.gate, svc.transport, svc.config.pause_probe_s,
            svc.scheduler.nudge,
        ))
        await nursery.start(
            _in_scope,
            aux[1],
            Reporter(svc.metrics, queued=lambda: svc.scheduler.queued).run,
        )
        log.info(
            "mailpipe ready on %s: transport=%s rate=%g/s max_concurrent=%d",
            svc.url,
            svc.transport.name,
            svc.limiter.rate,
            svc.config.max_concurrent,
        )
        # Start-up objects (modules, models, botocore's service data) live as
        # long as the process: keep them out of the collector's way, so a
        # full collection does not stall a call waiting for its permit.
        gc.freeze()
        task_status.started(svc)
        await svc.shutdown_requested.wait()
        log.info(
            "shutting down: finishing calls in flight (at most %gs)", svc.config.graceful_timeout
        )
        svc.stopping = True
        svc.scheduler.stop()
        svc.pool.stop()
        await svc.recorder.done.wait()
        for scope in aux:
            scope.cancel()


async def _in_scope(
    scope: trio.CancelScope,
    fn: Callable[..., object],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        await fn(task_status=task_status)  # type: ignore[misc]


async def _serve_http(
    svc: Service, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
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
        binds = await nursery.start(
            partial(serve, cast(Any, app), hc, shutdown_trigger=svc.shutdown_requested.wait)
        )
        task_status.started(binds)
