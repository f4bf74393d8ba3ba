//! Retention in the database: which rows are old enough to lose their
//! personal data, the purge of one batch of them, and what makes the purge
//! reach the database files (SQLite's WAL, PostgreSQL's dead tuples).
//!
//! An event is purged once it was received before the cut-off, every
//! delivery of it is final (`sent`, `failed`, `cancelled`, `bounced`), and
//! nothing happened to it since the cut-off either (no delivery created,
//! sent or attempted after it): a mail replayed last week keeps its story
//! for `retention.keep` from then. Its purge covers its deliveries, the
//! users they served and their attempt log. Bounces and quarantined
//! messages are purged by their own `received_at`, `directory_log` rows by
//! their `at`. What is kept and what goes is in docs/operations.md
//! (Retention); the rules for payloads and texts are in
//! [`crate::domain::retention`].

use super::{Backend, Binds, Store, StoreError, storable};
use crate::domain::delivery::DeliveryStatus;
use crate::domain::retention::{minimise_notice, minimise_payload, scrub_text};
use sqlx::{AnyConnection, Row};
use std::collections::BTreeMap;

/// Rows a purge changed (or, in a dry run, would change).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PurgeCounts {
    pub events: u64,
    /// Deliveries of those events.
    pub deliveries: u64,
    /// Users those deliveries served (the rows stay, numbered instead of named).
    pub delivery_users: u64,
    /// Attempt-log entries of those deliveries.
    pub attempts: u64,
    pub bounces: u64,
    pub quarantine: u64,
    pub directory_log: u64,
}

impl PurgeCounts {
    /// All rows.
    pub fn total(&self) -> u64 {
        self.events
            + self.deliveries
            + self.delivery_users
            + self.attempts
            + self.bounces
            + self.quarantine
            + self.directory_log
    }
}

impl std::ops::AddAssign for PurgeCounts {
    fn add_assign(&mut self, o: Self) {
        self.events += o.events;
        self.deliveries += o.deliveries;
        self.delivery_users += o.delivery_users;
        self.attempts += o.attempts;
        self.bounces += o.bounces;
        self.quarantine += o.quarantine;
        self.directory_log += o.directory_log;
    }
}

fn is_postgres(conn: &AnyConnection) -> bool {
    super::Backend::of(conn) == super::Backend::Postgres
}

/// The condition on event `e` (`$1` the cut-off) under which it is purged.
fn purgeable(e: &str) -> String {
    let finals: Vec<String> = DeliveryStatus::ALL
        .iter()
        .filter(|s| s.is_final())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    // A status this version does not know counts as not final.
    format!(
        "{e}.purged_at IS NULL AND {e}.received_at < $1 AND NOT EXISTS (\
            SELECT 1 FROM deliveries pd WHERE pd.event_id = {e}.id AND (\
                pd.status NOT IN ({finals}) OR pd.created_at >= $1 OR pd.sent_at >= $1 \
                OR EXISTS (SELECT 1 FROM attempts pa WHERE pa.delivery_id = pd.id AND pa.started_at >= $1)))",
        finals = finals.join(", ")
    )
}

/// Up to `limit` events to purge before `cutoff_ms`, oldest first. On
/// PostgreSQL they are locked (`SKIP LOCKED`), so instances purging at the
/// same time take different events.
pub async fn purgeable_events(
    conn: &mut AnyConnection,
    cutoff_ms: i64,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    let lock = if is_postgres(conn) {
        " FOR UPDATE OF e SKIP LOCKED"
    } else {
        ""
    };
    let sql = format!(
        "SELECT e.id FROM events e WHERE {} ORDER BY e.received_at, e.id LIMIT $2{lock}",
        purgeable("e")
    );
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(cutoff_ms)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?)
}

/// What a purge before `cutoff_ms` would change now (a dry run).
pub async fn preview(conn: &mut AnyConnection, cutoff_ms: i64) -> Result<PurgeCounts, StoreError> {
    let events = format!("SELECT e.id FROM events e WHERE {}", purgeable("e"));
    let count = async |conn: &mut AnyConnection, sql: String| -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(cutoff_ms)
            .fetch_one(&mut *conn)
            .await?;
        Ok(n as u64)
    };
    Ok(PurgeCounts {
        events: count(conn, format!("SELECT COUNT(*) FROM ({events}) x")).await?,
        deliveries: count(
            conn,
            format!("SELECT COUNT(*) FROM deliveries d WHERE d.event_id IN ({events})"),
        )
        .await?,
        delivery_users: count(
            conn,
            format!(
                "SELECT COUNT(*) FROM delivery_users du JOIN deliveries d ON d.id = du.delivery_id \
                 WHERE d.event_id IN ({events})"
            ),
        )
        .await?,
        attempts: count(
            conn,
            format!(
                "SELECT COUNT(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id \
                 WHERE d.event_id IN ({events})"
            ),
        )
        .await?,
        bounces: count(
            conn,
            "SELECT COUNT(*) FROM bounces WHERE purged_at IS NULL AND received_at < $1".into(),
        )
        .await?,
        quarantine: count(
            conn,
            "SELECT COUNT(*) FROM quarantine WHERE purged_at IS NULL AND received_at < $1".into(),
        )
        .await?,
        directory_log: count(
            conn,
            "SELECT COUNT(*) FROM directory_log WHERE at < $1 AND subject <> ''".into(),
        )
        .await?,
    })
}

