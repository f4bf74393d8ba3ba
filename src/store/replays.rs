//! The `replays` audit table: one row for every replay, redrive or purge
//! that changed something, with who did it, why, the filters and the counts.

use super::StoreError;
use sqlx::{AnyConnection, Row};

/// A replay to record.
pub struct NewReplay<'a> {
    pub at_ms: i64,
    pub operator: &'a str,
    pub reason: &'a str,
    /// The command as typed without options, e.g. `replay deliveries`.
    pub command: &'a str,
    pub filters: &'a serde_json::Value,
    pub counts: &'a serde_json::Value,
}

/// Records a replay in the same transaction as its changes; returns its id.
pub async fn insert(conn: &mut AnyConnection, r: &NewReplay<'_>) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO replays (at, operator, reason, command, filters, counts) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(r.at_ms)
    .bind(r.operator)
    .bind(r.reason)
    .bind(r.command)
    .bind(r.filters.to_string())
    .bind(r.counts.to_string())
    .fetch_one(&mut *conn)
    .await?)
}

/// Replaces the counts of a recorded row: a purge works in batches, one
/// transaction each, and brings its row up to date in each, so the row
/// tells what was done even if the purge stops half-way.
pub async fn update_counts(
    conn: &mut AnyConnection,
    id: i64,
    counts: &serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE replays SET counts = $1 WHERE id = $2")
        .bind(counts.to_string())
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A recorded replay.
#[derive(Debug, Clone)]
pub struct ReplayRow {
    pub id: i64,
    pub at: i64,
    pub operator: String,
    pub reason: String,
    pub command: String,
    /// JSON text.
    pub filters: String,
    /// JSON text.
    pub counts: String,
}

/// Recorded replays, newest first.
pub async fn list(conn: &mut AnyConnection, limit: i64) -> Result<Vec<ReplayRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, at, operator, reason, command, filters, counts FROM replays ORDER BY at DESC, id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ReplayRow {
                id: r.try_get("id")?,
                at: r.try_get("at")?,
                operator: r.try_get("operator")?,
                reason: r.try_get("reason")?,
                command: r.try_get("command")?,
                filters: r.try_get("filters")?,
                counts: r.try_get("counts")?,
            })
        })
        .collect()
}
