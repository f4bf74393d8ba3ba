//! `replay events`: stored module events (accepted or unroutable) resolved
//! again against the current directory; the planner adds the deliveries
//! that do not exist yet, due now with a deadline of now plus
//! `retry.deadline` (the event's own deadline may have passed while the
//! directory was wrong).

use super::{Audit, Mode, SAMPLE, Scope, opt_id_text, record, rfc3339};
use crate::domain::event::EventState;
use crate::domain::event::{EventBody, ModuleEvent, ValidationRules, parse_event};
use crate::domain::recipients::{self, Resolution};
use crate::pipeline::plan::{self, Deadline, PlanReport, Timing};
use crate::store::events::{self as ev, EventFilter, EventRow};
use crate::store::{Store, StoreError, directory as dir, ms};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AnyConnection;
use std::collections::BTreeMap;
use std::time::Duration;

/// The filters `replay events` records and reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventsFilters {
    #[serde(flatten)]
    pub scope: Scope,
    /// Whose directory: always the current one (it is not versioned).
    pub resolve: &'static str,
}

/// What a `replay events` found and did (or, dry, would do).
#[derive(Debug, Clone, Serialize)]
pub struct EventsReport {
    pub command: &'static str,
    pub executed: bool,
    pub filters: EventsFilters,
    #[serde(serialize_with = "opt_id_text")]
    pub replay_id: Option<i64>,
    pub counts: EventsCounts,
    /// The first [`SAMPLE`] additions.
    pub sample: Vec<Addition>,
    /// Stored events that no longer pass validation.
    pub invalid: Vec<Invalid>,
}

/// The counts of a `replay events`, also recorded in `replays`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventsCounts {
    /// Module events resolved again.
    pub events: usize,
    /// Events that get at least one delivery.
    pub events_with_additions: usize,
    pub added: usize,
    /// Planned deliveries whose (event, kind, address) row exists already.
    pub skipped_existing: usize,
    /// Planned deliveries whose address was sent (or is being sent) this mail.
    pub skipped_already_sent: usize,
    pub invalid: usize,
    /// Events purged by retention: their recipients and data are gone, so
    /// they are not resolved again.
    pub refused_purged: usize,
    /// Unroutable events that now have deliveries.
    pub rerouted_unroutable: usize,
    pub by_type_and_kind: Vec<TypeKindCount>,
}

/// Additions of one event type and mail kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypeKindCount {
    pub event_type: String,
    pub kind: String,
    pub count: usize,
}

/// One delivery a replay adds (or would add).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Addition {
    pub event_id: String,
    pub event_type: String,
    pub kind: String,
    pub recipient: String,
    pub rule: String,
}

/// A stored event that no longer passes validation, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invalid {
    pub event_id: String,
    pub reason: String,
}

/// `replay events` against the current directory: reports the deliveries
/// missing; with [`Mode::Execute`] adds them and records it, in one
/// transaction.
pub async fn replay_events(
    store: &Store,
    scope: &Scope,
    rules: &ValidationRules,
    mode: &Mode,
    now: DateTime<Utc>,
    retry_deadline: Duration,
) -> Result<EventsReport, StoreError> {
    let filter = EventFilter {
        event_id: scope.event.clone(),
        event_type: scope.event_type.map(|t| t.as_str().to_owned()),
        agb_code: scope.agb.as_ref().map(|a| a.as_str().to_owned()),
        since_ms: scope.since_ms,
        until_ms: scope.until_ms,
        states: vec![EventState::Accepted, EventState::Unroutable],
        ..Default::default()
    };
    let filters = EventsFilters {
        scope: scope.clone(),
        resolve: "current",
    };
    let again = Again {
        rules,
        timing: Timing::due_now(now, Deadline::FromNow(retry_deadline)),
        now,
    };
    let (tally, replay_id) = match mode {
        Mode::DryRun => {
            let mut tx = store.begin_read().await?;
            let rows = ev::list_events(&mut tx, &filter).await?;
            (again.resolve(&mut tx, &rows, false).await?, None)
        }
        Mode::Execute(audit) => {
            let (tally, id) = again.execute(store, &filter, &filters, audit).await?;
            (tally, Some(id))
        }
    };
    Ok(tally.report(filters, replay_id))
}

/// One pass of resolving events again.
struct Again<'a> {
    rules: &'a ValidationRules,
    timing: Timing,
    now: DateTime<Utc>,
}

