//! `check` (reconciliation) and `stats` (the first look in an incident):
//! read-only questions to the database about whether mail is flowing.
//!
//! `check` asks the same question as the `notifier_stuck_events` gauge of
//! `notifier run` (`store::deliveries::stuck_events`), so the alert and the
//! command that explains it cannot disagree.

use super::{CliError, Format, parse_time, read_conn, rfc3339};
use crate::app;
use crate::config::{HumanDuration, Settings};
use crate::domain::delivery::DeliveryStatus;
use crate::store::{deliveries as dl, directory as dir, events as ev, ms};
use chrono::Utc;
use serde_json::json;
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

    let problem = |s: &dl::StuckEvent| match s.overdue_since {
        _ if s.overdue == 0 => "accepted, but has no deliveries".to_owned(),
        Some(t) => format!(
            "{} deliveries overdue, the oldest by {}",
            s.overdue,
            human(now - t)
        ),
        None => format!("{} deliveries overdue", s.overdue),
    };
    match format {
        Format::Json => {
            let v = json!({
                "checked_at": rfc3339(now),
                "older_than_seconds": threshold_ms / 1000,
                "ok": stuck.is_empty(),
                "stuck": stuck.iter().map(|s| json!({
                    "event_id": s.event_id,
                    "event_type": s.event_type,
                    "agb_code": s.agb_code,
                    "received_at": rfc3339(s.received_at),
                    "state": s.state,
                    "overdue_deliveries": s.overdue,
                    "overdue_since": s.overdue_since.map(rfc3339),
                    "problem": problem(s),
                })).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
        }
        Format::Table => {
            if stuck.is_empty() {
                println!(
                    "ok: every event's deliveries are final or due within {}",
                    human(threshold_ms)
                );
            } else {
                println!(
                    "{:<36}  {:<40}  {:<8}  {:<20}  PROBLEM",
                    "EVENT", "TYPE", "AGB", "RECEIVED"
                );
                for s in &stuck {
                    println!(
                        "{:<36}  {:<40}  {:<8}  {:<20}  {}",
                        s.event_id,
                        s.event_type,
                        s.agb_code.as_deref().unwrap_or("-"),
                        rfc3339(s.received_at),
                        problem(s)
                    );
                }
            }
        }
    }
    if stuck.is_empty() {
        return Ok(());
    }
    Err(CliError::Problem(format!(
        "{} events stuck for more than {}: is a dispatcher running (`notifier run`), and is the relay circuit closed (/readyz, `notifier stats`)? Details: `notifier events show ID`",
        stuck.len(),
        human(threshold_ms)
    )))
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
    let quarantine = ev::open_quarantine_count(&mut c).await?;
    let unroutable = ev::unroutable_count(&mut c, since_ms).await?;
    let skipped = dir::skipped_counts(&mut c, since_ms).await?;
    let relay = dl::relay_seen(&mut c).await?;
    drop(c);
    store.close().await;

    let attempt_map: BTreeMap<&str, i64> = attempts.iter().map(|(o, n)| (o.as_str(), *n)).collect();
    let skipped_map: BTreeMap<&str, i64> = skipped.iter().map(|(o, n)| (o.as_str(), *n)).collect();
    const OUTCOMES: [&str; 5] = ["sent", "transient", "permanent", "unknown", "relay_fault"];
    const SKIPS: [&str; 2] = ["stale", "unknown_user"];
    const CIRCUIT_NOTE: &str = "the live relay circuit state is on /readyz of `notifier run` (relay_circuit, relay_reason) and in notifier_smtp_circuit_open";

    match format {
        Format::Json => {
            let v = json!({
                "since": rfc3339(since_ms),
                "now": rfc3339(now),
                "deliveries": by_kind.iter().map(|(k, s, n)| json!({"kind": k, "status": s, "count": n})).collect::<Vec<_>>(),
                "pending": {
                    "count": pending,
                    "oldest_created_at": oldest.map(rfc3339),
                    "oldest_age_seconds": oldest.map(|o| (now - o).max(0) / 1000),
                },
                "attempts": OUTCOMES.iter().map(|o| (o.to_string(), json!(attempt_map.get(o).copied().unwrap_or(0)))).collect::<serde_json::Map<_, _>>(),
                "quarantine_open": quarantine,
                "unroutable_events": unroutable,
                "directory_skipped": SKIPS.iter().map(|o| (o.to_string(), json!(skipped_map.get(o).copied().unwrap_or(0)))).collect::<serde_json::Map<_, _>>(),
                "relay": {
                    "last_attempt_at": relay.last_attempt.as_ref().map(|a| rfc3339(a.0)),
                    "last_outcome": relay.last_attempt.as_ref().map(|a| a.1.clone()),
                    "last_smtp_code": relay.last_attempt.as_ref().and_then(|a| a.2),
                    "last_detail": relay.last_attempt.as_ref().and_then(|a| a.3.clone()),
                    "last_sent_at": relay.last_sent_at.map(rfc3339),
                    "note": CIRCUIT_NOTE,
                },
            });
            println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
        }
        Format::Table => {
            println!(
                "window {} .. {} ({})",
                rfc3339(since_ms),
                rfc3339(now),
                human(now - since_ms)
            );
            println!();
            println!("deliveries created in the window:");
            let statuses = DeliveryStatus::ALL.map(|s| s.as_str());
            let mut pivot: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
            for (k, s, n) in &by_kind {
                *pivot.entry(k).or_default().entry(s).or_default() += n;
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
            println!();
            match oldest {
                Some(o) => println!(
                    "not yet final now (pending or sending): {pending}, the oldest created {} ago ({})",
                    human(now - o),
                    rfc3339(o)
                ),
                None => println!("not yet final now (pending or sending): 0"),
            }
            println!(
                "attempts in the window: {}",
                OUTCOMES
                    .iter()
                    .map(|o| format!("{o} {}", attempt_map.get(o).copied().unwrap_or(0)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!("quarantine: {quarantine} open");
            println!("unroutable events in the window: {unroutable}");
            println!(
                "directory updates skipped in the window: {}",
                SKIPS
                    .iter()
                    .map(|o| format!("{o} {}", skipped_map.get(o).copied().unwrap_or(0)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            match &relay.last_attempt {
                Some((at, outcome, code, detail)) => println!(
                    "relay, as the database last saw it: last attempt {} ago ({}): {outcome}{}{}",
                    human(now - at),
                    rfc3339(*at),
                    code.map(|c| format!(" {c}")).unwrap_or_default(),
                    detail
                        .as_deref()
                        .filter(|d| !d.is_empty())
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                ),
                None => println!("relay, as the database last saw it: no attempt recorded yet"),
            }
            match relay.last_sent_at {
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
    Ok(())
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