/// Events received before `cutoff_ms`, not purged, that a purge leaves
/// alone: a delivery is not final yet, or something happened since.
pub async fn held_back(conn: &mut AnyConnection, cutoff_ms: i64) -> Result<u64, StoreError> {
    let sql = format!(
        "SELECT COUNT(*) FROM events e WHERE e.purged_at IS NULL AND e.received_at < $1 AND NOT ({})",
        purgeable("e")
    );
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(cutoff_ms)
        .fetch_one(&mut *conn)
        .await?;
    Ok(n as u64)
}

/// IN-list chunks: well below both backends' parameter limits.
const CHUNK: usize = 500;

/// Purges events `ids` (from [`purgeable_events`], in the same
/// transaction) with their deliveries, served users and attempt log.
/// Kept: ids, types, AGB codes, states, statuses, rules, counts, codes and
/// times. Gone: the payload's names and free text
/// ([`minimise_payload`]), addresses, user numbers, notice names, and
/// addresses and user numbers in texts ([`scrub_text`]).
pub async fn purge_events(
    conn: &mut AnyConnection,
    ids: &[String],
    now_ms: i64,
) -> Result<PurgeCounts, StoreError> {
    let mut counts = PurgeCounts::default();
    for chunk in ids.chunks(CHUNK) {
        let purged = purge_event_rows(conn, chunk, now_ms).await?;
        counts.events += purged.len() as u64;
        let deliveries = purge_deliveries(conn, &purged).await?;
        counts.deliveries += deliveries.len() as u64;
        for ds in deliveries.chunks(CHUNK) {
            counts.delivery_users += number_served_users(conn, ds).await?;
            counts.attempts += scrub_attempts(conn, ds).await?;
        }
    }
    Ok(counts)
}

/// Minimises the events `ids` not purged yet; returns the ids it purged.
async fn purge_event_rows(
    conn: &mut AnyConnection,
    ids: &[String],
    now_ms: i64,
) -> Result<Vec<String>, StoreError> {
    let sql = format!(
        "SELECT id, payload, detail FROM events WHERE purged_at IS NULL AND id IN ({})",
        Binds::for_conn(conn).list(ids.len())
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in ids {
        q = q.bind(id.as_str());
    }
    let rows = q.fetch_all(&mut *conn).await?;
    let mut purged = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: String = r.try_get("id")?;
        let payload: String = r.try_get("payload")?;
        let detail: Option<String> = r.try_get("detail")?;
        let n = sqlx::query(
            "UPDATE events SET payload = $1, detail = $2, purged_at = $3 WHERE id = $4 AND purged_at IS NULL",
        )
        .bind(storable(&minimise_payload(&payload)))
        .bind(detail.as_deref().map(scrub_text))
        .bind(now_ms)
        .bind(id.as_str())
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if n > 0 {
            purged.push(id);
        }
    }
    Ok(purged)
}

/// Removes the addresses of the deliveries of `events` (the address column
/// becomes `purged:<delivery id>`, unique as the table needs), the
/// user an `about` names, the names in a notice and the addresses in
/// `last_error`; returns the deliveries' ids.
async fn purge_deliveries(
    conn: &mut AnyConnection,
    events: &[String],
) -> Result<Vec<String>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let list = Binds::for_conn(conn).list(events.len());
    let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, notice, last_error FROM deliveries WHERE event_id IN ({list}) ORDER BY id"
    )));
    for id in events {
        q = q.bind(id.as_str());
    }
    let rows = q.fetch_all(&mut *conn).await?;
    let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE deliveries SET address = 'purged:' || id, sent_to = NULL, claimed_address = NULL, address_registered = NULL, about = '' \
         WHERE event_id IN ({list})"
    )));
    for id in events {
        q = q.bind(id.as_str());
    }
    q.execute(&mut *conn).await?;
    let mut ids = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: String = r.try_get("id")?;
        let notice: Option<String> = r.try_get("notice")?;
        let last_error: Option<String> = r.try_get("last_error")?;
        let new_notice = notice.as_deref().map(minimise_notice);
        let new_error = last_error.as_deref().map(scrub_text);
        if new_notice != notice || new_error != last_error {
            sqlx::query("UPDATE deliveries SET notice = $1, last_error = $2 WHERE id = $3")
                .bind(new_notice)
                .bind(new_error)
                .bind(id.as_str())
                .execute(&mut *conn)
                .await?;
        }
        ids.push(id);
    }
    Ok(ids)
}

