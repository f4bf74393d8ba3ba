//! `replay deliveries`: the deliveries in one status that match a [`Scope`]
//! get a new attempt cycle (pending, due now, retry step 0, a deadline of
//! now plus `retry.deadline`).

use super::{Audit, Mode, SAMPLE, Scope, opt_id_text, record};
use crate::domain::delivery::DeliveryStatus;
use crate::pipeline::plan::Deadline;
use crate::store::deliveries::{self as dl, DeliveryFilter, DeliveryRow};
use crate::store::{Store, StoreError, ms};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// What `replay deliveries` is asked for; recorded as its filters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveriesReplay {
    #[serde(flatten)]
    pub scope: Scope,
    /// The status replayed from (never `sending`).
    pub status: DeliveryStatus,
    /// Whether the caller allowed replaying sent mail.
    pub include_sent: bool,
}

/// What a `replay deliveries` found and did.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveriesReport {
    pub command: &'static str,
    pub executed: bool,
    pub filters: DeliveriesReplay,
    /// Deliveries in the status that matched (those of purged events not
    /// counted: see `refused_purged`).
    pub matched: usize,
    /// Deliveries that matched but whose event was purged by retention:
    /// their addresses are gone, so they are never replayed.
    pub refused_purged: usize,
    /// Deliveries changed (executed only): a match that a dispatcher
    /// claimed meanwhile is left alone.
    pub replayed: Option<u64>,
    #[serde(serialize_with = "opt_id_text")]
    pub replay_id: Option<i64>,
    /// Matches per event type and status.
    pub counts: Vec<TypeStatusCount>,
    /// The first [`SAMPLE`] matches.
    pub sample: Vec<DeliverySample>,
    /// The deadline the replayed deliveries get (epoch milliseconds).
    #[serde(skip)]
    pub deadline_ms: i64,
}

/// Matches of one event type and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypeStatusCount {
    pub event_type: String,
    pub status: String,
    pub count: usize,
}

/// One matching delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliverySample {
    pub id: String,
    pub event_id: String,
    pub kind: String,
    pub recipient: String,
    pub status: DeliveryStatus,
    pub last_error: Option<String>,
}

/// The counts recorded in `replays`.
#[derive(Serialize)]
struct Recorded<'a> {
    matched: usize,
    replayed: u64,
    refused_purged: usize,
    by_type_and_status: &'a [TypeStatusCount],
}

/// `replay deliveries`: lists the matches; with [`Mode::Execute`] replays
/// them and records it, in one transaction.
pub async fn replay_deliveries(
    store: &Store,
    req: &DeliveriesReplay,
    mode: &Mode,
    now: DateTime<Utc>,
    retry_deadline: Duration,
) -> Result<DeliveriesReport, StoreError> {
    let deadline_ms = Deadline::FromNow(retry_deadline).at(now);
    let filter = DeliveryFilter {
        event_id: req.scope.event.clone(),
        status: Some(req.status),
        agb_code: req.scope.agb.as_ref().map(|a| a.as_str().to_owned()),
        event_type: req.scope.event_type.map(|t| t.as_str().to_owned()),
        since_ms: req.scope.since_ms,
        until_ms: req.scope.until_ms,
        limit: None,
    };
    let ((rows, refused_purged), done) = match mode {
        Mode::DryRun => {
            let mut tx = store.begin_read().await?;
            (without_purged(dl::list(&mut tx, &filter).await?), None)
        }
        Mode::Execute(audit) => {
            let (rows, replayed, id) =
                execute(store, req, &filter, audit, now, deadline_ms).await?;
            (rows, Some((replayed, id)))
        }
    };
    Ok(DeliveriesReport {
        command: "replay deliveries",
        executed: done.is_some(),
        filters: req.clone(),
        matched: rows.len(),
        refused_purged,
        replayed: done.map(|(n, _)| n),
        replay_id: done.map(|(_, id)| id),
        counts: type_status_counts(&rows),
        sample: rows.iter().take(SAMPLE).map(sample).collect(),
        deadline_ms,
    })
}

/// The matches whose event is whole, and how many were left out because
/// retention purged their event.
fn without_purged(rows: Vec<DeliveryRow>) -> (Vec<DeliveryRow>, usize) {
    let (purged, rows): (Vec<_>, Vec<_>) = rows.into_iter().partition(|d| d.purged);
    (rows, purged.len())
}

/// Replays the matches and records it; returns the matches (and how many
/// were refused as purged), how many changed, and the audit row's id.
async fn execute(
    store: &Store,
    req: &DeliveriesReplay,
    filter: &DeliveryFilter,
    audit: &Audit,
    now: DateTime<Utc>,
    deadline_ms: i64,
) -> Result<((Vec<DeliveryRow>, usize), u64, i64), StoreError> {
    // Selected inside the write transaction, so the counts recorded are the
    // rows this replay really saw.
    let mut tx = store.begin().await?;
    let (rows, refused_purged) = without_purged(dl::list(&mut tx, filter).await?);
    let ids: Vec<String> = rows.iter().map(|d| d.id.clone()).collect();
    let replayed = dl::replay(&mut tx, &ids, req.status, ms(now), deadline_ms).await?;
    let counts = Recorded {
        matched: rows.len(),
        replayed,
        refused_purged,
        by_type_and_status: &type_status_counts(&rows),
    };
    let id = record(&mut tx, ms(now), audit, "replay deliveries", req, &counts).await?;
    tx.commit().await?;
    Ok(((rows, refused_purged), replayed, id))
}

fn type_status_counts(rows: &[DeliveryRow]) -> Vec<TypeStatusCount> {
    let mut m: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for d in rows {
        *m.entry((&d.event_type, d.status.as_str())).or_default() += 1;
    }
    m.into_iter()
        .map(|((t, s), count)| TypeStatusCount {
            event_type: t.to_owned(),
            status: s.to_owned(),
            count,
        })
        .collect()
}

fn sample(d: &DeliveryRow) -> DeliverySample {
    DeliverySample {
        id: d.id.clone(),
        event_id: d.event_id.clone(),
        kind: d.kind.clone(),
        recipient: d.recipient.to_lowercase(),
        status: d.status,
        last_error: d.last_error.clone(),
    }
}