impl Again<'_> {
    /// Adds the missing deliveries and records it, in one transaction: the
    /// existence checks and the inserts see the same queue, and the audit
    /// row commits with them.
    async fn execute(
        &self,
        store: &Store,
        filter: &EventFilter,
        filters: &EventsFilters,
        audit: &Audit,
    ) -> Result<(Tally, i64), StoreError> {
        let mut tx = store.begin().await?;
        let rows = ev::list_events(&mut tx, filter).await?;
        let tally = self.resolve(&mut tx, &rows, true).await?;
        let at = ms(self.now);
        let counts = tally.counts();
        let id = record(&mut tx, at, audit, "replay events", filters, &counts).await?;
        tx.commit().await?;
        Ok((tally, id))
    }

    /// Resolves `events` against the current directory; inserts the new
    /// deliveries when `insert` (inside the caller's transaction), else only
    /// counts them.
    async fn resolve(
        &self,
        conn: &mut AnyConnection,
        events: &[EventRow],
        insert: bool,
    ) -> Result<Tally, StoreError> {
        let mut tally = Tally::default();
        for e in events {
            if e.purged_at.is_some() {
                tally.refused_purged += 1;
                continue;
            }
            let m = match module_of(e, self.rules) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(reason) => {
                    tally.invalid.push(Invalid {
                        event_id: e.id.clone(),
                        reason,
                    });
                    continue;
                }
            };
            tally.events += 1;
            let res = resolve_current(conn, &m, &e.id).await?;
            let report = plan::plan_resolution(conn, &e.id, &res, self.timing, insert).await?;
            let added = tally.add(e, report);
            if insert && added > 0 {
                self.note(conn, e, added).await?;
            }
        }
        Ok(tally)
    }

    /// `events show` tells the story: what the event was, and that a
    /// replay added mail to it.
    async fn note(
        &self,
        conn: &mut AnyConnection,
        e: &EventRow,
        added: usize,
    ) -> Result<(), StoreError> {
        let note = format!(
            "{added} deliveries added at {} by `notifier replay events` (current directory)",
            rfc3339(ms(self.now))
        );
        let detail = match &e.detail {
            Some(d) if e.state == EventState::Unroutable => format!("{note}; was unroutable: {d}"),
            Some(d) => format!("{d}; {note}"),
            None => note,
        };
        ev::set_event_state(conn, &e.id, EventState::Accepted, Some(&detail)).await
    }
}

/// The stored event as a module event, validated again with today's rules
/// (e.g. `mail.allowed_link_hosts`): dispatch renders with them too, so an
/// event that fails here would only produce failed deliveries. `None` for a
/// directory event; the reason when it is no longer valid.
fn module_of(e: &EventRow, rules: &ValidationRules) -> Result<Option<ModuleEvent>, String> {
    let parsed = parse_event(e.payload.as_bytes(), rules)
        .map_err(|rej| format!("stored event no longer valid: {}", rej.reason))?;
    Ok(match parsed.body {
        EventBody::Module(m) => Some(m),
        _ => None,
    })
}

/// Who gets the event's mail according to the directory as it is now.
async fn resolve_current(
    conn: &mut AnyConnection,
    m: &ModuleEvent,
    event_id: &str,
) -> Result<Resolution, StoreError> {
    let snapshot = dir::agb_snapshot(conn, &m.agb_code).await?;
    let actor = match &m.actor {
        Some(a) => dir::get_user(conn, a).await?,
        None => None,
    };
    Ok(recipients::resolve_module(
        m,
        event_id,
        &snapshot,
        actor.as_ref(),
    ))
}

/// What resolving again found, over all events.
#[derive(Default)]
struct Tally {
    events: usize,
    events_with_additions: usize,
    added: Vec<Addition>,
    existing: usize,
    already_served: usize,
    invalid: Vec<Invalid>,
    rerouted: usize,
    refused_purged: usize,
}

impl Tally {
    /// Counts what planning event `e` did; returns how many deliveries it added.
    fn add(&mut self, e: &EventRow, report: PlanReport<'_>) -> usize {
        self.existing += report.existing;
        self.already_served += report.already_served + report.joined;
        let n = report.added.len();
        self.added
            .extend(report.added.into_iter().map(|p| Addition {
                event_id: e.id.clone(),
                event_type: e.event_type.clone(),
                kind: p.kind.as_str().to_owned(),
                recipient: p.address.as_str().to_lowercase(),
                rule: p.rule_label(),
            }));
        if n > 0 {
            self.events_with_additions += 1;
            if e.state == EventState::Unroutable {
                self.rerouted += 1;
            }
        }
        n
    }

    fn counts(&self) -> EventsCounts {
        let mut m: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for a in &self.added {
            *m.entry((&a.event_type, &a.kind)).or_default() += 1;
        }
        EventsCounts {
            events: self.events,
            events_with_additions: self.events_with_additions,
            added: self.added.len(),
            skipped_existing: self.existing,
            skipped_already_sent: self.already_served,
            invalid: self.invalid.len(),
            refused_purged: self.refused_purged,
            rerouted_unroutable: self.rerouted,
            by_type_and_kind: m
                .into_iter()
                .map(|((t, k), count)| TypeKindCount {
                    event_type: t.to_owned(),
                    kind: k.to_owned(),
                    count,
                })
                .collect(),
        }
    }

    fn report(self, filters: EventsFilters, replay_id: Option<i64>) -> EventsReport {
        let counts = self.counts();
        let mut sample = self.added;
        sample.truncate(SAMPLE);
        EventsReport {
            command: "replay events",
            executed: replay_id.is_some(),
            filters,
            replay_id,
            counts,
            sample,
            invalid: self.invalid,
        }
    }
}
