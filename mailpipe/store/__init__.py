"""The store: every SQL statement mailpipe runs lives in this package.

:mod:`mailpipe.store.base` says what a store does (the :class:`Store`
protocol); :mod:`mailpipe.store.sqlite` and :mod:`mailpipe.store.postgres` do
it. :func:`open_store` picks one by the address it is given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from mailpipe.model import (
    Claimed,
    Content,
    FeedbackOutcome,
    IdempotencyKey,
    InsertResult,
    NewMessage,
    Outcome,
    Recovery,
    Suppression,
)
from mailpipe.store.base import Cluster, ClusterEvent, Store, TopicStats
from mailpipe.store.sqlite import CHECKPOINT_AFTER_ROWS, open_sqlite

__all__ = [
    "CHECKPOINT_AFTER_ROWS",
    "Claimed",
    "Cluster",
    "ClusterEvent",
    "Content",
    "FeedbackOutcome",
    "IdempotencyKey",
    "InsertResult",
    "NewMessage",
    "Outcome",
    "Recovery",
    "Store",
    "Suppression",
    "TopicStats",
    "open_store",
]


def is_postgres_url(where: str | Path) -> bool:
    """Whether ``where`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(where, str) and where.startswith(("postgresql://", "postgres://"))


@asynccontextmanager
async def open_store(where: str | Path, *, lease_s: float = 10.0) -> AsyncIterator[Store]:
    """Open the store at ``where``: a ``postgresql://`` URL, or a SQLite file path."""
    if is_postgres_url(where):
        from mailpipe.store.postgres import open_postgres

        async with open_postgres(str(where), lease_s=lease_s) as pg:
            yield pg
    else:
        async with open_sqlite(Path(where)) as sqlite:
            yield sqlite
