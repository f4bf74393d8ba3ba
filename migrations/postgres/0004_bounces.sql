-- Delivery status notifications and auto-replies read back from the bounce
-- mailbox (`notifier bounces ingest`): every message once (by the SHA-256
-- of its raw bytes), with what it was found to be. `raw` is bounded to
-- 64 KiB; `size` is the size it had.
CREATE TABLE bounces (
    id            BIGSERIAL PRIMARY KEY,
    received_at   BIGINT NOT NULL,
    sha256        TEXT NOT NULL UNIQUE,
    delivery_id   TEXT REFERENCES deliveries (id) ON DELETE SET NULL,
    outcome       TEXT NOT NULL,
    status        TEXT,
    diagnostic    TEXT,
    detail        TEXT,
    size          BIGINT NOT NULL,
    raw           BYTEA NOT NULL
);
CREATE INDEX bounces_received ON bounces (received_at);
CREATE INDEX bounces_delivery ON bounces (delivery_id);

-- An attempt-log entry may have no attempt number: a bounce or a delay
-- reported after the relay accepted the mail is not an SMTP attempt. The
-- primary key (delivery_id, n) becomes a unique index, which lets NULLs
-- repeat.
ALTER TABLE attempts DROP CONSTRAINT attempts_pkey;
ALTER TABLE attempts ALTER COLUMN n DROP NOT NULL;
CREATE UNIQUE INDEX attempts_number ON attempts (delivery_id, n);
