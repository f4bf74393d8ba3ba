-- Times are milliseconds since the Unix epoch (UTC) in both backends.

CREATE TABLE events (
    id            TEXT PRIMARY KEY,
    type          TEXT NOT NULL,
    agb_code      TEXT,
    occurred_at   INTEGER NOT NULL,
    received_at   INTEGER NOT NULL,
    payload       TEXT NOT NULL,
    state         TEXT NOT NULL,
    detail        TEXT
);
CREATE INDEX events_received ON events (received_at);
CREATE INDEX events_state ON events (state);

CREATE TABLE quarantine (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at   INTEGER NOT NULL,
    source        TEXT NOT NULL,
    routing_key   TEXT,
    event_id      TEXT,
    event_type    TEXT,
    reason        TEXT NOT NULL,
    size          INTEGER NOT NULL,
    raw           BLOB NOT NULL,
    state         TEXT NOT NULL DEFAULT 'open',
    redrives      INTEGER NOT NULL DEFAULT 0,
    last_redrive_at INTEGER
);
CREATE INDEX quarantine_state ON quarantine (state);

CREATE TABLE users (
    gebruikersnummer TEXT PRIMARY KEY,
    naam          TEXT NOT NULL,
    email         TEXT NOT NULL,
    status        TEXT NOT NULL,
    versie        INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE user_links (
    gebruikersnummer TEXT NOT NULL REFERENCES users (gebruikersnummer) ON DELETE CASCADE,
    agb_code      TEXT NOT NULL,
    rechten       TEXT NOT NULL,
    tekenbevoegd  INTEGER NOT NULL,
    contactpersoon INTEGER NOT NULL,
    PRIMARY KEY (gebruikersnummer, agb_code)
);
CREATE INDEX user_links_agb ON user_links (agb_code);

CREATE TABLE organisations (
    agb_code      TEXT PRIMARY KEY,
    naam          TEXT NOT NULL,
    versie        INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE directory_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            INTEGER NOT NULL,
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
    attempts      INTEGER NOT NULL DEFAULT 0,
    retry_step    INTEGER NOT NULL DEFAULT 0,
    due_at        INTEGER NOT NULL,
    deadline      INTEGER NOT NULL,
    lease_until   INTEGER,
    lease_owner   TEXT,
    message_id    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    sent_at       INTEGER,
    last_error    TEXT,
    UNIQUE (event_id, kind, address, about)
);
CREATE INDEX deliveries_due ON deliveries (status, due_at);
CREATE INDEX deliveries_event ON deliveries (event_id);

CREATE TABLE delivery_users (
    delivery_id   TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    gebruikersnummer TEXT NOT NULL,
    versie        INTEGER NOT NULL,
    rule          TEXT NOT NULL,
    PRIMARY KEY (delivery_id, gebruikersnummer)
);
CREATE INDEX delivery_users_user ON delivery_users (gebruikersnummer);

CREATE TABLE attempts (
    delivery_id   TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    n             INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    duration_ms   INTEGER NOT NULL,
    outcome       TEXT NOT NULL,
    smtp_code     INTEGER,
    enhanced_code TEXT,
    detail        TEXT,
    PRIMARY KEY (delivery_id, n)
);

CREATE TABLE replays (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            INTEGER NOT NULL,
    operator      TEXT NOT NULL,
    reason        TEXT NOT NULL,
    command       TEXT NOT NULL,
    filters       TEXT NOT NULL,
    counts        TEXT NOT NULL
);
