//! Retention: after `retention.keep`, the personal data of finished events
//! (and of old bounces, quarantined messages and directory-log rows) is
//! purged, keeping what the audit trail needs ([`crate::store::retention`]
//! says what is kept). [`purge`] does it for `notifier purge` and for the
//! periodic job of `notifier run` ([`run_periodic`]).
//!
//! A purge works in batches of [`BATCH`] rows, one short transaction each,
//! so a first purge of a large database never holds the write lock for
//! long. It is recorded in the `replays` audit table (command `purge`,
//! shown by `replay history`): the row is written with the first batch and
//! brought up to date with each next one, so it is right even if the purge
//! stops half-way. Afterwards the database files are settled
//! ([`retention::settle_files`]): what was purged is then gone from the
//! SQLite file and its WAL, not only from query results.

use crate::pipeline::recovery::{Audit, Mode, rfc3339};
use crate::store::replays::{self, NewReplay};
use crate::store::retention::{self, FilesReport, PurgeCounts};
use crate::store::{Store, StoreError, Tx, ms};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Events (or bounces, quarantine rows, directory-log rows) per transaction.
pub const BATCH: i64 = 200;

/// What a purge is asked for; recorded as its filters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurgeFilters {
    /// The age as given (`90d`).
    pub older_than: String,
    /// Received (or, for directory-log rows, written) before this time.
    #[serde(serialize_with = "time")]
    pub cutoff: i64,
}

/// How a purge runs besides its [`Mode`].
#[derive(Debug, Clone, Default)]
pub struct PurgeOptions {
    /// Record an executed purge that changed nothing (the command line
    /// does; the periodic job records only purges that changed rows).
    pub record_empty: bool,
    /// Rewrite the database files afterwards (SQLite `VACUUM`,
    /// PostgreSQL `VACUUM FULL`).
    pub rewrite_files: bool,
    /// Stops between batches when cancelled (`run` shutting down).
    pub stop: Option<CancellationToken>,
}

/// What a purge found and did.
#[derive(Debug, Clone, Serialize)]
pub struct PurgeReport {
    pub command: &'static str,
    pub executed: bool,
    pub filters: PurgeFilters,
    /// The audit row (`replay history`); `None` in a dry run, or when the
    /// periodic job found nothing.
    #[serde(serialize_with = "opt_id")]
    pub replay_id: Option<i64>,
    /// Rows purged (executed) or that would be (dry run).
    pub counts: PurgeCounts,
    /// Events older than the cut-off that are kept whole: a delivery is
    /// not final, or something happened to it since the cut-off.
    pub held_back: u64,
    /// What was done to the database files (executed, and rows purged).
    pub files: Option<FilesReport>,
    /// Stopped before the end (shutdown); the rest is purged next time.
    pub interrupted: bool,
}

/// The counts recorded in the audit row.
#[derive(Serialize)]
struct Recorded<'a> {
    #[serde(flatten)]
    counts: &'a PurgeCounts,
    held_back: Option<u64>,
}

/// Purges what is older than `older_than` (dry run: counts it). `label` is
/// the age as the caller wrote it, for the record.
pub async fn purge(
    store: &Store,
    older_than: Duration,
    label: &str,
    mode: &Mode,
    opts: &PurgeOptions,
    now: DateTime<Utc>,
) -> Result<PurgeReport, StoreError> {
    let older_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
    let cutoff = ms(now).saturating_sub(older_ms);
    let filters = PurgeFilters {
        older_than: label.to_owned(),
        cutoff,
    };
    let audit = match mode {
        Mode::DryRun => {
            let mut tx = store.begin_read().await?;
            let counts = retention::preview(&mut tx, cutoff).await?;
            let held_back = retention::held_back(&mut tx, cutoff).await?;
            tx.rollback().await?;
            return Ok(PurgeReport {
                command: "purge",
                executed: false,
                filters,
                replay_id: None,
                counts,
                held_back,
                files: None,
                interrupted: false,
            });
        }
        Mode::Execute(audit) => audit,
    };
    let mut run = Run {
        store,
        audit,
        filters: &filters,
        now_ms: ms(now),
        counts: PurgeCounts::default(),
        replay_id: None,
    };
    let mut interrupted = false;
    'phases: for phase in Phase::ALL {
        loop {
            if opts.stop.as_ref().is_some_and(|s| s.is_cancelled()) {
                interrupted = true;
                break 'phases;
            }
            if !run.batch(phase, cutoff).await? {
                break;
            }
        }
    }
    let mut tx = store.begin().await?;
    let held_back = retention::held_back(&mut tx, cutoff).await?;
    if run.replay_id.is_some() || opts.record_empty {
        run.record(&mut tx, Some(held_back)).await?;
    }
    tx.commit().await?;
    let (replay_id, counts) = (run.replay_id, run.counts);
    let files = if counts.total() > 0 || opts.rewrite_files {
        Some(retention::settle_files(store, opts.rewrite_files).await?)
    } else {
        None
    };
    Ok(PurgeReport {
        command: "purge",
        executed: true,
        filters,
        replay_id,
        counts,
        held_back,
        files,
        interrupted,
    })
}

