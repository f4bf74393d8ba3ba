//! Planning writes: new delivery rows and the users they serve, written in
//! multi-row statements, and the one row a send-time split adds. On SQLite every statement is a hand-off to sqlx's
//! worker thread and on PostgreSQL a round trip, so a fan-out to thousands
//! of recipients costs a handful of statements instead of two per recipient.

use super::deliveries::message_id_for;
use super::{Binds, StoreError};
use crate::domain::recipients::{PlannedDelivery, Served};
use sqlx::AnyConnection;
use std::collections::HashSet;

/// The fewest bound parameters one statement may carry on either backend
/// (SQLite's `SQLITE_MAX_VARIABLE_NUMBER`; PostgreSQL allows 65535).
const MAX_PARAMS: usize = 32766;

/// Rows per multi-row statement: large enough that a big fan-out takes a
/// few statements, small enough to stay far below [`MAX_PARAMS`] and to keep
/// each statement's text (and SQLite's prepared plan) modest.
const ROWS_PER_STATEMENT: usize = 1000;

/// Parameters of one delivery row.
const DELIVERY_PARAMS: usize = 13;
/// Parameters of one `delivery_users` row.
const SERVED_PARAMS: usize = 4;
const _: () = assert!(ROWS_PER_STATEMENT * DELIVERY_PARAMS <= MAX_PARAMS);
const _: () = assert!(ROWS_PER_STATEMENT * SERVED_PARAMS <= MAX_PARAMS);

/// One planned delivery row: the event it belongs to and its deadline.
#[derive(Clone, Copy)]
pub struct PlannedRow<'a> {
    pub event_id: &'a str,
    pub planned: &'a PlannedDelivery,
    pub deadline_ms: i64,
}

/// Inserts planned deliveries of one event and the users each serves, in
/// order, in a few multi-row statements. Returns, per planned delivery, the
/// new id, or `None` when the same (event, kind, address, about) already
/// exists or another delivery of the event and kind has taken the address
/// (also one earlier in `planned`): the first one wins, as if inserted one
/// by one, and re-ingesting is harmless.
pub async fn insert_planned_many(
    conn: &mut AnyConnection,
    event_id: &str,
    planned: &[&PlannedDelivery],
    now_ms: i64,
    due_ms: i64,
    deadline_ms: i64,
) -> Result<Vec<Option<String>>, StoreError> {
    let rows: Vec<PlannedRow<'_>> = planned
        .iter()
        .map(|p| PlannedRow {
            event_id,
            planned: p,
            deadline_ms,
        })
        .collect();
    insert_planned_rows(conn, &rows, now_ms, due_ms).await
}

/// [`insert_planned_many`] for the rows of any number of events (the first
/// planning of every new event of an ingest batch): the same answer per
/// row, in the same few statements whatever the number of events.
pub async fn insert_planned_rows(
    conn: &mut AnyConnection,
    rows: &[PlannedRow<'_>],
    now_ms: i64,
    due_ms: i64,
) -> Result<Vec<Option<String>>, StoreError> {
    let ids: Vec<String> = rows
        .iter()
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let mut inserted = HashSet::with_capacity(rows.len());
    for (chunk, chunk_ids) in rows
        .chunks(ROWS_PER_STATEMENT)
        .zip(ids.chunks(ROWS_PER_STATEMENT))
    {
        // Each value once, in bind order (see `Binds`): claimed_address
        // starts as the planned address, so that is bound twice.
        let mut binds = Binds::for_conn(conn);
        let values = (0..chunk.len())
            .map(|_| format!("({}, 'pending')", binds.list(DELIVERY_PARAMS)))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO deliveries (id, event_id, kind, about, address, claimed_address, address_registered, rule, notice, due_at, deadline, message_id, created_at, status) \
             VALUES {values} ON CONFLICT DO NOTHING RETURNING id"
        );
        let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
        for (r, id) in chunk.iter().zip(chunk_ids) {
            let p = r.planned;
            let address = p.address.as_str().to_owned();
            q = q
                .bind(id.clone())
                .bind(r.event_id.to_owned())
                .bind(p.kind.as_str())
                .bind(p.about.clone())
                .bind(address.clone())
                .bind(address)
                .bind(p.address.registered().to_owned())
                .bind(p.rule_label())
                .bind(p.notice.as_ref().map(|v| v.to_string()))
                .bind(due_ms)
                .bind(r.deadline_ms)
                .bind(message_id_for(id))
                .bind(now_ms);
        }
        inserted.extend(q.fetch_all(&mut *conn).await?);
    }
    let served: Vec<(&str, &Served)> = rows
        .iter()
        .zip(&ids)
        .filter(|(_, id)| inserted.contains(id.as_str()))
        .flat_map(|(r, id)| r.planned.users.iter().map(move |u| (id.as_str(), u)))
        .collect();
    add_served_many(conn, &served).await?;
    Ok(ids
        .into_iter()
        .map(|id| inserted.contains(&id).then_some(id))
        .collect())
}

/// Inserts a copy of delivery `from` (its event, kind, about, rule and
/// notice) for `address`, with the address taken, pending and serving
/// nobody yet; returns its id. `None` when a delivery of that event, kind
/// and about was planned for `address` or has taken it.
pub async fn insert_split(
    conn: &mut AnyConnection,
    from: &str,
    address: &str,
    now_ms: i64,
    due_ms: i64,
    deadline_ms: i64,
) -> Result<Option<String>, StoreError> {
    let id = uuid::Uuid::now_v7().to_string();
    Ok(sqlx::query_scalar(
        "INSERT INTO deliveries (id, event_id, kind, about, address, claimed_address, rule, notice, status, due_at, deadline, message_id, created_at) \
         SELECT $1, event_id, kind, about, $2, $2, rule, notice, 'pending', $3, $4, $5, $6 FROM deliveries WHERE id = $7 \
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(&id)
    .bind(address)
    .bind(due_ms)
    .bind(deadline_ms)
    .bind(message_id_for(&id))
    .bind(now_ms)
    .bind(from)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Records each (delivery id, user) pair as served, in a few multi-row
/// statements (a user already on the delivery stays as it is).
pub async fn add_served_many(
    conn: &mut AnyConnection,
    served: &[(&str, &Served)],
) -> Result<(), StoreError> {
    for chunk in served.chunks(ROWS_PER_STATEMENT) {
        let mut binds = Binds::for_conn(conn);
        let values = (0..chunk.len())
            .map(|_| binds.row(SERVED_PARAMS))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO delivery_users (delivery_id, gebruikersnummer, versie, rule) VALUES {values} \
             ON CONFLICT (delivery_id, gebruikersnummer) DO NOTHING"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, u) in chunk {
            q = q
                .bind(id.to_string())
                .bind(u.gebruikersnummer.as_str().to_owned())
                .bind(u.versie)
                .bind(u.rule.label());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
