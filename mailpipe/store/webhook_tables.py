"""The webhook tables of a store, behind async methods (``store.webhooks``).

One class for both engines: the SQL is :mod:`mailpipe.store.webhooks`' and the
store passes how it runs a transaction (SQLite: on the writer connection;
PostgreSQL: on a pooled one). Every method may raise
:class:`~mailpipe.errors.StoreError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from mailpipe.store import webhooks as _sql
from mailpipe.webhooks.events import Event
from mailpipe.webhooks.model import Attempt, Claim, DeliveryView, Endpoint, Verdict

Runner = Callable[[Callable[[Any], Any]], Awaitable[Any]]
"""Runs a function of a connection in one transaction; its result."""


class WebhookTables:
    """Endpoints, the outbox, deliveries and attempts of one store."""

    def __init__(self, dialect: _sql.Dialect, write: Runner, read: Runner) -> None:
        self._d = dialect
        self._write = write
        self._read = read

    async def create(self, endpoint: Endpoint) -> None:
        """Store a new endpoint."""
        await self._write(lambda conn: _sql.create_endpoint(conn, self._d, endpoint))

    async def get(self, endpoint_id: str) -> Endpoint | None:
        """The endpoint with this id, or None."""
        found: Endpoint | None = await self._read(
            lambda conn: _sql.get_endpoint(conn, self._d, endpoint_id)
        )
        return found

    async def all(self) -> list[Endpoint]:
        """Every endpoint, oldest first."""
        found: list[Endpoint] = await self._read(lambda conn: _sql.list_endpoints(conn, self._d))
        return found

    async def save(self, endpoint: Endpoint) -> bool:
        """Overwrite the stored endpoint with ``endpoint``; False when it is gone."""
        return bool(await self._write(lambda conn: _sql.save_endpoint(conn, self._d, endpoint)))

    async def delete(self, endpoint_id: str) -> bool:
        """Delete the endpoint and its deliveries; False when there was none."""
        return bool(
            await self._write(lambda conn: _sql.delete_endpoint(conn, self._d, endpoint_id))
        )

    async def enqueue(self, events: Sequence[Event], now: datetime) -> int:
        """Store events on their own (outside any other change); deliveries made."""
        return int(await self._write(lambda conn: _sql.enqueue(conn, self._d, events, now)))

    async def claim(self, now: datetime, limit: int, lease_until: datetime) -> list[Claim]:
        """Lease up to ``limit`` due deliveries until ``lease_until``."""
        found: list[Claim] = await self._write(
            lambda conn: _sql.claim(conn, self._d, now, limit, lease_until)
        )
        return found

    async def record(self, claim: Claim, attempt: Attempt, verdict: Verdict, now: datetime) -> bool:
        """Store an attempt and its verdict; True when it disabled the endpoint."""
        return bool(await self._write(
            lambda conn: _sql.record_attempt(conn, self._d, claim, attempt, verdict, now)
        ))

    async def retry(self, endpoint_id: str, event_id: str, now: datetime) -> bool:
        """Make one delivery due now; False when there is none."""
        return bool(await self._write(
            lambda conn: _sql.retry_delivery(conn, self._d, endpoint_id, event_id, now)
        ))

    async def deliveries(self, endpoint_id: str, limit: int, history: int) -> list[DeliveryView]:
        """The endpoint's most recent deliveries with their latest attempts."""
        found: list[DeliveryView] = await self._read(
            lambda conn: _sql.list_deliveries(conn, self._d, endpoint_id, limit, history)
        )
        return found

    async def pending_times(self) -> tuple[datetime | None, datetime | None]:
        """When the oldest pending delivery was created, and when the next one of an
        enabled endpoint falls due (each None when there is none)."""
        found: tuple[datetime | None, datetime | None] = await self._read(
            lambda conn: _sql.pending_times(conn, self._d)
        )
        return found

    async def oldest_undelivered(self) -> datetime | None:
        """When the oldest pending delivery was created, or None."""
        return (await self.pending_times())[0]

    async def prune(self, before: datetime) -> int:
        """Forget settled events older than ``before``; how many."""
        return int(await self._write(lambda conn: _sql.prune(conn, self._d, before)))

    async def release_leases(self) -> int:
        """Forget every lease (only where no other instance can hold one)."""
        return int(await self._write(lambda conn: _sql.release_leases(conn, self._d)))
