//! Recovery: the operations that make the notifier try again after an
//! incident, whoever asks for them (today the command line):
//! [`replay_deliveries`] gives existing deliveries a new attempt cycle,
//! [`replay_events`] resolves stored module events again against the
//! current directory and adds, through the planner, the deliveries that are
//! missing, [`redrive`] sends quarantined messages through ingest again, and
//! [`import_users`] loads the directory from `gebruiker.bijgewerkt` data
//! objects.
//!
//! A replay is a dry run unless it is given an [`Audit`] ([`Mode`]): then
//! its change and its row in the `replays` audit table commit in one
//! transaction, so a replay is either recorded and done, or neither. A
//! redrive is recorded in the same table, in the transaction that marks the
//! quarantine rows it took.
//!
//! Nothing here sends mail: deliveries go into the queue, and dispatch sends
//! them with the usual send-time re-check, which is what keeps a replay from
//! mailing an address twice. Every operation returns a report that derives
//! `Serialize`; the caller prints it.

mod deliveries;
mod directory;
mod events;
mod redrive;

pub use deliveries::{
    DeliveriesReplay, DeliveriesReport, DeliverySample, TypeStatusCount, replay_deliveries,
};
pub use directory::{ImportCounts, import_users, numbered_lines};
pub use events::{
    Addition, EventsCounts, EventsFilters, EventsReport, Invalid, TypeKindCount, replay_events,
};
pub use redrive::{
    Redrive, RedriveCounts, RedriveOutcome, RedriveReport, RedriveResult, Selection, redrive,
};

use crate::domain::event::EventType;
use crate::domain::ids::AgbCode;
use crate::store::replays::{self, NewReplay};
use crate::store::{Store, StoreError, Tx};
use serde::{Serialize, Serializer};
use serde_json::Value;

/// How many deliveries (or additions) a replay report carries as its sample.
pub const SAMPLE: usize = 10;

/// Who executes a recovery, and why: recorded in `replays`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub operator: String,
    pub reason: String,
}

impl Audit {
    /// What is recorded when `operator` or `reason` may be missing (a
    /// redrive does not require them): an empty or absent one is recorded
    /// as `(not given)`.
    pub fn given(operator: Option<&str>, reason: Option<&str>) -> Self {
        let given = |v: Option<&str>| {
            v.map(str::trim)
                .filter(|s| !s.is_empty())
                .unwrap_or("(not given)")
                .to_owned()
        };
        Self {
            operator: given(operator),
            reason: given(reason),
        }
    }
}

/// Whether a replay changes anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Report what would happen; change nothing.
    DryRun,
    /// Change it, and record who did and why.
    Execute(Audit),
}

/// Which stored events (and their deliveries) a replay looks at; recorded
/// and reported with its times as RFC 3339.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Scope {
    /// Received at or after (epoch milliseconds).
    #[serde(rename = "since", serialize_with = "opt_time")]
    pub since_ms: Option<i64>,
    /// Received before (epoch milliseconds).
    #[serde(rename = "until", serialize_with = "opt_time")]
    pub until_ms: Option<i64>,
    #[serde(rename = "type", serialize_with = "opt_event_type")]
    pub event_type: Option<EventType>,
    pub agb: Option<AgbCode>,
    /// One event id.
    pub event: Option<String>,
}

/// One executed replay or redrive, as `replay history` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    #[serde(serialize_with = "id_text")]
    pub id: i64,
    #[serde(serialize_with = "time")]
    pub at: i64,
    pub operator: String,
    pub reason: String,
    pub command: String,
    /// The filters as recorded (JSON, or the stored text if it is not).
    pub filters: Value,
    pub counts: Value,
    /// The filters as stored, for a one-line view.
    #[serde(skip)]
    pub filters_text: String,
    #[serde(skip)]
    pub counts_text: String,
}

/// Every executed replay and redrive, newest first.
pub async fn history(store: &Store) -> Result<Vec<HistoryEntry>, StoreError> {
    let mut tx = store.begin_read().await?;
    let rows = replays::list(&mut tx, i64::MAX).await?;
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or_else(|_| Value::from(s));
    Ok(rows
        .into_iter()
        .map(|r| HistoryEntry {
            id: r.id,
            at: r.at,
            filters: parse(&r.filters),
            counts: parse(&r.counts),
            operator: r.operator,
            reason: r.reason,
            command: r.command,
            filters_text: r.filters,
            counts_text: r.counts,
        })
        .collect())
}

/// RFC 3339 UTC of epoch milliseconds, to the second: how recovery records
/// times and the command line prints them.
pub fn rfc3339(ms: i64) -> String {
    crate::store::from_ms(ms).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A report as a JSON value (its keys sorted, as the audit table has always
/// had them).
fn to_json(report: &impl Serialize) -> Value {
    serde_json::to_value(report).expect("recovery reports are plain data")
}

/// Records a replay or redrive inside `tx`, the transaction of its change;
/// returns its id.
async fn record(
    tx: &mut Tx,
    at_ms: i64,
    audit: &Audit,
    command: &str,
    filters: &impl Serialize,
    counts: &impl Serialize,
) -> Result<i64, StoreError> {
    replays::insert(
        tx,
        &NewReplay {
            at_ms,
            operator: &audit.operator,
            reason: &audit.reason,
            command,
            filters: &to_json(filters),
            counts: &to_json(counts),
        },
    )
    .await
}

fn time<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ms))
}

fn opt_time<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    ms.map(rfc3339).serialize(s)
}

fn opt_event_type<S: Serializer>(t: &Option<EventType>, s: S) -> Result<S::Ok, S::Error> {
    t.map(EventType::as_str).serialize(s)
}

/// Audit row ids are numbers in the database and text in reports.
fn id_text<S: Serializer>(id: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

fn opt_id_text<S: Serializer>(id: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    id.map(|i| i.to_string()).serialize(s)
}
