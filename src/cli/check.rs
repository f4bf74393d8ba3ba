//! `check` (reconciliation) and `stats` (the first look in an incident):
//! read-only questions to the database about whether mail is flowing.
//!
//! `check` asks the same question as the `notifier_stuck_events` gauge of
//! `notifier run` (`store::deliveries::stuck_events`), so the alert and the
//! command that explains it cannot disagree.

use super::{CliError, Format, parse_time, print_json, read_conn, rfc3339};
use crate::app;
use crate::config::{HumanDuration, Settings};
use crate::domain::delivery::{AttemptOutcome, DeliveryStatus};
use crate::domain::dsn::BounceOutcome;
use crate::store::{deliveries as dl, directory as dir, events as ev, ms};
use chrono::Utc;
use serde::Serialize;
use std::collections::BTreeMap;

/// A duration in milliseconds as people read it: `3d 4h`, `2h 13m`, `45s`.
fn human(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let parts = [
        (s / 86_400, "d"),
        (s % 86_400 / 3600, "h"),
        (s % 3600 / 60, "m"),
        (s % 60, "s"),
    ];
    // The two largest units from the first non-zero one, zeros left out.
    let first = parts.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    parts[first..(first + 2).min(4)]
        .iter()
        .filter(|(n, _)| *n > 0 || first == 3)
        .map(|(n, u)| format!("{n}{u}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What `notifier check` found; its JSON is the `--format json` output.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub checked_at: String,
    pub ok: bool,
    pub older_than_seconds: i64,
    pub stuck: Vec<StuckLine>,
    #[serde(skip)]
    threshold_ms: i64,
}

/// One stuck event, and what is wrong with it in words.
#[derive(Debug, Serialize)]
pub struct StuckLine {
    pub agb_code: Option<String>,
    pub event_id: String,
    pub event_type: String,
    pub overdue_deliveries: i64,
    pub overdue_since: Option<String>,
    pub problem: String,
    pub received_at: String,
    pub state: crate::domain::event::EventState,
}

impl CheckReport {
    fn new(stuck: &[dl::StuckEvent], now: i64, threshold_ms: i64) -> Self {
        let problem = |s: &dl::StuckEvent| match s.overdue_since {
            _ if s.overdue == 0 => "accepted, but has no deliveries".to_owned(),
            Some(t) => format!(
                "{} deliveries overdue, the oldest by {}",
                s.overdue,
                human(now - t)
            ),
            None => format!("{} deliveries overdue", s.overdue),
        };
        Self {
            checked_at: rfc3339(now),
            ok: stuck.is_empty(),
            older_than_seconds: threshold_ms / 1000,
            stuck: stuck
                .iter()
                .map(|s| StuckLine {
                    agb_code: s.agb_code.clone(),
                    event_id: s.event_id.clone(),
                    event_type: s.event_type.clone(),
                    overdue_deliveries: s.overdue,
                    overdue_since: s.overdue_since.map(rfc3339),
                    problem: problem(s),
                    received_at: rfc3339(s.received_at),
                    state: s.state,
                })
                .collect(),
            threshold_ms,
        }
    }

    fn print_table(&self) {
        if self.stuck.is_empty() {
            println!(
                "ok: every event's deliveries are final or due within {}",
                human(self.threshold_ms)
            );
            return;
        }
        println!(
            "{:<36}  {:<40}  {:<8}  {:<20}  PROBLEM",
            "EVENT", "TYPE", "AGB", "RECEIVED"
        );
        for s in &self.stuck {
            println!(
                "{:<36}  {:<40}  {:<8}  {:<20}  {}",
                s.event_id,
                s.event_type,
                s.agb_code.as_deref().unwrap_or("-"),
                s.received_at,
                s.problem
            );
        }
    }
}

/// `notifier check`.
pub async fn check(
    settings: Settings,
    older_than: Option<String>,
    format: Format,
) -> Result<(), CliError> {
    let threshold = match &older_than {
        Some(s) => {
            HumanDuration::parse(s)
                .map_err(|e| CliError::Usage(format!("--older-than: {e}")))?
                .0
        }
        None => settings.dispatch.stuck_after.0,
    };
    let threshold_ms = threshold.as_millis() as i64;
    let now = ms(Utc::now());
    let store = app::open_store(&settings, false).await?;
    let mut c = read_conn(&store).await?;
    let stuck = dl::stuck_events(&mut c, now, threshold_ms).await?;
    drop(c);
    store.close().await;

    let report = CheckReport::new(&stuck, now, threshold_ms);
    match format {
        Format::Json => print_json(&report),
        Format::Table => report.print_table(),
    }
    if report.ok {
        return Ok(());
    }
    Err(CliError::Problem(format!(
        "{} events stuck for more than {}: is a dispatcher running (`notifier run`), and is the relay circuit closed (/readyz, `notifier stats`)? Details: `notifier events show ID`",
        report.stuck.len(),
        human(threshold_ms)
    )))
}

/// Every attempt outcome, in the order `stats` lists them.
fn outcomes() -> Vec<&'static str> {
    AttemptOutcome::ALL.iter().map(|o| o.as_str()).collect()
}

const SKIPS: [&str; 2] = ["stale", "unknown_user"];
const CIRCUIT_NOTE: &str = "the live relay circuit state is on /readyz of `notifier run` (relay_circuit, relay_reason) and in notifier_smtp_circuit_open";

/// What `notifier stats` found; its JSON is the `--format json` output.
#[derive(Debug, Serialize)]
pub struct StatsReport {
    /// Attempts in the window per outcome.
    pub attempts: BTreeMap<String, i64>,
    /// Messages read back from the bounce mailbox in the window, per outcome.
    pub bounces: BTreeMap<String, i64>,
    /// Deliveries created in the window, per kind and status.
    pub deliveries: Vec<KindStatusCount>,
    /// Directory updates skipped in the window, per reason.
    pub directory_skipped: BTreeMap<String, i64>,
    pub now: String,
    pub pending: PendingNow,
    pub quarantine_open: i64,
    pub relay: RelayLine,
    pub since: String,
    pub unroutable_events: i64,
    #[serde(skip)]
    now_ms: i64,
    #[serde(skip)]
    since_ms: i64,
    #[serde(skip)]
    oldest_ms: Option<i64>,
    #[serde(skip)]
    last_attempt_ms: Option<i64>,
    #[serde(skip)]
    last_sent_ms: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct KindStatusCount {
    pub count: i64,
    pub kind: String,
    pub status: String,
}

/// Deliveries not final now (pending or sending).
#[derive(Debug, Serialize)]
pub struct PendingNow {
    pub count: i64,
    pub oldest_age_seconds: Option<i64>,
    pub oldest_created_at: Option<String>,
}

/// The relay as the attempts table last saw it.
#[derive(Debug, Serialize)]
pub struct RelayLine {
    pub last_attempt_at: Option<String>,
    pub last_detail: Option<String>,
    pub last_outcome: Option<String>,
    pub last_sent_at: Option<String>,
    pub last_smtp_code: Option<i64>,
    pub note: &'static str,
}

/// `notifier stats`.
pub async fn stats(settings: Settings, since: &str, format: Format) -> Result<(), CliError> {
    let now_t = Utc::now();
    let now = ms(now_t);
    let since_ms = parse_time("--since", since, now_t)?;
    let store = app::open_store(&settings, false).await?;
    let mut c = read_conn(&store).await?;
    let by_kind = dl::counts_by_kind_and_status(&mut c, since_ms).await?;
    let (pending, oldest) = dl::pending_summary(&mut c).await?;
    let attempts = dl::attempt_outcomes(&mut c, since_ms).await?;
    let quarantine_open = ev::open_quarantine_count(&mut c).await?;
    let unroutable_events = ev::unroutable_count(&mut c, since_ms).await?;
    let skipped = dir::skipped_counts(&mut c, since_ms).await?;
    let relay = dl::relay_seen(&mut c).await?;
    let bounces = crate::store::bounces::outcomes_since(&mut c, since_ms).await?;
    drop(c);
    store.close().await;

    let counted = |names: &[&str], found: &[(String, i64)]| -> BTreeMap<String, i64> {
        names
            .iter()
            .map(|n| {
                let count = found.iter().find(|(o, _)| o == n).map_or(0, |(_, c)| *c);
                ((*n).to_owned(), count)
            })
            .collect()
    };
    let last = relay.last_attempt.as_ref();
    let report = StatsReport {
        attempts: counted(&outcomes(), &attempts),
        bounces: counted(&BounceOutcome::ALL.map(|o| o.as_str()), &bounces),
        deliveries: by_kind
            .into_iter()
            .map(|(kind, status, count)| KindStatusCount {
                count,
                kind,
                status,
            })
            .collect(),
        directory_skipped: counted(&SKIPS, &skipped),
        now: rfc3339(now),
        pending: PendingNow {
            count: pending,
            oldest_age_seconds: oldest.map(|o| (now - o).max(0) / 1000),
            oldest_created_at: oldest.map(rfc3339),
        },
        quarantine_open,
        relay: RelayLine {
            last_attempt_at: last.map(|a| rfc3339(a.0)),
            last_detail: last.and_then(|a| a.3.clone()),
            last_outcome: last.map(|a| a.1.clone()),
            last_sent_at: relay.last_sent_at.map(rfc3339),
            last_smtp_code: last.and_then(|a| a.2),
            note: CIRCUIT_NOTE,
        },
        since: rfc3339(since_ms),
        unroutable_events,
        now_ms: now,
        since_ms,
        oldest_ms: oldest,
        last_attempt_ms: last.map(|a| a.0),
        last_sent_ms: relay.last_sent_at,
    };
    match format {
        Format::Json => print_json(&report),
        Format::Table => report.print_table(),
    }
    Ok(())
}

impl StatsReport {
    fn print_table(&self) {
        let now = self.now_ms;
        println!(
            "window {} .. {} ({})",
            self.since,
            self.now,
            human(now - self.since_ms)
        );
        println!();
        println!("deliveries created in the window:");
        self.print_pivot();
        println!();
        match self.oldest_ms {
            Some(o) => println!(
                "not yet final now (pending or sending): {}, the oldest created {} ago ({})",
                self.pending.count,
                human(now - o),
                rfc3339(o)
            ),
            None => println!("not yet final now (pending or sending): 0"),
        }
        let listed = |names: &[&str], counts: &BTreeMap<String, i64>| {
            names
                .iter()
                .map(|n| format!("{n} {}", counts.get(*n).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "attempts in the window: {}",
            listed(&outcomes(), &self.attempts)
        );
        println!(
            "bounces read in the window: {}",
            listed(&BounceOutcome::ALL.map(|o| o.as_str()), &self.bounces)
        );
        println!("quarantine: {} open", self.quarantine_open);
        println!(
            "unroutable events in the window: {}",
            self.unroutable_events
        );
        println!(
            "directory updates skipped in the window: {}",
            listed(&SKIPS, &self.directory_skipped)
        );
        self.print_relay();
    }

    /// Deliveries per kind (rows) and status (columns).
    fn print_pivot(&self) {
        let statuses = DeliveryStatus::ALL.map(|s| s.as_str());
        let mut pivot: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
        for d in &self.deliveries {
            *pivot
                .entry(&d.kind)
                .or_default()
                .entry(&d.status)
                .or_default() += d.count;
        }
        print!("  {:<40}", "KIND");
        for s in statuses {
            print!("  {:>9}", s.to_uppercase());
        }
        println!();
        for (k, m) in &pivot {
            print!("  {k:<40}");
            for s in statuses {
                print!("  {:>9}", m.get(s).copied().unwrap_or(0));
            }
            println!();
        }
        if pivot.is_empty() {
            println!("  (none)");
        }
    }

    fn print_relay(&self) {
        let now = self.now_ms;
        let r = &self.relay;
        match (self.last_attempt_ms, &r.last_outcome) {
            (Some(at), Some(outcome)) => println!(
                "relay, as the database last saw it: last attempt {} ago ({}): {outcome}{}{}",
                human(now - at),
                rfc3339(at),
                r.last_smtp_code
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default(),
                r.last_detail
                    .as_deref()
                    .filter(|d| !d.is_empty())
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
            _ => println!("relay, as the database last saw it: no attempt recorded yet"),
        }
        match self.last_sent_ms {
            Some(t) => println!(
                "  last mail accepted by the relay {} ago ({})",
                human(now - t),
                rfc3339(t)
            ),
            None => println!("  no mail accepted by the relay yet"),
        }
        println!("  {CIRCUIT_NOTE}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(super::human(0), "0s");
        assert_eq!(super::human(45_000), "45s");
        assert_eq!(super::human(3_600_000), "1h");
        assert_eq!(super::human(3_600_000 + 13 * 60_000 + 5_000), "1h 13m");
        assert_eq!(super::human(86_400_000 + 4 * 3_600_000), "1d 4h");
    }
}