/// The users the `deliveries` served lose their gebruikersnummer: each row
/// stays, with its rule and versie, as `purged-1`, `purged-2`, … per
/// delivery, so how many were served, and why, is still told. Returns the rows.
async fn number_served_users(
    conn: &mut AnyConnection,
    deliveries: &[String],
) -> Result<u64, StoreError> {
    let list = Binds::for_conn(conn).list(deliveries.len());
    let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT delivery_id, versie, rule FROM delivery_users WHERE delivery_id IN ({list}) \
         ORDER BY delivery_id, gebruikersnummer"
    )));
    for id in deliveries {
        q = q.bind(id.as_str());
    }
    let rows = q.fetch_all(&mut *conn).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM delivery_users WHERE delivery_id IN ({list})"
    )));
    for id in deliveries {
        q = q.bind(id.as_str());
    }
    q.execute(&mut *conn).await?;
    let mut numbered: Vec<(String, String, i64, String)> = Vec::with_capacity(rows.len());
    let mut per_delivery: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        let delivery: String = r.try_get("delivery_id")?;
        let k = per_delivery.entry(delivery.clone()).or_default();
        *k += 1;
        numbered.push((
            delivery,
            format!("purged-{k}"),
            r.try_get("versie")?,
            r.try_get("rule")?,
        ));
    }
    for chunk in numbered.chunks(super::MAX_PARAMS / 4) {
        let mut binds = Binds::for_conn(conn);
        let values: Vec<String> = chunk.iter().map(|_| binds.row(4)).collect();
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO delivery_users (delivery_id, gebruikersnummer, versie, rule) VALUES {}",
            values.join(", ")
        )));
        for (d, nr, versie, rule) in chunk {
            q = q
                .bind(d.as_str())
                .bind(nr.as_str())
                .bind(*versie)
                .bind(rule.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(rows.len() as u64)
}

/// Scrubs the attempt-log texts of `deliveries` (a relay's reply may quote
/// the address); returns the entries they have.
async fn scrub_attempts(
    conn: &mut AnyConnection,
    deliveries: &[String],
) -> Result<u64, StoreError> {
    let list = Binds::for_conn(conn).list(deliveries.len());
    let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT delivery_id, detail, COUNT(*) AS n FROM attempts WHERE delivery_id IN ({list}) \
         GROUP BY delivery_id, detail"
    )));
    for id in deliveries {
        q = q.bind(id.as_str());
    }
    let rows = q.fetch_all(&mut *conn).await?;
    let mut entries = 0;
    for r in &rows {
        entries += r.try_get::<i64, _>("n")? as u64;
        let Some(detail) = r.try_get::<Option<String>, _>("detail")? else {
            continue;
        };
        let scrubbed = scrub_text(&detail);
        if scrubbed != detail {
            let delivery: String = r.try_get("delivery_id")?;
            sqlx::query("UPDATE attempts SET detail = $1 WHERE delivery_id = $2 AND detail = $3")
                .bind(scrubbed)
                .bind(delivery)
                .bind(detail)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(entries)
}

/// Purges up to `limit` bounces received before `cutoff_ms`: the raw
/// message goes, the diagnostic and detail lose addresses and numbers;
/// outcome, status code, size, hash and delivery stay. Returns the rows.
pub async fn purge_bounces(
    conn: &mut AnyConnection,
    cutoff_ms: i64,
    now_ms: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    let lock = if is_postgres(conn) {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, diagnostic, detail FROM bounces WHERE purged_at IS NULL AND received_at < $1 \
         ORDER BY received_at, id LIMIT $2{lock}"
    )))
    .bind(cutoff_ms)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut n = 0;
    for r in &rows {
        let diagnostic: Option<String> = r.try_get("diagnostic")?;
        let detail: Option<String> = r.try_get("detail")?;
        n += sqlx::query(
            "UPDATE bounces SET raw = $1, diagnostic = $2, detail = $3, purged_at = $4 \
             WHERE id = $5 AND purged_at IS NULL",
        )
        .bind(Vec::<u8>::new())
        .bind(diagnostic.as_deref().map(scrub_text))
        .bind(detail.as_deref().map(scrub_text))
        .bind(now_ms)
        .bind(r.try_get::<i64, _>("id")?)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(n)
}

