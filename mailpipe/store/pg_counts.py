"""Topic counters on PostgreSQL: deltas every writer only inserts, folded by upkeep.

What it promises: a topic's counts (requests per status, distinct requests per
result type) are the sum of its row in ``topic_counts`` (``topic_result_counts``)
and its rows in ``topic_count_deltas`` (``topic_result_deltas``), exact at any
snapshot: every change adds its delta in the transaction that changes the rows
(ingest through :func:`add_created`, status changes and results through
migration 3's triggers). Writers never update a shared row, so instances
counting at once never wait for one another and cannot deadlock on counters.
:func:`fold_count_deltas` moves the deltas into the totals, one instance at a
time, so a read sums a few rows however long the service has run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from mailpipe.status import Status
from mailpipe.store.pg_pool import Conn

FOLD_LOCK: Final = 0x6D61696C636E7473
"""The ``pg_try_advisory_xact_lock`` key of a fold (``mailcnts`` in ASCII): one
instance folds at a time; the others skip that round."""

_ADD_CREATED: Final = (
    f"INSERT INTO topic_count_deltas (topic_id, status, n) VALUES (%s, {Status.CREATED:d}, %s)"
)
_FOLD: Final = (
    "WITH gone AS (DELETE FROM {deltas} RETURNING topic_id, status, n)"
    " INSERT INTO {totals} AS t (topic_id, status, n)"
    " SELECT topic_id, status, sum(n) FROM gone GROUP BY topic_id, status"
    " ORDER BY topic_id, status"
    " ON CONFLICT (topic_id, status) DO UPDATE SET n = t.n + excluded.n"
)
_FOLDS: Final = (
    _FOLD.format(deltas="topic_count_deltas", totals="topic_counts"),
    _FOLD.format(deltas="topic_result_deltas", totals="topic_result_counts"),
)
TOPIC_STATS: Final = (
    "SELECT 'request', status::text, sum(n) FROM ("
    " SELECT status, n FROM topic_counts WHERE topic_id = %(t)s"
    " UNION ALL SELECT status, n FROM topic_count_deltas WHERE topic_id = %(t)s) AS r"
    " GROUP BY status"
    " UNION ALL "
    "SELECT 'result', status, sum(n) FROM ("
    " SELECT status, n FROM topic_result_counts WHERE topic_id = %(t)s"
    " UNION ALL SELECT status, n FROM topic_result_deltas WHERE topic_id = %(t)s) AS s"
    " GROUP BY status HAVING sum(n) > 0"
)
"""A topic's counts in one statement (one snapshot): ``('request', status, n)`` and
``('result', type, n)`` rows."""


def add_created(conn: Conn, created: Iterable[tuple[str, int]]) -> None:
    """Count ``(topic, n)`` new CREATED requests, in the caller's transaction."""
    rows = list(created)
    if rows:
        with conn.cursor() as cur:
            cur.executemany(_ADD_CREATED, rows)


def fold_count_deltas(conn: Conn) -> int:
    """Fold every committed delta into the totals, in the caller's transaction;
    how many (topic, status) totals changed. Skips (0) while another instance folds.

    The deltas a fold deletes are those committed before it began; a delta
    committing meanwhile stays for the next fold. The totals it updates are
    changed by folds only, one at a time, in key order."""
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (FOLD_LOCK,)).fetchone()
    if not row or not row[0]:
        return 0
    return sum(conn.execute(sql).rowcount for sql in _FOLDS)
