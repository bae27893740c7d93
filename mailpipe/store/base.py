"""What the pipeline and the HTTP edge ask of a store: the :class:`Store` protocol.

Two implementations hold every SQL statement mailpipe runs:

- :mod:`mailpipe.store.sqlite`: one instance per database file (the embedded
  default); ``cluster`` is None.
- :mod:`mailpipe.store.postgres`: any number of instances on one database;
  ``cluster`` is a :class:`Cluster` (leases, the shared rate, change events).

Times are aware UTC datetimes. Every method may raise
:class:`~mailpipe.errors.StoreError` when the database fails or is away.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from mailpipe.model import (
    Claimed,
    Content,
    FeedbackOutcome,
    Figures,
    IdempotencyKey,
    InsertResult,
    NewMessage,
    Outcome,
    Pause,
    Recovery,
    Suppression,
)
from mailpipe.status import Status

if TYPE_CHECKING:
    from mailpipe.feedback.ses_events import SesEvent
    from mailpipe.store.webhook_tables import WebhookTables

T = TypeVar("T")


@dataclass(frozen=True)
class TopicStats:
    """A topic's requests per status and its distinct requests per result type."""

    requests: dict[Status, int]
    results: dict[str, int]


@dataclass(frozen=True)
class Activity:
    """What happened over a bounded window (``ACTIVITY_MINUTES`` up to the latest
    send): counts per ``(minute, kind)``, minutes as ``YYYY-MM-DD HH:MM`` UTC. ``sent``
    has kind ``sent``; ``results`` one kind per SES event type, read from at most
    ``ACTIVITY_MAX_RESULTS`` newest results (``capped`` when there were more);
    ``errors`` the commonest errors of failed requests, with counts."""

    sent: list[tuple[str, str, int]]
    results: list[tuple[str, str, int]]
    errors: list[tuple[str, int]]
    capped: bool


@dataclass(frozen=True)
class ClusterEvent:
    """A change one instance made that the others must apply to what they hold.

    ``kind`` and ``payload``:

    - ``stop``: ``{"topic": str, "upto": int}`` (``DELETE /v1/topics``);
    - ``suppress``: ``{"entries": [[address, reason], ...]}``;
    - ``lift``: ``{"address": str}`` (a suppression was deleted);
    - ``pause``: ``{"reason": str}`` and ``resume``: ``{}`` (the SES account);
    - ``topic_pause`` / ``topic_resume``: ``{"topic": str}`` (a stored topic pause);
    - ``account_pause``: ``{"reason": str}`` / ``account_resume``: ``{}`` (the
      reputation guard's stored account pause).
    """

    id: int
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)


class Cluster(Protocol):
    """What several instances on one database share (PostgreSQL only)."""

    instance_id: str
    """This instance's id; claims and outcomes carry it."""

    async def heartbeat(self) -> None:
        """Register this instance (the first time) or renew its heartbeat.

        Raises :class:`~mailpipe.errors.LeaseLost` when another instance has
        recovered this one's rows (its registration is gone).
        """

    async def recover_lapsed(self, lease_s: float, now: datetime) -> Recovery:
        """Take back the rows of instances whose heartbeat is older than
        ``lease_s`` (on the database clock): rows a stop covers go to STOPPED,
        the rest to CREATED; the lapsed registrations are removed."""

    async def rate_transaction(
        self, update: Callable[[str | None, float], tuple[str, T]]
    ) -> tuple[T, float]:
        """Run ``update(state, db_now)`` on the shared rate row, under its lock.

        ``state`` is the JSON text ``update`` returned last time (None at
        first); ``db_now`` the database clock in epoch seconds. Stores the new
        state; returns ``update``'s value and the offset that maps the database
        clock to ``time.perf_counter()`` (``perf = db + offset``), measured in
        the same round trip.
        """

    async def events_since(self, cursor: int | None) -> tuple[list[ClusterEvent], int]:
        """Events newer than ``cursor`` (None: none, only the current cursor), oldest
        first, and the cursor to pass next time."""

    async def wait_for_events(self, max_wait_s: float) -> None:
        """Return when an instance published an event, or after ``max_wait_s``."""

    async def publish(self, kind: str, payload: dict[str, Any]) -> None:
        """Publish an event (``pause`` / ``resume``) to every instance."""

    async def shared_secret(self, name: str, candidate: str) -> str:
        """The secret ``name`` all instances use: the one stored first, or
        ``candidate`` when none is (it is then stored)."""

    async def stop_own_claims(
        self, topic_id: str, upto: int, *, exclude: Sequence[int], now: datetime
    ) -> int:
        """Move this instance's PROCESSING rows of the topic (ids up to ``upto``,
        not in ``exclude``) to STOPPED; how many (a stop made elsewhere)."""