/// The kinds of rows a purge goes through, in order.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Events,
    Bounces,
    Quarantine,
    DirectoryLog,
}

impl Phase {
    const ALL: [Phase; 4] = [
        Phase::Events,
        Phase::Bounces,
        Phase::Quarantine,
        Phase::DirectoryLog,
    ];
}

/// An executed purge under way.
struct Run<'a> {
    store: &'a Store,
    audit: &'a Audit,
    filters: &'a PurgeFilters,
    now_ms: i64,
    counts: PurgeCounts,
    replay_id: Option<i64>,
}

impl Run<'_> {
    /// Purges one batch of `phase` in a transaction of its own, with the
    /// audit row; `false` when there was nothing (left) to purge.
    async fn batch(&mut self, phase: Phase, cutoff: i64) -> Result<bool, StoreError> {
        let mut tx = self.store.begin().await?;
        let mut c = PurgeCounts::default();
        match phase {
            Phase::Events => {
                let ids = retention::purgeable_events(&mut tx, cutoff, BATCH).await?;
                c = retention::purge_events(&mut tx, &ids, self.now_ms).await?;
            }
            Phase::Bounces => {
                c.bounces = retention::purge_bounces(&mut tx, cutoff, self.now_ms, BATCH).await?;
            }
            Phase::Quarantine => {
                c.quarantine =
                    retention::purge_quarantine(&mut tx, cutoff, self.now_ms, BATCH).await?;
            }
            Phase::DirectoryLog => {
                c.directory_log = retention::clear_directory_log(&mut tx, cutoff, BATCH).await?;
            }
        }
        if c.total() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        self.counts += c;
        self.record(&mut tx, None).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Writes the audit row, or brings it up to date, inside `tx`.
    async fn record(&mut self, tx: &mut Tx, held_back: Option<u64>) -> Result<(), StoreError> {
        let counts = serde_json::to_value(Recorded {
            counts: &self.counts,
            held_back,
        })
        .expect("counts are plain data");
        match self.replay_id {
            Some(id) => replays::update_counts(tx, id, &counts).await,
            None => {
                let filters = serde_json::to_value(self.filters).expect("filters are plain data");
                self.replay_id = Some(
                    replays::insert(
                        tx,
                        &NewReplay {
                            at_ms: self.now_ms,
                            operator: &self.audit.operator,
                            reason: &self.audit.reason,
                            command: "purge",
                            filters: &filters,
                            counts: &counts,
                        },
                    )
                    .await?,
                );
                Ok(())
            }
        }
    }
}

/// The periodic purge of `notifier run`: every `interval` (the first right
/// at start), what is older than `keep` (written `keep_label`), recorded
/// by operator `notifier run` when it changed something. A failed purge is
/// logged and tried again at the next interval.
pub async fn run_periodic(
    store: Store,
    keep: Duration,
    keep_label: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mode = Mode::Execute(Audit {
        operator: "notifier run".into(),
        reason: format!("retention.keep = {keep_label}"),
    });
    let opts = PurgeOptions {
        stop: Some(shutdown.clone()),
        ..Default::default()
    };
    loop {
        match purge(&store, keep, &keep_label, &mode, &opts, Utc::now()).await {
            Ok(r) if r.counts.total() > 0 => {
                let c = r.counts;
                info!(
                    events = c.events,
                    deliveries = c.deliveries,
                    bounces = c.bounces,
                    quarantine = c.quarantine,
                    directory_log = c.directory_log,
                    held_back = r.held_back,
                    files_settled = r.files.as_ref().is_some_and(|f| f.complete),
                    "retention: personal data older than retention.keep purged"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(
                error = %e,
                "retention purge failed; it runs again after retention.interval"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => break,
        }
    }
}

fn time<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ms))
}

fn opt_id<S: serde::Serializer>(id: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    id.map(|i| i.to_string()).serialize(s)
}
