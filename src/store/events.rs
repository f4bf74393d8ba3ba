//! The `events` ledger (every accepted event, once, by id) and the
//! `quarantine` table (bad input kept with its reason for operators).

use super::{StoreError, storable};
use crate::domain::event::{EventState, QuarantineState};
use sqlx::{AnyConnection, Row};

/// How much of a bad message's bytes quarantine keeps.
pub const QUARANTINE_RAW_LIMIT: usize = 64 * 1024;

/// A new row for the events ledger.
pub struct NewEvent<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub agb_code: Option<&'a str>,
    pub occurred_at_ms: i64,
    pub received_at_ms: i64,
    pub payload: &'a str,
    pub state: EventState,
    /// Why the event is in `state`, when that needs saying (unroutable, notes).
    pub detail: Option<&'a str>,
}

/// Inserts an event; `false` when its id is already known (a duplicate).
pub async fn insert_event(conn: &mut AnyConnection, e: &NewEvent<'_>) -> Result<bool, StoreError> {
    Ok(insert_events(conn, std::slice::from_ref(e)).await?[0])
}

/// Events per multi-row insert: 8 parameters each, far below SQLite's
/// 32766 (PostgreSQL allows 65535).
const EVENTS_PER_STATEMENT: usize = 500;

/// Inserts the events of a batch in a few multi-row statements; per event,
/// `false` when its id was known already (a duplicate), also when it came
/// earlier in `events` (the first one counts, as if inserted one by one).
pub async fn insert_events(
    conn: &mut AnyConnection,
    events: &[NewEvent<'_>],
) -> Result<Vec<bool>, StoreError> {
    let mut inserted = std::collections::HashSet::with_capacity(events.len());
    for chunk in events.chunks(EVENTS_PER_STATEMENT) {
        let mut binds = super::Binds::for_conn(conn);
        let values = (0..chunk.len())
            .map(|_| binds.row(8))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO events (id, type, agb_code, occurred_at, received_at, payload, state, detail) \
             VALUES {values} ON CONFLICT (id) DO NOTHING RETURNING id"
        );
        let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
        for e in chunk {
            q = q
                .bind(storable(e.id))
                .bind(storable(e.event_type))
                .bind(e.agb_code.map(storable))
                .bind(e.occurred_at_ms)
                .bind(e.received_at_ms)
                .bind(storable(e.payload))
                .bind(e.state.as_str())
                .bind(e.detail.map(storable));
        }
        inserted.extend(q.fetch_all(&mut *conn).await?);
    }
    // An id is new once: a second copy in the same batch is a duplicate.
    Ok(events
        .iter()
        .map(|e| inserted.remove(&storable(e.id)))
        .collect())
}

/// Sets an event's state and detail.
pub async fn set_event_state(
    conn: &mut AnyConnection,
    id: &str,
    state: EventState,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE events SET state = $1, detail = $2 WHERE id = $3")
        .bind(state.as_str())
        .bind(detail.map(storable))
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Adds a note to an event's detail (kept with earlier notes).
pub async fn append_detail(
    conn: &mut AnyConnection,
    id: &str,
    note: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE events SET detail = CASE WHEN detail IS NULL OR detail = '' THEN $1 ELSE detail || '; ' || $1 END WHERE id = $2",
    )
    .bind(storable(note))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The columns an [`EventRow`] is read from.
const EVENT_COLUMNS: &str =
    "id, type, agb_code, occurred_at, received_at, payload, state, detail, purged_at";

/// A stored event.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventRow {
    pub id: String,
    pub event_type: String,
    pub agb_code: Option<String>,
    pub occurred_at: i64,
    pub received_at: i64,
    pub payload: String,
    pub state: EventState,
    pub detail: Option<String>,
    /// When retention purged its personal data (epoch ms); `None` while whole.
    pub purged_at: Option<i64>,
}

/// One event by id.
pub async fn get_event(conn: &mut AnyConnection, id: &str) -> Result<Option<EventRow>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(event_row).transpose()
}

