-- Delivery status notifications and auto-replies read back from the bounce
-- mailbox (`notifier bounces ingest`): every message once (by the SHA-256
-- of its raw bytes), with what it was found to be. `raw` is bounded to
-- 64 KiB; `size` is the size it had.
CREATE TABLE bounces (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at   INTEGER NOT NULL,
    sha256        TEXT NOT NULL UNIQUE,
    delivery_id   TEXT REFERENCES deliveries (id) ON DELETE SET NULL,
    outcome       TEXT NOT NULL,
    status        TEXT,
    diagnostic    TEXT,
    detail        TEXT,
    size          INTEGER NOT NULL,
    raw           BLOB NOT NULL
);
CREATE INDEX bounces_received ON bounces (received_at);
CREATE INDEX bounces_delivery ON bounces (delivery_id);

-- An attempt-log entry may have no attempt number: a bounce or a delay
-- reported after the relay accepted the mail is not an SMTP attempt. The
-- primary key (delivery_id, n) becomes a unique index, which lets NULLs
-- repeat; SQLite cannot drop NOT NULL or a primary key in place, so the
-- table is rebuilt.
CREATE TABLE attempts_new (
    delivery_id   TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    n             INTEGER,
    started_at    INTEGER NOT NULL,
    duration_ms   INTEGER NOT NULL,
    outcome       TEXT NOT NULL,
    smtp_code     INTEGER,
    enhanced_code TEXT,
    detail        TEXT,
    checked_at    BIGINT
);
INSERT INTO attempts_new (delivery_id, n, started_at, duration_ms, outcome, smtp_code, enhanced_code, detail, checked_at)
    SELECT delivery_id, n, started_at, duration_ms, outcome, smtp_code, enhanced_code, detail, checked_at FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_new RENAME TO attempts;
CREATE UNIQUE INDEX attempts_number ON attempts (delivery_id, n);
