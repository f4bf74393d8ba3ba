//! `quarantine redrive`: quarantined messages sent through
//! [`Ingestor::ingest_batch`] again, the same path as the consumer, so a
//! redrive is as idempotent as ingest: a message whose event id is known by
//! now is a duplicate and changes nothing. A message that is still bad keeps
//! its row (with the new reason) and adds no second one.

use super::{Audit, id_text, record, rfc3339};
use crate::domain::event::QuarantineState;
use crate::pipeline::ingest::{Incoming, IngestOutcome, Ingestor};
use crate::store::events::{self as ev, QuarantineRow};
use crate::store::{Store, StoreError, ms};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// Messages ingested in one batch.
const BATCH: usize = 200;

/// Which quarantine rows a redrive takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every open row, oldest first.
    All,
    /// These rows, in this order.
    Ids(Vec<i64>),
}

/// A redrive: the rows, and who asks (recorded; see [`Audit::given`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    pub selection: Selection,
    pub audit: Audit,
}

/// What a redrive did to one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum RedriveOutcome {
    /// Ingest took it (what happened).
    Redriven(String),
    /// Still bad input (the new reason).
    StillInvalid(String),
    /// Not open any more (why).
    Skipped(String),
    /// No such row.
    Missing,
}

/// One row's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedriveResult {
    #[serde(serialize_with = "id_text")]
    pub id: i64,
    pub outcome: RedriveOutcome,
}

/// How many rows ended how; recorded in `replays`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RedriveCounts {
    pub redriven: usize,
    pub still_invalid: usize,
    pub skipped: usize,
    pub unknown_ids: usize,
}

/// What a redrive did.
#[derive(Debug, Clone, Serialize)]
pub struct RedriveReport {
    /// Rows that were not open or do not exist first, then the rest in the
    /// order they were ingested.
    pub results: Vec<RedriveResult>,
    pub counts: RedriveCounts,
    /// The audit row; `None` when no row was ingested again.
    #[serde(serialize_with = "super::opt_id_text")]
    pub replay_id: Option<i64>,
}

/// The filters recorded for a redrive.
#[derive(Serialize)]
#[serde(untagged)]
enum Recorded {
    All { all: bool },
    Ids { ids: Vec<String> },
}

/// Redrives the selected rows. The rows are marked with their outcome, and
/// the redrive recorded, in one transaction after ingest has committed: if
/// that fails, a repeated redrive finds the events known and reports them
/// as duplicates.
pub async fn redrive(
    store: &Store,
    ingestor: &Ingestor,
    req: &Redrive,
    now: DateTime<Utc>,
) -> Result<RedriveReport, StoreError> {
    let (todo, mut results) = select(store, &req.selection).await?;
    let mut decided = Vec::with_capacity(todo.len());
    for chunk in todo.chunks(BATCH) {
        decided.extend(ingest_again(ingestor, chunk).await?);
    }
    results.extend(decided.iter().map(|(id, outcome)| RedriveResult {
        id: *id,
        outcome: outcome.clone(),
    }));
    let counts = count(&results);
    let replay_id = if decided.is_empty() {
        None
    } else {
        Some(mark_and_record(store, &decided, req, &counts, now).await?)
    };
    Ok(RedriveReport {
        results,
        counts,
        replay_id,
    })
}

/// The open rows to ingest again, and the results of the rows that are not.
async fn select(
    store: &Store,
    selection: &Selection,
) -> Result<(Vec<QuarantineRow>, Vec<RedriveResult>), StoreError> {
    let mut tx = store.begin_read().await?;
    let ids = match selection {
        Selection::All => {
            let mut todo = ev::list_quarantine(&mut tx, true, i64::MAX).await?;
            // Oldest first, as they arrived.
            todo.reverse();
            return Ok((todo, Vec::new()));
        }
        Selection::Ids(ids) => ids,
    };
    let mut todo = Vec::new();
    let mut results = Vec::new();
    for &id in ids {
        let outcome = match ev::get_quarantine(&mut tx, id).await? {
            None => RedriveOutcome::Missing,
            Some(q) if q.purged_at.is_some() => RedriveOutcome::Skipped(format!(
                "purged by retention at {}: its body is gone; ask the publisher to send the event again",
                q.purged_at.map(rfc3339).unwrap_or_default()
            )),
            Some(q) if q.state != QuarantineState::Open => RedriveOutcome::Skipped(format!(
                "already redriven{}; nothing to do",
                q.last_redrive_at
                    .map(|t| format!(" at {}", rfc3339(t)))
                    .unwrap_or_default()
            )),
            Some(q) => {
                todo.push(q);
                continue;
            }
        };
        results.push(RedriveResult { id, outcome });
    }
    Ok((todo, results))
}

