"""How long the dashboard's page of a 1,000,000-request topic takes, on both stores.

Seeds a topic of ``--rows`` SENT requests over the last hour (and ``--results``
Delivery/Open results) straight into a fresh database, with its counters, then
starts ``python -m mailpipe`` on it, logs in to the dashboard and times
``GET /dashboard/topics/big`` (and the topics list) over real HTTP.

    python scripts/dashboard_bench.py [--store sqlite|postgres|both] [--rows N]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

KEY = "bench-key-0123456789abcdef"
ADMIN = os.environ.get(
    "MAILPIPE_TEST_DATABASE_URL", "postgresql:///postgres?host=/var/run/postgresql&user=postgres"
)
READY = re.compile(r"mailpipe ready on (http://\S+):")


def service(workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m mailpipe``; the process and its URL."""
    full = {**os.environ, "API_KEY": KEY, "SERVER_PORT": "0", "SERVER_BIND": "127.0.0.1",
            "EMAIL_TRANSPORT": "outbox", "EMAIL_SENDER": "b@example.com",
            "DB_PATH": str(workdir / "data" / "app.db"), **env}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailpipe"], env=full, cwd=workdir,
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        found = READY.search(line)
        if found:
            return proc, found.group(1)
    raise RuntimeError("the service did not start")


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM and wait."""
    proc.terminate()
    proc.wait(60)


def minutes_ago(i: int, rows: int) -> datetime:
    """Row ``i``'s time: spread evenly over the last hour."""
    return datetime.now(UTC) - timedelta(seconds=3600 * (rows - i) / rows)


def seed_sqlite(path: Path, rows: int, results: int) -> None:
    """``rows`` SENT requests of topic ``big`` and ``results`` results, with counters."""
    conn = sqlite3.connect(path)
    with conn:
        cid = conn.execute(
            "INSERT INTO email_contents (subject, content) VALUES ('s', '<p>x</p>')"
        ).lastrowid
        conn.executemany(
            'INSERT INTO email_requests (topic_id, "to", content_id, status, created_at,'
            " updated_at)"
            " VALUES ('big', ?, ?, 2, ?, ?)",
            ((f"u{i}@example.com", cid, t, t) for i in range(rows)
             for t in [minutes_ago(i, rows).isoformat(" ", "microseconds")]),
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO email_results (request_id, status, created_at) VALUES (?, ?, ?)",
            ((i + 1, "Delivery" if i % 3 else "Open",
              minutes_ago(i, results).isoformat(" ", "microseconds")) for i in range(results)),
        )  # fmt: skip
        conn.execute("INSERT INTO topic_counts VALUES ('big', 2, ?)", (rows,))
        conn.execute("DELETE FROM topic_result_counts")
        conn.execute(
            "INSERT INTO topic_result_counts"
            " SELECT 'big', status, count(*) FROM email_results GROUP BY status"
        )
    conn.execute("ANALYZE")
    conn.close()


def seed_postgres(url: str, rows: int, results: int) -> None:
    """The same rows on PostgreSQL (the result trigger keeps its counters)."""
    with psycopg.connect(url, autocommit=False) as conn:
        (cid,) = conn.execute(
            "INSERT INTO email_contents (subject, content) VALUES ('s', '<p>x</p>') RETURNING id"
        ).fetchone()  # type: ignore[misc]
        conn.execute(
            'INSERT INTO email_requests (topic_id, "to", content_id, status, created_at,'
            " updated_at)"
            " SELECT 'big', 'u' || g || '@example.com', %s, 2, t, t FROM ("
            "  SELECT g, now() - (%s - g) * interval '1 hour' / %s AS t"
            "  FROM generate_series(1, %s) g) s",
            (cid, rows, rows, rows),
        )
        conn.execute("INSERT INTO topic_counts VALUES ('big', 2, %s)", (rows,))
        conn.execute(
            "INSERT INTO email_results (request_id, status, created_at)"
            " SELECT g, CASE WHEN g %% 3 = 0 THEN 'Open' ELSE 'Delivery' END,"
            " now() - (%s - g) * interval '1 hour' / %s FROM generate_series(1, %s) g",
            (results, results, results),
        )
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # what autovacuum does to a settled table


def timed(url: str, path: str, times: int) -> list[float]:
    """Seconds per GET of ``path`` in a logged-in dashboard session."""
    with httpx.Client(base_url=url, timeout=60) as client:
        page = client.get("/dashboard/login")
        token = re.findall(r'name="csrf_token" value="([^"]+)"', page.text)[0]
        client.post("/dashboard/login", data={"csrf_token": token, "api_key": KEY})
        out = []
        for _ in range(times):
            started = time.perf_counter()
            answer = client.get(path)
            out.append(time.perf_counter() - started)
            assert answer.status_code == 200
        return out


def run(store: str, rows: int, results: int, times: int) -> None:
    """Seed, serve, time, print one line per page."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env: dict[str, str] = {}
        name = ""
        if store == "postgres":
            name = f"mailpipe_dash_bench_{secrets.token_hex(4)}"
            with psycopg.connect(ADMIN, autocommit=True) as admin:
                admin.execute(f"CREATE DATABASE {name}")
            env["DATABASE_URL"] = re.sub(r"/postgres\?", f"/{name}?", ADMIN)
        try:
            proc, _ = service(workdir, env)  # creates and migrates the database
            stop(proc)
            started = time.perf_counter()
            if store == "sqlite":
                seed_sqlite(workdir / "data" / "app.db", rows, results)
            else:
                seed_postgres(env["DATABASE_URL"], rows, results)
            took_s = time.perf_counter() - started
            print(f"{store}: seeded {rows:,} requests and {results:,} results in {took_s:.1f} s")
            proc, url = service(workdir, env)
            try:
                for path in ("/dashboard/topics/big", "/dashboard/", "/dashboard/account"):
                    took = timed(url, path, times)
                    print(f"{store}: GET {path}: median {statistics.median(took) * 1000:.0f} ms,"
                          f" max {max(took) * 1000:.0f} ms over {times}")  # fmt: skip
            finally:
                stop(proc)
        finally:
            if name:
                with psycopg.connect(ADMIN, autocommit=True) as admin:
                    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    """Parse the options and run each store."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--results", type=int, default=1_000_000)
    p.add_argument("--times", type=int, default=7)
    args = p.parse_args()
    for store in ("sqlite", "postgres") if args.store == "both" else (args.store,):
        run(store, args.rows, args.results, args.times)


if __name__ == "__main__":
    main()
