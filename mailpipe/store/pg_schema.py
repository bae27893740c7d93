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

from mailpipe.addresses import address_key

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
    # A deep backlog costs nothing: claims walk pending rows by (scheduled_at, id),
    # reading due rows only (the two indexes it replaces served nothing else).
    # Topic counts are counters, kept in the transactions that change the rows,
    # as rows of deltas: every writer only inserts (no row every instance
    # updates, no lock to wait for, no deadlock), a read sums the topic's few
    # rows, and the store's upkeep folds the deltas into topic_counts. Inserts
    # add their deltas in the store's code (one row per message, not per
    # recipient: COPY stays as fast); every UPDATE of requests adds one row per
    # (topic, status) it changed through a statement trigger; a request's
    # first result of a type (result_firsts, a unique key even across
    # concurrent transactions) adds one to its topic's count of that type.
    3: """
    CREATE INDEX idx_email_requests_pending
        ON email_requests(scheduled_at, id) WHERE status = 0;
    DROP INDEX idx_email_requests_pending_due;
    DROP INDEX idx_email_requests_pending_id;
    CREATE TABLE topic_counts (
        topic_id text NOT NULL,
        status   integer NOT NULL,
        n        bigint NOT NULL,
        PRIMARY KEY (topic_id, status)
    );
    CREATE TABLE topic_count_deltas (
        id       bigserial PRIMARY KEY,
        topic_id text NOT NULL,
        status   integer NOT NULL,
        n        bigint NOT NULL
    );
    CREATE INDEX idx_topic_count_deltas_topic ON topic_count_deltas(topic_id);
    CREATE TABLE topic_result_counts (
        topic_id text NOT NULL,
        status   text NOT NULL,
        n        bigint NOT NULL,
        PRIMARY KEY (topic_id, status)
    );
    CREATE TABLE topic_result_deltas (
        id       bigserial PRIMARY KEY,
        topic_id text NOT NULL,
        status   text NOT NULL,
        n        bigint NOT NULL
    );
    CREATE INDEX idx_topic_result_deltas_topic ON topic_result_deltas(topic_id);
    CREATE TABLE result_firsts (
        request_id bigint NOT NULL,
        status     text NOT NULL,
        PRIMARY KEY (request_id, status)
    );
    INSERT INTO topic_counts (topic_id, status, n)
        SELECT topic_id, status, count(*) FROM email_requests
        WHERE topic_id IS NOT NULL AND deleted_at IS NULL GROUP BY topic_id, status;
    INSERT INTO result_firsts (request_id, status)
        SELECT DISTINCT request_id, status FROM email_results WHERE request_id IS NOT NULL;
    INSERT INTO topic_result_counts (topic_id, status, n)
        SELECT q.topic_id, f.status, count(*) FROM result_firsts f
        JOIN email_requests q ON q.id = f.request_id
        WHERE q.topic_id IS NOT NULL GROUP BY q.topic_id, f.status;
    CREATE FUNCTION mailpipe_count_status_changes() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO topic_count_deltas (topic_id, status, n)
        SELECT topic_id, status, sum(n) FROM (
            SELECT topic_id, status, -count(*) AS n FROM old_rows
            WHERE topic_id IS NOT NULL AND deleted_at IS NULL GROUP BY topic_id, status
            UNION ALL
            SELECT topic_id, status, count(*) AS n FROM new_rows
            WHERE topic_id IS NOT NULL AND deleted_at IS NULL GROUP BY topic_id, status
        ) AS d GROUP BY topic_id, status HAVING sum(n) <> 0;
        RETURN NULL;
    END $$;
    CREATE TRIGGER email_requests_counts AFTER UPDATE ON email_requests
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION mailpipe_count_status_changes();
    CREATE FUNCTION mailpipe_count_result() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.request_id IS NULL THEN
            RETURN NULL;
        END IF;
        INSERT INTO result_firsts (request_id, status) VALUES (NEW.request_id, NEW.status)
            ON CONFLICT DO NOTHING;
        IF FOUND THEN
            INSERT INTO topic_result_deltas (topic_id, status, n)
            SELECT topic_id, NEW.status, 1 FROM email_requests
            WHERE id = NEW.request_id AND topic_id IS NOT NULL;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER email_results_counts AFTER INSERT ON email_results
        FOR EACH ROW EXECUTE FUNCTION mailpipe_count_result();
    """,
    4: """
    -- Outgoing webhooks: endpoints, the outbox of events (written in the
    -- transaction of the change each reports), one delivery per event and
    -- endpoint (claimed FOR UPDATE SKIP LOCKED), and every attempt.
    CREATE TABLE webhook_endpoints (
        id               text PRIMARY KEY,
        url              text NOT NULL,
        events           text NOT NULL,
        topic_id         text,
        description      text,
        secret           text NOT NULL,
        old_secret       text,
        old_secret_until timestamptz,
        enabled          boolean NOT NULL DEFAULT true,
        disabled_reason  text,
        failing_since    timestamptz,
        created_at       timestamptz NOT NULL,
        updated_at       timestamptz NOT NULL
    );
    CREATE TABLE webhook_events (
        id         bigserial PRIMARY KEY,
        event_id   text NOT NULL UNIQUE,
        type       text NOT NULL,
        body       text NOT NULL,
        created_at timestamptz NOT NULL
    );
    CREATE TABLE webhook_deliveries (
        id              bigserial PRIMARY KEY,
        event           bigint NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
        endpoint_id     text NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
        state           text NOT NULL DEFAULT 'pending',
        attempts        integer NOT NULL DEFAULT 0,
        next_attempt_at timestamptz NOT NULL,
        lease_until     timestamptz,
        created_at      timestamptz NOT NULL,
        updated_at      timestamptz NOT NULL,
        UNIQUE (event, endpoint_id)
    );
    CREATE TABLE webhook_attempts (
        id           bigserial PRIMARY KEY,
        delivery     bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
        attempted_at timestamptz NOT NULL,
        status_code  integer,
        latency_ms   double precision NOT NULL,
        response     text,
        error        text,
        outcome      text NOT NULL,
        next_attempt_at timestamptz
    );
    CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id)
        WHERE state = 'pending';
    CREATE INDEX idx_webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
    CREATE INDEX idx_webhook_attempts_delivery ON webhook_attempts (delivery, id);
    CREATE INDEX idx_webhook_deliveries_pending_age ON webhook_deliveries (created_at)
        WHERE state = 'pending';
    CREATE INDEX idx_webhook_events_created ON webhook_events (created_at);
    """,
    # Protecting the SES account (as SQLite's migration 10): stored pauses and
    # the reputation window's indexes.
    5: """
    CREATE TABLE topic_pauses (
        topic_id    text PRIMARY KEY,
        reason      text NOT NULL,
        paused_by   text NOT NULL,
        paused_at   timestamptz NOT NULL,
        sends       bigint NOT NULL,
        bounces     bigint NOT NULL,
        complaints  bigint NOT NULL
    );
    CREATE TABLE account_pauses (
        id          integer PRIMARY KEY CHECK (id = 1),
        reason      text NOT NULL,
        paused_by   text NOT NULL,
        paused_at   timestamptz NOT NULL,
        sends       bigint NOT NULL,
        bounces     bigint NOT NULL,
        complaints  bigint NOT NULL
    );
    CREATE INDEX idx_email_requests_topic_sent
        ON email_requests(topic_id, updated_at, status) WHERE status = 2;
    CREATE INDEX idx_email_results_reputation
        ON email_results(created_at) WHERE bounce_type = 'Permanent' OR status = 'Complaint';
    CREATE INDEX idx_email_results_unmatched
        ON email_results(ses_message_id) WHERE request_id IS NULL;
    CREATE TRIGGER email_results_matched AFTER UPDATE OF request_id ON email_results
        FOR EACH ROW WHEN (OLD.request_id IS NULL AND NEW.request_id IS NOT NULL)
        EXECUTE FUNCTION mailpipe_count_result();
    """,
    # The dashboard's charts read bounded windows through indexes: SENT rows by
    # (topic, time) for sends per minute (migration 5's, with status: covering), FAILED rows by
    # topic for the commonest errors (partial: a claim or a stop does not touch
    # them), results by time.
    6: """
    CREATE INDEX idx_email_requests_topic_failed
        ON email_requests(topic_id, error) WHERE status = 3;
    CREATE INDEX idx_email_results_created_at ON email_results(created_at);
    """,
}


REKEY_SUPPRESSIONS: Final = 5
"""The migration after which suppressions are re-keyed by
:func:`~mailpipe.addresses.address_key` (Python: SQL has no IDNA)."""


def rekey_suppressions(conn: psycopg.Connection[TupleRow]) -> None:
    """Store every suppression under its address key; of those that become one, the
    oldest is kept."""
    rows = conn.execute("SELECT id, address FROM suppressions ORDER BY id").fetchall()
    kept: dict[str, int] = {}
    drop: list[int] = []
    moves: list[tuple[str, int]] = []
    for sid, address in rows:
        key = address_key(address)
        if key in kept:
            drop.append(sid)
            continue
        kept[key] = sid
        if key != address:
            moves.append((key, sid))
    if drop:
        conn.execute("DELETE FROM suppressions WHERE id = ANY(%s)", (drop,))
    with conn.cursor() as cur:
        cur.executemany("UPDATE suppressions SET address = %s WHERE id = %s", moves)


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
            if version == REKEY_SUPPRESSIONS:
                rekey_suppressions(conn)
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    return old, latest