/// The events with these ids (one statement per 500 ids), by id.
pub async fn get_events(
    conn: &mut AnyConnection,
    ids: &[&str],
) -> Result<std::collections::HashMap<String, EventRow>, StoreError> {
    let mut found = std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE id IN ({})",
            super::Binds::for_conn(conn).list(chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(*id);
        }
        for r in q.fetch_all(&mut *conn).await? {
            let e = event_row(&r)?;
            found.insert(e.id.clone(), e);
        }
    }
    Ok(found)
}

/// Events about `agb` received since `since_ms` that can gain recipients
/// (accepted or unroutable), oldest first.
pub async fn recent_for_agb(
    conn: &mut AnyConnection,
    agb: &str,
    since_ms: i64,
) -> Result<Vec<EventRow>, StoreError> {
    // A purged event has no names left to resolve (only possible when
    // `retention.keep` is shorter than `recipients.late_directory_window`).
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM events \
         WHERE agb_code = $1 AND received_at >= $2 AND state IN ('accepted', 'unroutable') \
         AND purged_at IS NULL ORDER BY received_at"
    )))
    .bind(agb)
    .bind(since_ms)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(event_row).collect()
}

fn event_row(r: &sqlx::any::AnyRow) -> Result<EventRow, StoreError> {
    Ok(EventRow {
        id: r.try_get("id")?,
        event_type: r.try_get("type")?,
        agb_code: r.try_get("agb_code")?,
        occurred_at: r.try_get("occurred_at")?,
        received_at: r.try_get("received_at")?,
        payload: r.try_get("payload")?,
        state: event_state_of(r.try_get("state")?)?,
        detail: r.try_get("detail")?,
        purged_at: r.try_get("purged_at")?,
    })
}

/// A bad message on its way into quarantine.
pub struct NewQuarantine<'a> {
    pub received_at_ms: i64,
    /// `amqp`, `file`, `dead-letter`.
    pub source: &'a str,
    pub routing_key: Option<&'a str>,
    pub event_id: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub reason: &'a str,
    /// The message's bytes (only the first [`QUARANTINE_RAW_LIMIT`] are kept).
    pub raw: &'a [u8],
    /// The size of the whole message as received (`raw` may be a prefix).
    pub size: usize,
}

/// Keeps a bad message with its reason; returns the quarantine id.
pub async fn quarantine(
    conn: &mut AnyConnection,
    q: &NewQuarantine<'_>,
) -> Result<i64, StoreError> {
    let raw = &q.raw[..q.raw.len().min(QUARANTINE_RAW_LIMIT)];
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO quarantine (received_at, source, routing_key, event_id, event_type, reason, size, raw) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    // Every text here may come straight from a hostile message: a
    // quarantine row must always be storable, or one message stalls ingest.
    .bind(q.received_at_ms)
    .bind(storable(q.source))
    .bind(q.routing_key.map(storable))
    .bind(q.event_id.map(storable))
    .bind(q.event_type.map(storable))
    .bind(storable(q.reason))
    .bind(q.size.max(q.raw.len()) as i64)
    .bind(raw.to_vec())
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}

/// A quarantined message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuarantineRow {
    pub id: i64,
    pub received_at: i64,
    pub source: String,
    pub routing_key: Option<String>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub reason: String,
    pub size: i64,
    #[serde(skip)]
    pub raw: Vec<u8>,
    pub state: QuarantineState,
    pub redrives: i64,
    pub last_redrive_at: Option<i64>,
    /// When retention purged its body (epoch ms): it cannot be redriven.
    pub purged_at: Option<i64>,
}

fn quarantine_row(r: &sqlx::any::AnyRow) -> Result<QuarantineRow, StoreError> {
    Ok(QuarantineRow {
        id: r.try_get("id")?,
        received_at: r.try_get("received_at")?,
        source: r.try_get("source")?,
        routing_key: r.try_get("routing_key")?,
        event_id: r.try_get("event_id")?,
        event_type: r.try_get("event_type")?,
        reason: r.try_get("reason")?,
        size: r.try_get("size")?,
        raw: r.try_get("raw")?,
        state: {
            let word: String = r.try_get("state")?;
            QuarantineState::parse(&word).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "quarantine state {word:?} is not one this version knows"
                ))
            })?
        },
        redrives: r.try_get("redrives")?,
        last_redrive_at: r.try_get("last_redrive_at")?,
        purged_at: r.try_get("purged_at")?,
    })
}