class Store(Protocol):
    """Durable state of requests, contents, results, suppressions and keys."""

    cluster: Cluster | None
    """Shared state of several instances, or None when this is the only one."""
    webhooks: WebhookTables
    """Webhook endpoints, the event outbox, deliveries and attempts."""

    # -- ingest ------------------------------------------------------------

    async def insert_messages(
        self, messages: Sequence[NewMessage], now: datetime, *, key: IdempotencyKey | None = None
    ) -> InsertResult:
        """Store every message and its recipients in one transaction (all or nothing).

        With ``key``, checking and remembering the key are part of that
        transaction: a key used within 24 h stores nothing and returns the
        earlier answer (``replayed``), or raises
        :class:`~mailpipe.errors.KeyReused` when its body differed.
        """

    async def idempotent_answer(self, key: IdempotencyKey, now: datetime) -> dict[str, Any] | None:
        """The answer given earlier for ``key`` (None when unused within 24 h); raises
        :class:`~mailpipe.errors.KeyReused` when it came with another body."""

    # -- sending -----------------------------------------------------------

    async def claim_due(self, now: datetime, limit: int) -> list[Claimed]:
        """Move up to ``limit`` due CREATED rows to PROCESSING (held by this
        instance): earliest ``scheduled_at`` first, then lowest id, returned in
        id order. Reads due rows only, however many wait for later. Rows to
        suppressed addresses go to STOPPED (``suppressed: <reason>``) in the
        same transaction and are not returned."""

    async def next_scheduled_at(self) -> datetime | None:
        """When the earliest CREATED row falls due, or None when there is none."""

    async def load_contents(self, ids: Iterable[int]) -> dict[int, Content]:
        """The contents with these ids."""

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: datetime) -> int:
        """Write outcomes of rows this instance holds (PROCESSING), in one
        transaction; rows changed. A row no longer held is left alone."""

    async def recover_claims(self, now: datetime) -> Recovery:
        """At start-up: settle rows a dead predecessor left PROCESSING.

        SQLite (one instance per file): every such row; rows of a stopped topic
        go to STOPPED, the rest back to CREATED. PostgreSQL: only rows of
        instances whose lease lapsed (see :meth:`Cluster.recover_lapsed`).
        """

    async def release_claims(self, stops: Sequence[tuple[str, int]], now: datetime) -> Recovery:
        """At shutdown, with nothing in flight: this instance's PROCESSING rows
        covered by ``stops`` (topic, upto) or a stored stop go to STOPPED, the
        rest back to CREATED."""

    # -- topics ------------------------------------------------------------

    async def max_request_id(self, topic_id: str) -> int | None:
        """The highest request id of the topic, or None when it has none."""

    async def stop_topic(
        self, topic_id: str, upto: int, *, exclude: Sequence[int], now: datetime
    ) -> int:
        """Store the stop, and move the topic's CREATED rows and this instance's
        PROCESSING rows (ids up to ``upto``, not in ``exclude``) to STOPPED;
        how many. Other instances learn of it through a ``stop`` event."""

    async def topic_stats(self, topic_id: str) -> TopicStats:
        """The topic's requests per status and distinct requests per result type,
        from counters kept in the transactions that change the rows (a few rows
        read, however big the topic)."""

    async def topic_list(self, limit: int) -> list[tuple[str, TopicStats]]:
        """Up to ``limit`` topics with their counts (from the counters), largest first."""

    async def activity(self, topic_id: str | None) -> Activity:
        """The topic's recent :class:`Activity` (every topic's when None); indexed and
        bounded: its cost does not grow with the topic's size past the window's."""

    async def search_suppressions(self, text: str, limit: int) -> list[Suppression]:
        """Up to ``limit`` suppressions whose address contains ``text``, newest first."""

    async def count_sent_since(self, since: datetime) -> int:
        """How many requests reached SENT at or after ``since``."""

    # -- reputation and pauses ---------------------------------------------

    async def reputation(self, topic_id: str | None, since: datetime) -> Figures:
        """Sends (requests that reached SENT), permanent bounces and complaints
        (distinct requests with such a result) at or after ``since``, of the topic,
        or of the account when ``topic_id`` is None (indexed, bounded by the window)."""

    async def topics_of(self, request_ids: Sequence[int]) -> list[str]:
        """The distinct topics of these requests."""

    async def pause_topic(self, topic_id: str, pause: Pause) -> bool:
        """Store the topic's pause in one transaction (from then on its CREATED rows
        are not claimed; other instances learn of it through a ``topic_pause``
        event); False when it was paused already (the first pause is kept)."""

    async def resume_topic(self, topic_id: str) -> bool:
        """Forget the topic's pause (``topic_resume`` event); False when it had none."""

    async def topic_pause(self, topic_id: str) -> Pause | None:
        """The topic's stored pause, or None."""

    async def paused_topics(self) -> list[str]:
        """Every paused topic (to withhold their claimed rows after a restart)."""

    async def pause_account(self, pause: Pause) -> bool:
        """Store the account's pause in one transaction (``account_pause`` event);
        False when it was paused already."""

    async def resume_account(self) -> bool:
        """Forget the account's pause (``account_resume`` event); False when it had none."""

    async def account_pause(self) -> Pause | None:
        """The account's stored pause, or None."""

    # -- feedback, tracking, suppressions ----------------------------------

    async def record_feedback(
        self, sns_message_id: str, event: SesEvent, now: datetime
    ) -> FeedbackOutcome:
        """Store one verified SES record (results, suppressions) in one
        transaction, unless this SNS MessageId was stored before (``duplicate``)."""

    async def record_result(self, request_id: int, status: str, raw: str, now: datetime) -> bool:
        """Add a result (``Open``, ``Click``) to a request; False when there is none."""

    async def recipient_of(self, request_id: int) -> str | None:
        """The address a request was sent to, or None when there is no such request."""

    async def unsubscribe(self, request_id: int, source: str, raw: str, now: datetime) -> bool:
        """Suppress the request's recipient (``unsubscribe``) and record an
        ``Unsubscribe`` result; False when the address was suppressed already."""

    async def add_suppression(
        self,
        address: str,
        reason: str,
        source: str | None,
        *,
        request_id: int | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Never send to ``address`` again; False if it already was."""

    async def get_suppression(self, address: str) -> Suppression | None:
        """The suppression of ``address`` (compared lower-cased), or None."""

    async def delete_suppression(self, address: str) -> bool:
        """Lift the suppression of ``address``; False when there was none."""

    async def list_suppressions(
        self, limit: int, cursor: int | None = None
    ) -> tuple[list[Suppression], int | None]:
        """A page of suppressions, newest first, and the next page's cursor (or None)."""

    # -- upkeep ------------------------------------------------------------

    async def run_upkeep(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Background upkeep until cancelled (SQLite: WAL checkpoints); a failing
        round is logged and retried, never raised."""

    async def after_large_insert(self) -> None:
        """Called off the request's path after a large insert (SQLite: checkpoint)."""

    async def ping(self) -> None:
        """Raise :class:`~mailpipe.errors.StoreError` unless the database answers and,
        as far as the store can tell cheaply, takes writes (readiness).

        SQLite: the error names a database file deleted or replaced while
        running, or the last write failure (a full disk) until a write succeeds.
        PostgreSQL: the server answers (it reports its own disk full per write)."""
