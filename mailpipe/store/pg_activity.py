"""The dashboard's reads on PostgreSQL (the same bounds as :mod:`mailpipe.store.activity`).

Counts sum each topic's counter row and its deltas; the windows read through the
partial indexes of SENT and FAILED rows by topic and the index of results by time.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Final

from mailpipe.model import Suppression
from mailpipe.status import Status
from mailpipe.store.activity import (
    ACTIVITY_MAX_RESULTS,
    MAX_ERRORS,
    MAX_FAILED_READ,
    like_pattern,
    minute_label,
    minutes,
)
from mailpipe.store.base import Activity, TopicStats
from mailpipe.store.feedback import SUPPRESSION_COLUMNS, suppression_of_row
from mailpipe.store.pg_pool import Conn

_TOPICS: Final = (
    "SELECT 'request', topic_id, status::text, sum(n) FROM ("
    " SELECT topic_id, status, n FROM topic_counts"
    " UNION ALL SELECT topic_id, status, n FROM topic_count_deltas) AS r"
    " GROUP BY topic_id, status"
    " UNION ALL "
    "SELECT 'result', topic_id, status, sum(n) FROM ("
    " SELECT topic_id, status, n FROM topic_result_counts"
    " UNION ALL SELECT topic_id, status, n FROM topic_result_deltas) AS s"
    " GROUP BY topic_id, status HAVING sum(n) > 0"
)
_MINUTE: Final = "to_char(date_trunc('minute', {col} AT TIME ZONE 'UTC'), 'YYYY-MM-DD HH24:MI')"
_SENT_END: Final = "SELECT max(updated_at) FROM email_requests WHERE status = 2{topic}"
_SENT_IN: Final = (
    "SELECT count(*) FROM email_requests WHERE status = 2{topic} AND updated_at >= %s"
    " AND updated_at < %s"
)
_RESULTS: Final = (
    f"SELECT {_MINUTE.format(col='r.created_at')} AS m, r.status, count(*) FROM ("
    " SELECT request_id, status, created_at FROM email_results WHERE created_at >= %s"
    " ORDER BY created_at DESC LIMIT %s) AS r"
    " JOIN email_requests q ON q.id = r.request_id WHERE q.topic_id = %s"
    " GROUP BY m, r.status ORDER BY m"
)
_RESULTS_READ: Final = (
    "SELECT count(*) FROM (SELECT 1 FROM email_results WHERE created_at >= %s LIMIT %s) AS r"
)
_ERRORS: Final = (
    "SELECT coalesce(error, ''), count(*) FROM (SELECT error FROM email_requests"
    " WHERE topic_id = %s AND status = 3 LIMIT %s) AS f GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %s"
)
_SEARCH: Final = (
    f"SELECT {SUPPRESSION_COLUMNS} FROM suppressions WHERE address LIKE %s ESCAPE '\\'"
    " ORDER BY id DESC LIMIT %s"
)


def topic_list(conn: Conn, limit: int) -> list[tuple[str, TopicStats]]:
    """The ``limit`` largest topics by requests, with their counts."""
    topics: dict[str, TopicStats] = {}
    rows = conn.execute(_TOPICS).fetchall()
    for kind, topic, status, n in rows:
        if kind == "request":
            stats = topics.setdefault(topic, TopicStats(dict.fromkeys(Status, 0), {}))
            stats.requests[Status(int(status))] = int(n)
    for kind, topic, status, n in rows:
        if kind == "result" and topic in topics:
            topics[topic].results[status] = int(n)
    ranked = sorted(topics.items(), key=lambda kv: (-sum(kv[1].requests.values()), kv[0]))
    return ranked[:limit]


def activity(conn: Conn, topic_id: str | None, now: datetime) -> Activity:
    """The :class:`Activity` of ``topic_id`` (every topic's sends when None)."""
    where, args = (" AND topic_id = %s", (topic_id,)) if topic_id is not None else ("", ())
    row = conn.execute(_SENT_END.format(topic=where), args).fetchone()
    bounds = minutes(row[0] if row else None, now)
    since = bounds[0]
    count = _SENT_IN.format(topic=where)  # a count per minute: index-only range scans
    sent = []
    for low, high in itertools.pairwise(bounds):
        found = conn.execute(count, (*args, low, high)).fetchone()
        if found and found[0]:
            sent.append((minute_label(low), "sent", int(found[0])))
    if topic_id is None:
        return Activity(sent, [], [], capped=False)
    results = [tuple(r) for r in conn.execute(_RESULTS, (since, ACTIVITY_MAX_RESULTS, topic_id))]
    read_row = conn.execute(_RESULTS_READ, (since, ACTIVITY_MAX_RESULTS)).fetchone()
    errors = [tuple(r) for r in conn.execute(_ERRORS, (topic_id, MAX_FAILED_READ, MAX_ERRORS))]
    capped = bool(read_row and read_row[0] >= ACTIVITY_MAX_RESULTS)
    return Activity(sent, results, errors, capped=capped)


def search_suppressions(conn: Conn, text: str, limit: int) -> list[Suppression]:
    """Up to ``limit`` suppressions whose address contains ``text``, newest first."""
    rows = conn.execute(_SEARCH, (like_pattern(text), limit)).fetchall()
    return [suppression_of_row(tuple(row)) for row in rows]
