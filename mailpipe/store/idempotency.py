"""SQL for ``Idempotency-Key`` (used through :class:`mailpipe.store.Store`).

A key remembers the SHA-256 of the body it first came with and the answer
given then. Keys are honoured for :data:`KEEP` (24 h, as Stripe does) and
pruned afterwards. :func:`earlier_answer` and :func:`remember` run inside the
insert's transaction, so the check and the insert are one atomic step: of two
identical requests racing, one stores and the other replays.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta
from typing import Any, Final

from mailpipe.errors import KeyReused
from mailpipe.model import IdempotencyKey
from mailpipe.timeutil import to_db

KEEP: Final = timedelta(hours=24)
"""How long a key is honoured."""


def earlier_answer(
    conn: sqlite3.Connection, key: IdempotencyKey, now: datetime
) -> dict[str, Any] | None:
    """The answer remembered for ``key`` within :data:`KEEP`, or None.

    Raises :class:`KeyReused` when the key came with another body.
    """
    row = conn.execute(
        "SELECT body_sha256, response FROM idempotency_keys WHERE key = ? AND created_at >= ?",
        (key.key, to_db(now - KEEP)),
    ).fetchone()
    return answer_of(key, row)


def answer_of(key: IdempotencyKey, row: tuple[str, str] | None) -> dict[str, Any] | None:
    """The answer in a stored (body digest, response) ``row`` of ``key``, None without one.

    Raises :class:`KeyReused` when the row's body digest is not ``key``'s.
    """
    if row is None:
        return None
    if row[0] != key.body_sha256:
        raise KeyReused("this Idempotency-Key was already used with a different body")
    answer: dict[str, Any] = json.loads(row[1])
    return answer


def answer_text(answer: dict[str, Any]) -> str:
    """``answer`` as stored in ``idempotency_keys.response``."""
    return json.dumps(answer, separators=(",", ":"))


def prune(conn: sqlite3.Connection, now: datetime) -> int:
    """Forget keys older than :data:`KEEP`; returns how many."""
    return conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < ?", (to_db(now - KEEP),)
    ).rowcount


def remember(
    conn: sqlite3.Connection, key: IdempotencyKey, answer: dict[str, Any], now: datetime
) -> None:
    """Store ``key`` with its body digest and ``answer`` (in the caller's transaction)."""
    conn.execute(
        "INSERT OR REPLACE INTO idempotency_keys (key, body_sha256, response, created_at)"
        " VALUES (?, ?, ?, ?)",
        (key.key, key.body_sha256, answer_text(answer), to_db(now)),
    )
