"""Counters and gauges of the pipeline, as Prometheus metrics and a log line.

Each service owns one :class:`Metrics` with its own registry, so several
services (tests) can live in one process.
"""

from __future__ import annotations

import logging

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from mailpipe.model import Figures
from mailpipe.pipeline.jobs import Backlog

log = logging.getLogger(__name__)


class Metrics:
    """The pipeline's figures; the actors count, the reporter and ``/metrics`` read."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sent = Counter("mailpipe_sent", "Emails handed to the provider", registry=r)
        self.failed = Counter("mailpipe_failed", "Requests that ended failed", registry=r)
        self.throttled = Counter(
            "mailpipe_throttled", "Sends the provider refused for rate", registry=r
        )
        self.retried = Counter(
            "mailpipe_retried", "Sends scheduled for another attempt", registry=r
        )
        self.maybe_duplicated = Counter(
            "mailpipe_retried_maybe_sent",
            "Retries after a failure in which the provider may already have sent",
            registry=r,
        )
        self.release_missed = Counter(
            "mailpipe_release_missed",
            "Sends that could not leave within their shared permit's slack and asked again",
            registry=r,
        )
        self.stopped = Counter("mailpipe_stopped", "Requests stopped before sending", registry=r)
        self.accepted = Counter("mailpipe_accepted", "Recipients accepted by the API", registry=r)
        self.call_seconds = Histogram(
            "mailpipe_provider_call_seconds",
            "Latency of one provider call",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.queued = Gauge("mailpipe_queue_depth", "Claimed jobs waiting to send", registry=r)
        self.in_flight = Gauge("mailpipe_in_flight", "Provider calls in flight", registry=r)
        self.rate = Gauge(
            "mailpipe_effective_rate", "Current permitted sends per second", registry=r
        )
        self.paused = Gauge("mailpipe_sending_paused", "1 while sending is paused", registry=r)
        self.webhook_attempts = Counter(
            "mailpipe_webhook_attempts",
            "Webhook delivery attempts by outcome (delivered, retry, failed, gone)",
            ["outcome"],
            registry=r,
        )
        self.webhook_disabled = Counter(
            "mailpipe_webhook_endpoints_disabled", "Webhook endpoints disabled", registry=r
        )
        self.webhook_oldest = Gauge(
            "mailpipe_webhook_oldest_undelivered_seconds",
            "Age of the oldest webhook delivery not yet delivered (0: none)",
            registry=r,
        )
        self.reputation_sends = Gauge(
            "mailpipe_reputation_sends", "Sends in the reputation window (account)", registry=r
        )
        self.reputation_bounces = Gauge(
            "mailpipe_reputation_bounces", "Permanent bounces in the window (account)", registry=r
        )
        self.reputation_complaints = Gauge(
            "mailpipe_reputation_complaints", "Complaints in the window (account)", registry=r
        )
        self.bounce_rate = Gauge(
            "mailpipe_reputation_bounce_rate", "Bounce rate in the window (account)", registry=r
        )
        self.complaint_rate = Gauge(
            "mailpipe_reputation_complaint_rate", "Complaint rate in the window (account)",
            registry=r,
        )

    def reputation(self, figures: Figures) -> None:
        """Show the account's figures over the reputation window."""
        self.reputation_sends.set(figures.sends)
        self.reputation_bounces.set(figures.bounces)
        self.reputation_complaints.set(figures.complaints)
        self.bounce_rate.set(figures.bounce_rate)
        self.complaint_rate.set(figures.complaint_rate)

    def identify(self, instance: str, store: str) -> None:
        """Name this process in ``mailpipe_instance_info`` (one series per instance)."""
        Info("mailpipe_instance", "The instance these figures are of", registry=self.registry).info(
            {"instance": instance, "store": store}
        )

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


def _value(counter: Counter) -> float:
    return float(counter._value.get())


class Reporter:
    """Logs one line every ``interval`` seconds in which something happened."""

    def __init__(self, metrics: Metrics, backlog: Backlog, *, interval: float = 5.0) -> None:
        self.metrics = metrics
        self.interval = interval
        self._backlog = backlog

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Report until cancelled."""
        m = self.metrics
        last = (_value(m.sent), _value(m.failed), _value(m.throttled))
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            m.queued.set(self._backlog.count)
            now = (_value(m.sent), _value(m.failed), _value(m.throttled))
            sent, failed, throttled = (a - b for a, b in zip(now, last, strict=True))
            last = now
            in_flight = int(m.in_flight._value.get())
            queued = self._backlog.count
            if sent or failed or throttled or in_flight or queued:
                log.info(
                    "sent=%d failed=%d throttled=%d rate=%.1f/s queued=%d in_flight=%d",
                    sent,
                    failed,
                    throttled,
                    sent / self.interval,
                    queued,
                    in_flight,
                )
