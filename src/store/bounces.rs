//! The `bounces` table: every message read back from the bounce mailbox,
//! once (by the SHA-256 of its raw bytes), with what it was found to be;
//! and what a bounce changes on its delivery (status `bounced`, an
//! attempt-log entry without a number).

use super::{StoreError, storable};
use crate::domain::delivery::{DeliveryStatus, LogOutcome, MailKind, Unknown};
use crate::domain::dsn::BounceOutcome;
use sqlx::{AnyConnection, Row};

/// The most bytes of a message that are kept.
pub const MAX_RAW: usize = 64 * 1024;

/// The most characters of a diagnostic or detail that are kept.
const MAX_TEXT: usize = 1000;

/// A message read back, to be recorded.
#[derive(Debug, Clone)]
pub struct NewBounce<'a> {
    pub received_at_ms: i64,
    /// Lowercase hex SHA-256 of the raw message.
    pub sha256: &'a str,
    pub delivery_id: Option<&'a str>,
    pub outcome: BounceOutcome,
    pub status: Option<&'a str>,
    pub diagnostic: Option<&'a str>,
    pub detail: &'a str,
    /// The whole message; only its first [`MAX_RAW`] bytes are kept.
    pub raw: &'a [u8],
}

/// Records a message; `false` when one with the same SHA-256 is recorded
/// already (nothing is written then).
pub async fn insert(conn: &mut AnyConnection, b: &NewBounce<'_>) -> Result<bool, StoreError> {
    let kept = &b.raw[..b.raw.len().min(MAX_RAW)];
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO bounces (received_at, sha256, delivery_id, outcome, status, diagnostic, detail, size, raw) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (sha256) DO NOTHING RETURNING id",
    )
    .bind(b.received_at_ms)
    .bind(b.sha256)
    .bind(b.delivery_id)
    .bind(b.outcome.as_str())
    .bind(b.status.map(|s| storable(&bounded(s))))
    .bind(b.diagnostic.map(|s| storable(&bounded(s))))
    .bind(storable(&bounded(b.detail)))
    .bind(b.raw.len() as i64)
    .bind(kept.to_vec())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(id.is_some())
}

fn bounded(s: &str) -> String {
    s.chars().take(MAX_TEXT).collect()
}

/// A recorded message as operators see it (without the raw bytes).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BounceRow {
    pub id: i64,
    pub received_at: i64,
    pub sha256: String,
    pub delivery_id: Option<String>,
    pub outcome: BounceOutcome,
    pub status: Option<String>,
    pub diagnostic: Option<String>,
    pub detail: Option<String>,
    pub size: i64,
}

/// Filters for listing recorded messages.
#[derive(Debug, Clone, Default)]
pub struct BounceFilter {
    pub outcome: Option<BounceOutcome>,
    pub since_ms: Option<i64>,
    pub delivery_id: Option<String>,
    pub limit: Option<i64>,
}

/// Recorded messages matching `f`, oldest first.
pub async fn list(
    conn: &mut AnyConnection,
    f: &BounceFilter,
) -> Result<Vec<BounceRow>, StoreError> {
    let mut w = super::filter::Where::for_conn(conn);
    if let Some(o) = f.outcome {
        w.text("outcome", "=", o.as_str());
    }
    if let Some(v) = f.since_ms {
        w.int("received_at", ">=", v);
    }
    if let Some(v) = &f.delivery_id {
        w.text("delivery_id", "=", v);
    }
    let limit = f.limit.map(|l| format!(" LIMIT {l}")).unwrap_or_default();
    let sql = format!(
        "SELECT id, received_at, sha256, delivery_id, outcome, status, diagnostic, detail, size \
         FROM bounces{} ORDER BY received_at, id{limit}",
        w.clause()
    );
    let rows = w
        .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            let word: String = r.try_get("outcome")?;
            Ok(BounceRow {
                id: r.try_get("id")?,
                received_at: r.try_get("received_at")?,
                sha256: r.try_get("sha256")?,
                delivery_id: r.try_get("delivery_id")?,
                outcome: BounceOutcome::parse(&word).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "bounce outcome {word:?} is not one this version knows"
                    ))
                })?,
                status: r.try_get("status")?,
                diagnostic: r.try_get("diagnostic")?,
                detail: r.try_get("detail")?,
                size: r.try_get("size")?,
            })
        })
        .collect()
}

/// Messages read since `since_ms`, by outcome.
pub async fn outcomes_since(
    conn: &mut AnyConnection,
    since_ms: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    super::counts_since(
        conn,
        "SELECT outcome AS k, COUNT(*) AS n FROM bounces WHERE received_at >= $1 GROUP BY outcome ORDER BY outcome",
        since_ms,
    )
    .await
}

/// A delivery a tag named, with what a bounce needs of it.
#[derive(Debug, Clone)]
pub struct TaggedDelivery {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub kind: Result<MailKind, Unknown>,
    /// The address the mail went to (or was planned for).
    pub address: String,
    pub status: DeliveryStatus,
}

/// The delivery `id`, when it exists.
pub async fn tagged_delivery(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<TaggedDelivery>, StoreError> {
    let row = sqlx::query(
        "SELECT d.id, d.event_id, e.type AS event_type, d.kind, COALESCE(d.sent_to, d.address) AS address, d.status \
         FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let word: String = r.try_get("status")?;
    Ok(Some(TaggedDelivery {
        id: r.try_get("id")?,
        event_id: r.try_get("event_id")?,
        event_type: r.try_get("event_type")?,
        kind: MailKind::parse_stored(r.try_get("kind")?),
        address: r.try_get("address")?,
        status: DeliveryStatus::parse(&word).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "delivery status {word:?} is not one this version knows"
            ))
        })?,
    }))
}

/// Moves a `sent` delivery to `bounced` with `error` as its last error;
/// `false` when it is not `sent` (any more).
pub async fn mark_bounced(
    conn: &mut AnyConnection,
    id: &str,
    error: &str,
) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "UPDATE deliveries SET status = 'bounced', last_error = $2 WHERE id = $1 AND status = 'sent'",
    )
    .bind(id)
    .bind(storable(&bounded(error)))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// An attempt-log entry for a report read back: no attempt number, and
/// the delivery's `attempts` count is left as it is.
#[derive(Debug, Clone)]
pub struct ReportEntry<'a> {
    pub delivery_id: &'a str,
    pub at_ms: i64,
    pub outcome: LogOutcome,
    /// The status code reported, e.g. `5.1.1`.
    pub enhanced_code: Option<&'a str>,
    /// The SMTP reply code in the diagnostic, when it has one.
    pub smtp_code: Option<i64>,
    pub detail: &'a str,
}

/// Adds `e` to its delivery's attempt log.
pub async fn add_report_entry(
    conn: &mut AnyConnection,
    e: &ReportEntry<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO attempts (delivery_id, n, started_at, duration_ms, outcome, smtp_code, enhanced_code, detail, checked_at) \
         VALUES ($1, NULL, $2, 0, $3, $4, $5, $6, NULL)",
    )
    .bind(e.delivery_id)
    .bind(e.at_ms)
    .bind(e.outcome.as_str())
    .bind(e.smtp_code)
    .bind(e.enhanced_code.map(storable))
    .bind(storable(&bounded(e.detail)))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
