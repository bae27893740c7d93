"""Numbered schema migrations, applied in order and tracked in ``PRAGMA user_version``.

Never edit a migration that has shipped; add the next one.
"""

from __future__ import annotations

import sqlite3

from mailpipe.addresses import address_key

MIGRATIONS: dict[int, str] = {
    # the Go service's tables, columns and status codes.
    1: """
    CREATE TABLE email_contents (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        subject     TEXT NOT NULL,
        content     TEXT NOT NULL,
        created_at  TEXT,
        updated_at  TEXT,
        deleted_at  TEXT
    );
    CREATE TABLE email_requests (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        topic_id     TEXT,
        message_id   TEXT,
        "to"         TEXT NOT NULL,
        content_id   INTEGER NOT NULL REFERENCES email_contents(id),
        scheduled_at TEXT,
        status       INTEGER NOT NULL DEFAULT 0,
        error        TEXT,
        created_at   TEXT,
        updated_at   TEXT,
        deleted_at   TEXT
    );
    CREATE INDEX idx_email_requests_topic_id ON email_requests(topic_id);
    CREATE INDEX idx_email_requests_message_id ON email_requests(message_id);
    CREATE INDEX idx_email_requests_content_id ON email_requests(content_id);
    CREATE INDEX idx_email_requests_scheduled_at ON email_requests(scheduled_at);
    CREATE INDEX idx_email_requests_pending_id ON email_requests(id) WHERE status = 0;
    CREATE INDEX idx_email_requests_pending_due
        ON email_requests(scheduled_at) WHERE status = 0;
    CREATE TABLE email_results (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id  INTEGER REFERENCES email_requests(id),
        status      TEXT NOT NULL,
        raw         TEXT,
        created_at  TEXT,
        updated_at  TEXT,
        deleted_at  TEXT
    );
    CREATE INDEX idx_email_results_request_id ON email_results(request_id);
    CREATE INDEX idx_email_results_status ON email_results(status);
    """,
    # attempt counts, and counting sends by time.
    2: """
    ALTER TABLE email_requests ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX idx_email_requests_status_updated ON email_requests(status, updated_at);
    """,
    # SES feedback over SNS: queryable result columns, SNS dedupe, suppression list.
    3: """
    ALTER TABLE email_results ADD COLUMN sns_message_id TEXT;
    ALTER TABLE email_results ADD COLUMN ses_message_id TEXT;
    ALTER TABLE email_results ADD COLUMN recipient TEXT;
    ALTER TABLE email_results ADD COLUMN bounce_type TEXT;
    ALTER TABLE email_results ADD COLUMN bounce_subtype TEXT;
    CREATE INDEX idx_email_results_bounce
        ON email_results(bounce_type, bounce_subtype) WHERE bounce_type IS NOT NULL;
    CREATE INDEX idx_email_results_recipient ON email_results(recipient);
    CREATE TABLE sns_messages (
        message_id  TEXT PRIMARY KEY,
        created_at  TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX idx_sns_messages_created_at ON sns_messages(created_at);
    CREATE TABLE suppressions (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        address     TEXT NOT NULL UNIQUE,
        reason      TEXT NOT NULL,
        source      TEXT,
        request_id  INTEGER,
        created_at  TEXT NOT NULL
    );
    """,
    # Idempotency-Key of POST /v1/messages: the body's digest and the first answer.
    4: """
    CREATE TABLE idempotency_keys (
        key          TEXT PRIMARY KEY,
        body_sha256  TEXT NOT NULL,
        response     TEXT NOT NULL,
        created_at   TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX idx_idempotency_keys_created_at ON idempotency_keys(created_at);
    """,
    # per-message text template and tracking switches; per-recipient template data (JSON).
    5: """
    ALTER TABLE email_contents ADD COLUMN text TEXT;
    ALTER TABLE email_contents ADD COLUMN track_opens INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE email_contents ADD COLUMN track_clicks INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE email_requests ADD COLUMN data TEXT;
    """,
    # Ingest speed: every index entry is written once per recipient, so keep only
    # those a query uses. idx_email_requests_pending_due serves every scheduled_at
    # query; message ids and the sent-time index only matter once a row is sent.
    6: """
    DROP INDEX idx_email_requests_scheduled_at;
    DROP INDEX idx_email_requests_message_id;
    CREATE INDEX idx_email_requests_message_id
        ON email_requests(message_id) WHERE message_id IS NOT NULL;
    DROP INDEX idx_email_requests_status_updated;
    CREATE INDEX idx_email_requests_sent_updated ON email_requests(updated_at) WHERE status = 2;
    """,
    # DELETE /v1/topics stops, kept until they are applied: rows handed to SES
    # when the stop came (or waiting for a retry) are stopped at the next start
    # if the process died without applying them.
    7: """
    CREATE TABLE topic_stops (
        topic_id    TEXT PRIMARY KEY,
        upto_id     INTEGER NOT NULL,
        created_at  TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # A deep backlog costs nothing. Claims walk idx_email_requests_pending_due,
    # which is by (scheduled_at, rowid = id): only due rows are read, so the id
    # index on pending rows serves no query any more (and cost ingest a write
    # per recipient). Topic counts are counters kept in the transactions that
    # change the rows: inserts add to them in the store's code (one statement
    # per message, not one per recipient: ingest stays as fast); a status
    # change moves one count of its topic from the old status to the new one;
    # a request's first result of a type adds one to its topic's count of it.
    8: """
    DROP INDEX idx_email_requests_pending_id;
    CREATE TABLE topic_counts (
        topic_id  TEXT NOT NULL,
        status    INTEGER NOT NULL,
        n         INTEGER NOT NULL,
        PRIMARY KEY (topic_id, status)
    ) WITHOUT ROWID;
    CREATE TABLE topic_result_counts (
        topic_id  TEXT NOT NULL,
        status    TEXT NOT NULL,
        n         INTEGER NOT NULL,
        PRIMARY KEY (topic_id, status)
    ) WITHOUT ROWID;
    INSERT INTO topic_counts (topic_id, status, n)
        SELECT topic_id, status, COUNT(*) FROM email_requests
        WHERE topic_id IS NOT NULL AND deleted_at IS NULL GROUP BY topic_id, status;
    INSERT INTO topic_result_counts (topic_id, status, n)
        SELECT q.topic_id, r.status, COUNT(DISTINCT r.request_id) FROM email_results r
        JOIN email_requests q ON q.id = r.request_id
        WHERE q.topic_id IS NOT NULL GROUP BY q.topic_id, r.status;
    CREATE TRIGGER email_requests_counts AFTER UPDATE OF status ON email_requests
    WHEN OLD.status <> NEW.status AND OLD.topic_id IS NOT NULL AND OLD.deleted_at IS NULL
    BEGIN
        UPDATE topic_counts SET n = n - 1 WHERE topic_id = OLD.topic_id AND status = OLD.status;
        INSERT INTO topic_counts (topic_id, status, n) VALUES (NEW.topic_id, NEW.status, 1)
            ON CONFLICT (topic_id, status) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER email_results_counts AFTER INSERT ON email_results
    WHEN NEW.request_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM email_results
        WHERE request_id = NEW.request_id AND status = NEW.status AND id <> NEW.id)
    BEGIN
        INSERT INTO topic_result_counts (topic_id, status, n)
            SELECT topic_id, NEW.status, 1 FROM email_requests
            WHERE id = NEW.request_id AND topic_id IS NOT NULL
            ON CONFLICT (topic_id, status) DO UPDATE SET n = n + 1;
    END;
    """,
    9: """
    -- Outgoing webhooks: endpoints, the outbox of events (written in the
    -- transaction of the change each reports), one delivery per event and
    -- endpoint, and every attempt of a delivery.
    CREATE TABLE webhook_endpoints (
        id               TEXT PRIMARY KEY,
        url              TEXT NOT NULL,
        events           TEXT NOT NULL,
        topic_id         TEXT,
        description      TEXT,
        secret           TEXT NOT NULL,
        old_secret       TEXT,
        old_secret_until TEXT,
        enabled          INTEGER NOT NULL DEFAULT 1,
        disabled_reason  TEXT,
        failing_since    TEXT,
        created_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL
    );
    CREATE TABLE webhook_events (
        id         INTEGER PRIMARY KEY,
        event_id   TEXT NOT NULL UNIQUE,
        type       TEXT NOT NULL,
        body       TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE webhook_deliveries (
        id              INTEGER PRIMARY KEY,
        event           INTEGER NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
        endpoint_id     TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
        state           TEXT NOT NULL DEFAULT 'pending',
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        lease_until     TEXT,
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL,
        UNIQUE (event, endpoint_id)
    );
    CREATE TABLE webhook_attempts (
        id           INTEGER PRIMARY KEY,
        delivery     INTEGER NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
        attempted_at TEXT NOT NULL,
        status_code  INTEGER,
        latency_ms   REAL NOT NULL,
        response     TEXT,
        error        TEXT,
        outcome      TEXT NOT NULL,
        next_attempt_at TEXT
    );
    CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id)
        WHERE state = 'pending';
    CREATE INDEX idx_webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
    CREATE INDEX idx_webhook_attempts_delivery ON webhook_attempts (delivery, id);
    CREATE INDEX idx_webhook_deliveries_pending_age ON webhook_deliveries (created_at)
        WHERE state = 'pending';
    CREATE INDEX idx_webhook_events_created ON webhook_events (created_at);
    """,
    # Protecting the SES account: stored pauses (a topic's, the account's), and
    # the indexes that keep the reputation window's counts bounded: a topic's
    # sends by time (only SENT rows are in it), and the account's permanent
    # bounces and complaints by time (a few per cent of the sends at most).
    # Feedback stored before its send's message id was recorded is found by
    # that message id once it is (idx_email_results_unmatched). Suppressions
    # are re-keyed by mailpipe.addresses.address_key (the oldest of those that
    # become one is kept).
    10: """
    CREATE TABLE topic_pauses (
        topic_id    TEXT PRIMARY KEY,
        reason      TEXT NOT NULL,
        paused_by   TEXT NOT NULL,
        paused_at   TEXT NOT NULL,
        sends       INTEGER NOT NULL,
        bounces     INTEGER NOT NULL,
        complaints  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE account_pauses (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        reason      TEXT NOT NULL,
        paused_by   TEXT NOT NULL,
        paused_at   TEXT NOT NULL,
        sends       INTEGER NOT NULL,
        bounces     INTEGER NOT NULL,
        complaints  INTEGER NOT NULL
    );
    CREATE INDEX idx_email_requests_topic_sent
        ON email_requests(topic_id, updated_at, status) WHERE status = 2;
    CREATE INDEX idx_email_results_reputation
        ON email_results(created_at) WHERE bounce_type = 'Permanent' OR status = 'Complaint';
    CREATE INDEX idx_email_results_unmatched
        ON email_results(ses_message_id) WHERE request_id IS NULL;
    DELETE FROM suppressions WHERE id NOT IN (
        SELECT min(id) FROM suppressions GROUP BY mailpipe_address_key(address));
    UPDATE suppressions SET address = mailpipe_address_key(address)
        WHERE address <> mailpipe_address_key(address);
    CREATE TRIGGER email_results_matched AFTER UPDATE OF request_id ON email_results
    WHEN OLD.request_id IS NULL AND NEW.request_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM email_results
        WHERE request_id = NEW.request_id AND status = NEW.status AND id <> NEW.id)
    BEGIN
        INSERT INTO topic_result_counts (topic_id, status, n)
            SELECT topic_id, NEW.status, 1 FROM email_requests
            WHERE id = NEW.request_id AND topic_id IS NOT NULL
            ON CONFLICT (topic_id, status) DO UPDATE SET n = n + 1;
    END;
    """,
    # The dashboard's charts read bounded windows through indexes: SENT rows by
    # (topic, time) for sends per minute (migration 10's, with status: covering), FAILED rows by
    # topic for the commonest errors (partial: a claim or a stop does not touch
    # them), results by time.
    11: """
    CREATE INDEX idx_email_requests_topic_failed
        ON email_requests(topic_id, error) WHERE status = 3;
    CREATE INDEX idx_email_results_created_at ON email_results(created_at);
    """,
}


def migrate(conn: sqlite3.Connection) -> tuple[int, int]:
    """Apply every migration newer than the database; returns (old, new) versions.

    Each migration and its version bump commit together, so a crash leaves the
    database at a whole version.
    """
    latest = max(MIGRATIONS)
    assert sorted(MIGRATIONS) == list(range(1, latest + 1)), "migrations must be numbered 1..n"
    (old,) = conn.execute("PRAGMA user_version").fetchone()
    if old > latest:
        raise RuntimeError(
            f"database schema version {old} is newer than this mailpipe ({latest})"
        )
    conn.create_function("mailpipe_address_key", 1, address_key, deterministic=True)
    for version in range(old + 1, latest + 1):
        script = MIGRATIONS[version]
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;"
            )
        except sqlite3.Error:
            if conn.in_transaction:
                conn.rollback()
            raise
    return old, latest
