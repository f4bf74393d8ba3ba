-- Times are milliseconds since the Unix epoch (UTC) in both backends.

CREATE TABLE events (
    id            TEXT PRIMARY KEY,
    type          TEXT NOT NULL,
    agb_code      TEXT,
    occurred_at   BIGINT NOT NULL,
    received_at   BIGINT NOT NULL,
    payload       TEXT NOT NULL,
    state         TEXT NOT NULL,
    detail        TEXT
);
CREATE INDEX events_received ON events (received_at);
CREATE INDEX events_state ON events (state);

CREATE TABLE quarantine (
    id            BIGSERIAL PRIMARY KEY,
    received_at   BIGINT NOT NULL,
    source        TEXT NOT NULL,
    routing_key   TEXT,
    event_id      TEXT,
    event_type    TEXT,
    reason        TEXT NOT NULL,
    size          BIGINT NOT NULL,
    raw           BYTEA NOT NULL,
    state         TEXT NOT NULL DEFAULT 'open',
    redrives      BIGINT NOT NULL DEFAULT 0,
    last_redrive_at BIGINT
);
CREATE INDEX quarantine_state ON quarantine (state);

CREATE TABLE users (
    gebruikersnummer TEXT PRIMARY KEY,
    naam          TEXT NOT NULL,
    email         TEXT NOT NULL,
    status        TEXT NOT NULL,
    versie        BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE user_links (
    gebruikersnummer TEXT NOT NULL REFERENCES users (gebruikersnummer) ON DELETE CASCADE,
    agb_code      TEXT NOT NULL,
    rechten       TEXT NOT NULL,
    tekenbevoegd  BIGINT NOT NULL,
    contactpersoon BIGINT NOT NULL,
    PRIMARY KEY (gebruikersnummer, agb_code)
);
CREATE INDEX user_links_agb ON user_links (agb_code);

CREATE TABLE organisations (
    agb_code      TEXT PRIMARY KEY,
    naam          TEXT NOT NULL,
    versie        BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE directory_log (
    id            BIGSERIAL PRIMARY KEY,
    at            BIGINT NOT NULL,
    source        TEXT NOT NULL,
    subject       TEXT NOT NULL,
    outcome       TEXT NOT NULL
);

CREATE TABLE deliveries (
    id            TEXT PRIMARY KEY,
    event_id      TEXT NOT NULL REFERENCES events (id),
    kind          TEXT NOT NULL,
    about         TEXT NOT NULL DEFAULT '',
    address       TEXT NOT NULL,
    sent_to       TEXT,
    rule          TEXT NOT NULL,
    notice        TEXT,
    status        TEXT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    retry_step    BIGINT NOT NULL DEFAULT 0,
    due_at        BIGINT NOT NULL,
    deadline      BIGINT NOT NULL,
    lease_until   BIGINT,
    lease_owner   TEXT,
    message_id    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    sent_at       BIGINT,
    last_error    TEXT,
    UNIQUE (event_id, kind, address, about)
);
CREATE INDEX deliveries_due ON deliveries (status, due_at);
CREATE INDEX deliveries_event ON deliveries (event_id);

CREATE TABLE delivery_users (
    delivery_id   TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    gebruikersnummer TEXT NOT NULL,
    versie        BIGINT NOT NULL,
    rule          TEXT NOT NULL,
    PRIMARY KEY (delivery_id, gebruikersnummer)
);
CREATE INDEX delivery_users_user ON delivery_users (gebruikersnummer);

CREATE TABLE attempts (
    delivery_id   TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    n             BIGINT NOT NULL,
    started_at    BIGINT NOT NULL,
    duration_ms   BIGINT NOT NULL,
    outcome       TEXT NOT NULL,
    smtp_code     BIGINT,
    enhanced_code TEXT,
    detail        TEXT,
    PRIMARY KEY (delivery_id, n)
);

CREATE TABLE replays (
    id            BIGSERIAL PRIMARY KEY,
    at            BIGINT NOT NULL,
    operator      TEXT NOT NULL,
    reason        TEXT NOT NULL,
    command       TEXT NOT NULL,
    filters       TEXT NOT NULL,
    counts        TEXT NOT NULL
);
