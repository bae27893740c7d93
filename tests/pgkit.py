"""Test databases on a real PostgreSQL server: made per test module, dropped after.

``MAILPIPE_TEST_DATABASE_URL`` names the server (an admin database on it); when
no server answers there, PostgreSQL tests are skipped, or fail when
``MAILPIPE_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

ADMIN_URL = os.environ.get(
    "MAILPIPE_TEST_DATABASE_URL", "postgresql://postgres@/postgres?host=/var/run/postgresql"
)
SERVER_LOCK = Path(tempfile.gettempdir()) / "mailpipe-tests-postgres.lock"
"""Taken shared by every test (and database set-up) and exclusively by a test that
restarts the server, across processes: test workers (pytest-xdist) and other runs."""


@contextmanager
def server_turn(*, exclusive: bool = False) -> Iterator[None]:
    """Hold the server: shared (it stays up meanwhile), or exclusive (no other test
    runs meanwhile, so the holder may restart it)."""
    with SERVER_LOCK.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


KEEP_TABLES = frozenset({"schema_version", "rate_limit"})
"""Tables a reset between tests leaves (the rate row is cleared instead)."""


def admin(url: str = ADMIN_URL) -> psycopg.Connection[Any]:
    """An autocommit connection to ``url``."""
    return psycopg.connect(url, autocommit=True, connect_timeout=3)


def reachable_or_skip() -> None:
    """Skip (or fail, with MAILPIPE_REQUIRE_POSTGRES=1) unless the server answers."""
    try:
        admin().close()
    except psycopg.Error as exc:
        message = f"PostgreSQL not reachable at {ADMIN_URL}: {exc}".strip()
        if os.environ.get("MAILPIPE_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)


def database_url(name: str) -> str:
    """The URL of database ``name`` on the admin URL's server."""
    parts = urlsplit(ADMIN_URL)
    return urlunsplit(parts._replace(path="/" + name))


def create_database(label: str) -> tuple[str, str]:
    """Make a fresh database named after ``label``; its (name, URL)."""
    slug = re.sub(r"[^a-z0-9]+", "_", label.lower())[-30:].strip("_")
    name = f"mailpipe_test_{slug}_{secrets.token_hex(3)}"
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, database_url(name)


def drop_database(name: str) -> None:
    """Drop database ``name``, disconnecting whoever is still on it."""
    with admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reset_database(url: str) -> None:
    """Empty every mailpipe table of ``url`` (ids restart at 1), keeping the schema."""
    with admin(url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
            if r[0] not in KEEP_TABLES
        ]
        if tables:
            names = ", ".join(f'"{t}"' for t in tables)
            conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
            conn.execute("UPDATE rate_limit SET state = NULL")


def execute(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on ``url`` (autocommit); its rows, if it returns any."""
    with admin(url) as conn:
        cur = conn.execute(sql.encode(), params)
        return cur.fetchall() if cur.description else []


def terminate_backends(name: str) -> int:
    """Terminate every other connection to database ``name``; how many."""
    rows = execute(
        ADMIN_URL,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )
    return len(rows)
