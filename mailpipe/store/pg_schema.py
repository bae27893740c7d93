"""Numbered PostgreSQL migrations, tracked in ``schema_version`` and applied once.

The tables and columns are SQLite's (:mod:`mailpipe.store.schema`) in
PostgreSQL types, plus what several instances share: claim owners,
registrations, the rate row, change events and secrets. :func:`migrate` runs
under a transaction-scoped advisory lock, so instances starting together
migrate the database once; a failing migration leaves the previous version.
Never edit a migration that has shipped; add the next one.
"""

from __future__ import annotations

from typing import Final

import psycopg
from psycopg.rows import TupleRow

MIGRATION_LOCK: Final = 0x6D61696C70697065
"""The ``pg_advisory_xact_lock`` key of migrations (``mailpipe`` in ASCII)."""

MIGRATIONS: Final[dict[int, str]] = {
    # SQLite's schema up to its migration 7, in PostgreSQL types. Indexes are
    # those a query uses: each one is written once per recipient on ingest (no
    # index on content_id: no query looks requests up by content). No foreign
    # key on content_id either: its per-row check halved COPY's speed (100,000
    # recipients: 0.47 s without, 0.89 s with), and the one writer of requests
    # inserts their content in the same transaction.
    1: """
    CREATE TABLE email_contents (
        id           bigserial PRIMARY KEY,
        subject      text NOT NULL,
        content      text NOT NULL,
        created_at   timestamptz,
        updated_at   timestamptz,
        deleted_at   timestamptz,
        text         text,
        track_opens  boolean NOT NULL DEFAULT true,
        track_clicks boolean NOT NULL DEFAULT true
    );
    CREATE TABLE email_requests (
        id           bigserial PRIMARY KEY,
        topic_id     text,
        message_id   text,
        "to"         text NOT NULL,
        content_id   bigint NOT NULL,
        scheduled_at timestamptz,
        status       integer NOT NULL DEFAULT 0,
        error        text,
        created_at   timestamptz,
        updated_at   timestamptz,
        deleted_at   timestamptz,
        attempts     integer NOT NULL DEFAULT 0,
        data         text,
        owner        text
    );
    CREATE INDEX idx_email_requests_topic_id ON email_requests(topic_id);
    CREATE INDEX idx_email_requests_message_id
        ON email_requests(message_id) WHERE message_id IS NOT NULL;
    CREATE INDEX idx_email_requests_pending_id ON email_requests(id) WHERE status = 0;
    CREATE INDEX idx_email_requests_pending_due
        ON email_requests(scheduled_at) WHERE status = 0;
    CREATE INDEX idx_email_requests_sent_updated
        ON email_requests(updated_at) WHERE status = 2;
    CREATE INDEX idx_email_requests_claimed_owner
        ON email_requests(owner) WHERE status = 1;
    CREATE TABLE email_results (
        id             bigserial PRIMARY KEY,
        request_id     bigint REFERENCES email_requests(id),
        status         text NOT NULL,
        raw            text,
        created_at     timestamptz,
        updated_at     timestamptz,
        deleted_at     timestamptz,
        sns_message_id text,
        ses_message_id text,
        recipient      text,
        bounce_type    text,
        bounce_subtype text
    );
    CREATE INDEX idx_email_results_request_id ON email_results(request_id);
    CREATE INDEX idx_email_results_status ON email_results(status);
    CREATE INDEX idx_email_results_bounce
        ON email_results(bounce_type, bounce_subtype) WHERE bounce_type IS NOT NULL;
    CREATE INDEX idx_email_results_recipient ON email_results(recipient);
    CREATE TABLE sns_messages (
        message_id text PRIMARY KEY,
        created_at timestamptz NOT NULL
    );
    CREATE INDEX idx_sns_messages_created_at ON sns_messages(created_at);
    CREATE TABLE suppressions (
        id         bigserial PRIMARY KEY,
        address    text NOT NULL UNIQUE,
        reason     text NOT NULL,
        source     text,
        request_id bigint,
        created_at timestamptz NOT NULL
    );
    CREATE TABLE idempotency_keys (
        key         text PRIMARY KEY,
        body_sha256 text NOT NULL,
        response    text NOT NULL,
        created_at  timestamptz NOT NULL
    );
    CREATE INDEX idx_idempotency_keys_created_at ON idempotency_keys(created_at);
    CREATE TABLE topic_stops (
        topic_id   text PRIMARY KEY,
        upto_id    bigint NOT NULL,
        created_at timestamptz NOT NULL
    );
    """,
    # Several instances: registrations with heartbeats, the shared rate row,
    # change events (LISTEN/NOTIFY says when to read them) and shared secrets.
    2: """
    CREATE TABLE instances (
        id           text PRIMARY KEY,
        host         text,
        pid          integer,
        started_at   timestamptz,
        heartbeat_at timestamptz
    );
    CREATE TABLE rate_limit (
        id    integer PRIMARY KEY,
        state text
    );
    INSERT INTO rate_limit (id, state) VALUES (1, NULL);
    CREATE TABLE cluster_events (
        id         bigserial PRIMARY KEY,
        kind       text NOT NULL,
        payload    jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    CREATE INDEX idx_cluster_events_created_at ON cluster_events(created_at);
    CREATE TABLE shared_secrets (
        name  text PRIMARY KEY,
        value text NOT NULL
    );
    """,
}


def migrate(conn: psycopg.Connection[TupleRow]) -> tuple[int, int]:
    """Apply every migration newer than the database, in one transaction; returns
    (old, new) versions. Raises RuntimeError for a database newer than this code."""
    latest = max(MIGRATIONS)
    assert sorted(MIGRATIONS) == list(range(1, latest + 1)), "migrations must be numbered 1..n"
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        old = int(row[0]) if row and row[0] is not None else 0
        if old > latest:
            raise RuntimeError(
                f"database schema version {old} is newer than this mailpipe ({latest})"
            )
        for version in range(old + 1, latest + 1):
            conn.execute(MIGRATIONS[version].encode())
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    return old, latest