/// Purges up to `limit` quarantined messages received before `cutoff_ms`:
/// the body goes (it can no longer be redriven), the reason loses
/// addresses and numbers; id, source, event id and type, size, state,
/// redrives and times stay. Returns the rows.
pub async fn purge_quarantine(
    conn: &mut AnyConnection,
    cutoff_ms: i64,
    now_ms: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    let lock = if is_postgres(conn) {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, reason FROM quarantine WHERE purged_at IS NULL AND received_at < $1 \
         ORDER BY received_at, id LIMIT $2{lock}"
    )))
    .bind(cutoff_ms)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut n = 0;
    for r in &rows {
        let reason: String = r.try_get("reason")?;
        n += sqlx::query(
            "UPDATE quarantine SET raw = $1, reason = $2, purged_at = $3 WHERE id = $4 AND purged_at IS NULL",
        )
        .bind(Vec::<u8>::new())
        .bind(scrub_text(&reason))
        .bind(now_ms)
        .bind(r.try_get::<i64, _>("id")?)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(n)
}

/// Clears the subject (a gebruikersnummer or AGB code) of up to `limit`
/// `directory_log` rows written before `cutoff_ms`; source, outcome and
/// time stay, so the counts of skipped updates do. Returns the rows.
pub async fn clear_directory_log(
    conn: &mut AnyConnection,
    cutoff_ms: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE directory_log SET subject = '' WHERE id IN \
         (SELECT id FROM directory_log WHERE at < $1 AND subject <> '' ORDER BY at, id LIMIT $2)",
    )
    .bind(cutoff_ms)
    .bind(limit)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// The tables a purge changes (PostgreSQL `VACUUM` takes these).
const PURGED_TABLES: &str =
    "events, deliveries, delivery_users, attempts, bounces, quarantine, directory_log";

/// What was done to the database files after a purge.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FilesReport {
    /// The statements run, in order, e.g. `PRAGMA wal_checkpoint(TRUNCATE)`.
    pub ran: Vec<String>,
    /// Whether the old content is known to be out of the files now.
    pub complete: bool,
    /// What is left to do, when not complete.
    pub note: Option<String>,
}

/// Makes a purge reach the files. SQLite (where `secure_delete` already
/// zeroed the old content in the database file): the WAL, which still
/// holds the pages as they were, is checkpointed and truncated; with
/// `rewrite`, `VACUUM` first rewrites the whole file (also clearing what was
/// deleted before `secure_delete` was on). PostgreSQL: `VACUUM` of the
/// purged tables removes the old row versions (`VACUUM FULL` with
/// `rewrite`, which locks the tables while it rewrites them). Neither
/// reaches backups, WAL archives or replicas' own WAL.
pub async fn settle_files(store: &Store, rewrite: bool) -> Result<FilesReport, StoreError> {
    let mut ran = Vec::new();
    match store.backend() {
        Backend::Sqlite => {
            // This process's writers wait; another process's writer makes
            // the checkpoint wait for `busy_timeout`, then report busy.
            let _turn = store.writer.clone().lock_owned().await;
            let mut conn = store.pool().acquire().await?;
            if rewrite {
                sqlx::raw_sql("VACUUM").execute(&mut *conn).await?;
                ran.push("VACUUM".to_owned());
            }
            let stmt = "PRAGMA wal_checkpoint(TRUNCATE)";
            let row = sqlx::query(stmt).fetch_one(&mut *conn).await?;
            ran.push(stmt.to_owned());
            let busy: i64 = row.try_get(0)?;
            Ok(if busy == 0 {
                FilesReport {
                    ran,
                    complete: true,
                    note: None,
                }
            } else {
                FilesReport {
                    ran,
                    complete: false,
                    note: Some(
                        "the WAL was not truncated: another connection was reading; \
                         the next purge (or `notifier purge --execute`) tries again"
                            .into(),
                    ),
                }
            })
        }
        Backend::Postgres => {
            let stmt = if rewrite {
                format!("VACUUM (FULL) {PURGED_TABLES}")
            } else {
                format!("VACUUM {PURGED_TABLES}")
            };
            let mut conn = store.pool().acquire().await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(stmt.clone()))
                .execute(&mut *conn)
                .await?;
            ran.push(stmt);
            Ok(FilesReport {
                ran,
                complete: false,
                note: Some(
                    "PostgreSQL's WAL (pg_wal, a WAL archive) and backups keep the old values \
                     until they are recycled or expire; a table the database role does not own \
                     is skipped by VACUUM (autovacuum cleans it later)"
                        .into(),
                ),
            })
        }
    }
}