const QUARANTINE_COLUMNS: &str = "id, received_at, source, routing_key, event_id, event_type, reason, size, raw, state, redrives, last_redrive_at, purged_at";

/// Quarantined messages, newest first; `open_only` hides redriven ones
/// and purged ones (their body is gone: nothing is left to redrive).
pub async fn list_quarantine(
    conn: &mut AnyConnection,
    open_only: bool,
    limit: i64,
) -> Result<Vec<QuarantineRow>, StoreError> {
    let sql = format!(
        "SELECT {QUARANTINE_COLUMNS} FROM quarantine {} ORDER BY id DESC LIMIT $1",
        if open_only {
            "WHERE state = 'open' AND purged_at IS NULL"
        } else {
            ""
        }
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(quarantine_row).collect()
}

/// One quarantined message.
pub async fn get_quarantine(
    conn: &mut AnyConnection,
    id: i64,
) -> Result<Option<QuarantineRow>, StoreError> {
    let sql = format!("SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(quarantine_row).transpose()
}

/// Marks a redrive of a quarantined message: `redriven` when it went through,
/// or still `open` with the new reason.
pub async fn mark_redrive(
    conn: &mut AnyConnection,
    id: i64,
    new_reason: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    match new_reason {
        None => {
            sqlx::query("UPDATE quarantine SET state = 'redriven', redrives = redrives + 1, last_redrive_at = $1 WHERE id = $2")
                .bind(now_ms)
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        Some(reason) => {
            sqlx::query("UPDATE quarantine SET reason = $1, redrives = redrives + 1, last_redrive_at = $2 WHERE id = $3")
                .bind(storable(reason))
                .bind(now_ms)
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Open quarantine size (purged rows, which cannot be redriven, not counted).
pub async fn open_quarantine_count(conn: &mut AnyConnection) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM quarantine WHERE state = 'open' AND purged_at IS NULL",
    )
    .fetch_one(&mut *conn)
    .await?)
}

/// Filters for selecting stored events (`notifier replay events`).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub agb_code: Option<String>,
    /// On `received_at`, inclusive.
    pub since_ms: Option<i64>,
    /// On `received_at`, exclusive.
    pub until_ms: Option<i64>,
    /// Event states to include; empty: any.
    pub states: Vec<EventState>,
    /// Newest received first (default: oldest first).
    pub newest_first: bool,
    /// At most this many.
    pub limit: Option<i64>,
}

/// Stored events matching `f`, oldest received first.
pub async fn list_events(
    conn: &mut AnyConnection,
    f: &EventFilter,
) -> Result<Vec<EventRow>, StoreError> {
    let mut w = super::filter::Where::for_conn(conn);
    for (col, v) in [
        ("id", &f.event_id),
        ("type", &f.event_type),
        ("agb_code", &f.agb_code),
    ] {
        if let Some(v) = v {
            w.text(col, "=", v);
        }
    }
    if let Some(v) = f.since_ms {
        w.int("received_at", ">=", v);
    }
    if let Some(v) = f.until_ms {
        w.int("received_at", "<", v);
    }
    let states: Vec<&str> = f.states.iter().map(|s| s.as_str()).collect();
    w.any_of("state", &states);
    let order = if f.newest_first {
        " ORDER BY received_at DESC, id DESC"
    } else {
        " ORDER BY received_at, id"
    };
    let limit = f
        .limit
        .map(|l| format!(" LIMIT {}", l.max(0)))
        .unwrap_or_default();
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events{}{order}{limit}",
        w.clause()
    );
    let q = w.bind(sqlx::query(sqlx::AssertSqlSafe(sql)));
    let rows = q.fetch_all(&mut *conn).await?;
    rows.iter().map(event_row).collect()
}

/// Module events received since `since_ms` that nobody could be mailed about.
pub async fn unroutable_count(conn: &mut AnyConnection, since_ms: i64) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE state = 'unroutable' AND received_at >= $1",
    )
    .bind(since_ms)
    .fetch_one(&mut *conn)
    .await?)
}

/// A stored event state as an [`EventState`].
pub(crate) fn event_state_of(word: String) -> Result<EventState, StoreError> {
    EventState::parse(&word).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "event state {word:?} is not one this version knows (written by a newer version?)"
        ))
    })
}