/// Ingests one batch of rows again: the cut-off ones are refused first,
/// then the others' outcomes in order.
async fn ingest_again(
    ingestor: &Ingestor,
    rows: &[QuarantineRow],
) -> Result<Vec<(i64, RedriveOutcome)>, StoreError> {
    let mut decided = Vec::new();
    let mut batch = Vec::new();
    let mut batch_ids = Vec::new();
    for q in rows {
        if (q.raw.len() as i64) < q.size {
            // Parsing a cut-off body would only report broken JSON.
            let why = format!(
                "cannot redrive: only the first {} of {} bytes were kept (the contract allows 64 KiB); ask the publisher to send the event again",
                q.raw.len(),
                q.size
            );
            decided.push((q.id, RedriveOutcome::StillInvalid(why)));
        } else {
            batch.push(Incoming::redrive(q.raw.clone(), q.routing_key.clone()));
            batch_ids.push(q.id);
        }
    }
    if !batch.is_empty() {
        let outcomes = ingestor.ingest_batch(&batch).await?;
        decided.extend(batch_ids.into_iter().zip(outcomes.into_iter().map(outcome)));
    }
    Ok(decided)
}

/// What ingest's outcome means for the quarantined row.
fn outcome(o: IngestOutcome) -> RedriveOutcome {
    let redriven = |what: String| RedriveOutcome::Redriven(what);
    match o {
        IngestOutcome::Accepted {
            event_id,
            deliveries,
            routing,
            ..
        } => redriven(format!(
            "accepted event {event_id} ({deliveries} deliveries, {})",
            routing.as_str()
        )),
        IngestOutcome::Applied {
            event_id,
            deliveries,
            ..
        } => redriven(format!(
            "applied event {event_id} ({deliveries} deliveries)"
        )),
        IngestOutcome::Duplicate { event_id } => redriven(format!(
            "duplicate: event {event_id} is already known, nothing new"
        )),
        IngestOutcome::Stale { event_id } => redriven(format!(
            "stale directory update {event_id}: recorded, ignored"
        )),
        IngestOutcome::UnknownUser { event_id } => redriven(format!(
            "event {event_id} recorded; its user is unknown to the directory"
        )),
        IngestOutcome::Rejected { reason } | IngestOutcome::Quarantined { reason, .. } => {
            RedriveOutcome::StillInvalid(reason)
        }
    }
}

fn count(results: &[RedriveResult]) -> RedriveCounts {
    let mut c = RedriveCounts::default();
    for r in results {
        match r.outcome {
            RedriveOutcome::Redriven(_) => c.redriven += 1,
            RedriveOutcome::StillInvalid(_) => c.still_invalid += 1,
            RedriveOutcome::Skipped(_) => c.skipped += 1,
            RedriveOutcome::Missing => c.unknown_ids += 1,
        }
    }
    c
}

/// Marks every ingested row (a still invalid one with its new reason) and
/// records the redrive, in one transaction; returns the audit row's id.
async fn mark_and_record(
    store: &Store,
    decided: &[(i64, RedriveOutcome)],
    req: &Redrive,
    counts: &RedriveCounts,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let at = ms(now);
    let filters = match &req.selection {
        Selection::All => Recorded::All { all: true },
        Selection::Ids(ids) => Recorded::Ids {
            ids: ids.iter().map(i64::to_string).collect(),
        },
    };
    let mut tx = store.begin().await?;
    for (id, outcome) in decided {
        let new_reason = match outcome {
            RedriveOutcome::StillInvalid(reason) => Some(reason.as_str()),
            _ => None,
        };
        ev::mark_redrive(&mut tx, *id, new_reason, at).await?;
    }
    let id = record(
        &mut tx,
        at,
        &req.audit,
        "quarantine redrive",
        &filters,
        counts,
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}
