"""The truth a topic's counters must equal: ``COUNT(*)`` over the rows themselves.

Read on a connection of its own (a SQLite file beside the store's, or a
PostgreSQL URL), the way the store answered before it kept counters.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pgkit

from mailpipe.http.api import topic_stats_json
from mailpipe.status import Status
from mailpipe.store import Store
from mailpipe.store.base import TopicStats

_BY_STATUS = (
    "SELECT status, COUNT(*) FROM email_requests"
    " WHERE topic_id = {p} AND deleted_at IS NULL GROUP BY status"
)
_BY_RESULT = (
    "SELECT r.status, COUNT(DISTINCT r.request_id) FROM email_results r"
    " JOIN email_requests q ON q.id = r.request_id WHERE q.topic_id = {p} GROUP BY r.status"
)


def _rows(where: str | Path, sql: str, topic: str) -> list[tuple[Any, ...]]:
    if isinstance(where, Path):
        conn = sqlite3.connect(where)
        try:
            return conn.execute(sql.format(p="?"), (topic,)).fetchall()
        finally:
            conn.close()
    return pgkit.execute(where, sql.format(p="%s"), (topic,))


def counted(where: str | Path, topic: str) -> TopicStats:
    """The topic's requests per status and results per type, counted row by row."""
    requests = dict.fromkeys(Status, 0)
    for status, n in _rows(where, _BY_STATUS, topic):
        requests[Status(status)] = int(n)
    results = {status: int(n) for status, n in _rows(where, _BY_RESULT, topic)}
    return TopicStats(requests, results)


async def assert_counters_match(store: Store, where: str | Path, topics: list[str]) -> None:
    """Each topic's counters (what ``GET /v1/topics/{id}`` answers) equal its COUNT(*)."""
    for topic in topics:
        kept = topic_stats_json(await store.topic_stats(topic))
        truth = topic_stats_json(counted(where, topic))
        assert kept == truth, (topic, kept, truth)


def stats_match(client_stats: dict[str, Any], where: str | Path, topic: str) -> bool:
    """A ``GET /v1/topics/{id}`` answer equals the topic's COUNT(*)."""
    counts = {k: client_stats[k] for k in ("request", "result")}
    return counts == topic_stats_json(counted(where, topic))
