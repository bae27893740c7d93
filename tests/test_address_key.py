"""One address is one recipient: within a request (the API), on the suppression
list (both stores), and for suppressions stored before the key existed (the
migrations re-key them)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pgkit
import psycopg
import trio
from conftest import api_client, make_config, running_service

from mailpipe.store import open_store
from mailpipe.store.pg_schema import MIGRATIONS as PG_MIGRATIONS
from mailpipe.store.pg_schema import REKEY_SUPPRESSIONS
from mailpipe.store.pg_schema import migrate as pg_migrate
from mailpipe.store.schema import MIGRATIONS


async def test_d_and_capital_d_in_one_request_are_one_row(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_service(make_config(tmp_path)) as svc, api_client(svc) as client:
            body = {"messages": [
                {"topicId": "one", "subject": "s", "content": "c",
                 "emails": ["D@example.com", "d@example.com", "d@EXAMPLE.com"]},
                {"topicId": "two", "subject": "s", "content": "c",
                 "recipients": [{"email": "e@example.com"}, {"email": "E@Example.com"}]},
            ]}
            answer = await client.post("/v1/messages", json=body)
            assert answer.status_code == 200 and answer.json()["count"] == 2
    with sqlite3.connect(tmp_path / "data" / "app.db") as conn:
        rows = conn.execute('SELECT topic_id, "to" FROM email_requests ORDER BY id').fetchall()
    assert rows == [("one", "D@example.com"), ("two", "e@example.com")]  # as first written


async def test_suppressions_match_by_the_key(where: str | Path) -> None:
    async with open_store(where) as store:
        assert await store.add_suppression("Ann@BÜCHER.de", "bounce", None)
        assert not await store.add_suppression(" ann@xn--bcher-kva.de", "complaint", None)
        found = await store.get_suppression("ANN@bücher.de")
        assert found is not None and found.address == "ann@xn--bcher-kva.de"
        assert found.reason == "bounce"
        assert await store.delete_suppression("ann@Bücher.DE")


async def test_the_dashboard_search_finds_what_the_key_stores(where: str | Path) -> None:
    async with open_store(where) as store:
        assert await store.add_suppression("Ann@BÜCHER.de", "bounce", None)
        assert await store.add_suppression("bob@example.com", "bounce", None)
        for text in ("bücher.de", "ANN@Bücher.DE", "xn--bcher", "ann@"):
            found = await store.search_suppressions(text, 10)
            assert [s.address for s in found] == ["ann@xn--bcher-kva.de"], text
        assert await store.search_suppressions("büch", 10) == []  # no whole domain: as typed


def test_sqlite_migration_rekeys_existing_suppressions(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    for version in range(1, 9):
        conn.executescript(f"BEGIN;\n{MIGRATIONS[version]}\nPRAGMA user_version = {version};"
                           "\nCOMMIT;")
    for address in ("ann@bücher.de", "ann@xn--bcher-kva.de", "b@x.com"):  # as 8 kept them
        conn.execute("INSERT INTO suppressions (address, reason, created_at)"
                     " VALUES (?, ?, '2026-01-01 00:00:00.000000+00:00')",
                     (address, "bounce" if address.startswith("ann@b") else "complaint"))
    conn.close()

    async def reopen() -> list[tuple[str, str]]:
        async with open_store(db) as store:
            page, _ = await store.list_suppressions(10)
            return sorted((s.address, s.reason) for s in page)

    assert trio.run(reopen) == [("ann@xn--bcher-kva.de", "bounce"), ("b@x.com", "complaint")]


def test_postgres_migration_rekeys_existing_suppressions(pg_url: str) -> None:
    """Suppressions stored before the key existed are re-keyed by the migration
    that brings it, keeping the oldest of those that become one."""
    pgkit.execute(pg_url, "DROP SCHEMA public CASCADE")
    pgkit.execute(pg_url, "CREATE SCHEMA public")
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE schema_version (version integer PRIMARY KEY,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")
        for version in range(1, REKEY_SUPPRESSIONS):
            conn.execute(PG_MIGRATIONS[version].encode())
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        for address, reason in (("ann@bücher.de", "bounce"), ("ann@xn--bcher-kva.de", "complaint"),
                                ("B@x.com", "complaint")):
            conn.execute("INSERT INTO suppressions (address, reason, created_at)"
                         " VALUES (%s, %s, now())", (address, reason))
        conn.commit()
        assert pg_migrate(conn) == (REKEY_SUPPRESSIONS - 1, max(PG_MIGRATIONS))
        rows = conn.execute("SELECT address, reason FROM suppressions ORDER BY address").fetchall()
    assert rows == [("ann@xn--bcher-kva.de", "bounce"), ("b@x.com", "complaint")]
