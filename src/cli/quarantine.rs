//! `quarantine list`, `quarantine show ID` and `quarantine redrive`: the one
//! place operators look at bad input, whether ingest rejected it or
//! RabbitMQ dead-lettered it after the delivery limit. The redrive itself
//! is [`crate::pipeline::recovery::redrive`]; this prints its report.

use super::{CliError, Format, print_json, read_conn, rfc3339};
use crate::app;
use crate::config::Settings;
use crate::ops::metrics::Metrics;
use crate::pipeline::recovery::{self, Audit, Redrive, RedriveOutcome, Selection};
use crate::store::events::{self as ev, QUARANTINE_RAW_LIMIT, QuarantineRow};
use serde::Serialize;

/// Text from a bad message made safe for a terminal: control characters
/// (an ANSI escape in a hostile body, say) are shown escaped.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn one_line(s: &str) -> String {
    printable(s).replace('\n', "\\n")
}

/// A quarantined message as `list` and `show` print it in JSON.
#[derive(Serialize)]
struct Entry<'a> {
    id: String,
    received_at: String,
    source: &'a str,
    routing_key: Option<&'a str>,
    event_id: Option<&'a str>,
    event_type: Option<&'a str>,
    reason: &'a str,
    size: i64,
    state: &'a str,
    redrives: i64,
    last_redrive_at: Option<String>,
    /// When retention purged the body (absent while it is kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    purged_at: Option<String>,
}

impl<'a> Entry<'a> {
    fn of(q: &'a QuarantineRow) -> Self {
        Self {
            id: q.id.to_string(),
            received_at: rfc3339(q.received_at),
            source: &q.source,
            routing_key: q.routing_key.as_deref(),
            event_id: q.event_id.as_deref(),
            event_type: q.event_type.as_deref(),
            reason: &q.reason,
            size: q.size,
            state: q.state.as_str(),
            redrives: q.redrives,
            last_redrive_at: q.last_redrive_at.map(rfc3339),
            purged_at: q.purged_at.map(rfc3339),
        }
    }
}

/// `show` adds the body.
#[derive(Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    entry: Entry<'a>,
    body: &'a str,
    body_truncated: bool,
}

/// The stored body as text, and whether it is cut short (a purged body
/// is empty, not cut short).
fn body_text(q: &QuarantineRow) -> (String, bool) {
    let raw = &q.raw[..q.raw.len().min(QUARANTINE_RAW_LIMIT)];
    (
        String::from_utf8_lossy(raw).into_owned(),
        q.purged_at.is_none() && (q.raw.len() as i64) < q.size,
    )
}

/// `notifier quarantine list`.
pub async fn list(
    settings: Settings,
    all: bool,
    limit: i64,
    format: Format,
) -> Result<(), CliError> {
    if limit < 1 {
        return Err(CliError::Usage("--limit must be at least 1".into()));
    }
    let store = app::open_store(&settings, false).await?;
    let mut c = read_conn(&store).await?;
    let mut rows = ev::list_quarantine(&mut c, !all, limit.saturating_add(1)).await?;
    let open = ev::open_quarantine_count(&mut c).await?;
    drop(c);
    store.close().await;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    match format {
        Format::Json => {
            print_json(&rows.iter().map(Entry::of).collect::<Vec<_>>());
        }
        Format::Table => {
            println!(
                "{:>6}  {:<20}  {:<11}  {:<36}  {:<34}  {:>7}  {:<8}  {:>3}  REASON",
                "ID", "RECEIVED", "SOURCE", "EVENT", "TYPE", "SIZE", "STATE", "RDR"
            );
            for q in &rows {
                println!(
                    "{:>6}  {:<20}  {:<11}  {:<36}  {:<34}  {:>7}  {:<8}  {:>3}  {}",
                    q.id,
                    rfc3339(q.received_at),
                    q.source,
                    one_line(q.event_id.as_deref().unwrap_or("-")),
                    one_line(q.event_type.as_deref().unwrap_or("-")),
                    q.size,
                    q.state,
                    q.redrives,
                    one_line(&q.reason)
                );
            }
            println!(
                "{} shown; {open} open in total{}",
                rows.len(),
                if more {
                    " (more rows: raise --limit)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// `notifier quarantine show ID`.
pub async fn show(settings: Settings, id: i64, format: Format) -> Result<(), CliError> {
    let store = app::open_store(&settings, false).await?;
    let mut c = read_conn(&store).await?;
    let q = ev::get_quarantine(&mut c, id).await?;
    drop(c);
    store.close().await;
    let Some(q) = q else {
        return Err(CliError::Problem(format!(
            "no quarantined message with id {id} (`notifier quarantine list --all` lists them)"
        )));
    };
    let (body, cut) = body_text(&q);
    match format {
        Format::Json => {
            print_json(&Shown {
                entry: Entry::of(&q),
                body: &body,
                body_truncated: cut,
            });
        }
        Format::Table => {
            println!("quarantine   {}", q.id);
            println!("received     {}", rfc3339(q.received_at));
            println!("source       {}", q.source);
            println!(
                "routing key  {}",
                one_line(q.routing_key.as_deref().unwrap_or("-"))
            );
            println!(
                "event        {}",
                one_line(q.event_id.as_deref().unwrap_or("-"))
            );
            println!(
                "type         {}",
                one_line(q.event_type.as_deref().unwrap_or("-"))
            );
            println!("reason       {}", one_line(&q.reason));
            println!("size         {} bytes", q.size);
            println!(
                "state        {} (redriven {} times{})",
                q.state,
                q.redrives,
                q.last_redrive_at
                    .map(|t| format!(", last at {}", rfc3339(t)))
                    .unwrap_or_default()
            );
            println!();
            if let Some(t) = q.purged_at {
                println!(
                    "body: purged by retention at {} (retention.keep); the {} bytes are gone",
                    rfc3339(t),
                    q.size
                );
                return Ok(());
            }
            if cut {
                println!(
                    "body (the first {} of {} bytes; the rest was not kept):",
                    q.raw.len(),
                    q.size
                );
            } else {
                println!("body:");
            }
            println!("{}", printable(&body));
        }
    }
    Ok(())
}

/// `notifier quarantine redrive (ID... | --all)`.
pub async fn redrive(
    settings: Settings,
    ids: Vec<i64>,
    all: bool,
    operator: Option<String>,
    reason: Option<String>,
) -> Result<(), CliError> {
    // Redrive needs no --operator/--reason (it only ingests input that was
    // meant to be ingested), but it is recorded like a replay.
    let req = Redrive {
        selection: if all {
            Selection::All
        } else {
            Selection::Ids(ids)
        },
        audit: Audit::given(operator.as_deref(), reason.as_deref()),
    };
    let store = app::open_store(&settings, false).await?;
    let ingestor = app::ingestor(&settings, &store, &Metrics::new());
    let report = recovery::redrive(&store, &ingestor, &req, chrono::Utc::now()).await;
    store.close().await;
    let report = report?;
    for r in &report.results {
        let id = r.id;
        match &r.outcome {
            RedriveOutcome::Redriven(what) => println!("quarantine {id}: redriven: {what}"),
            RedriveOutcome::StillInvalid(why) => {
                println!("quarantine {id}: still invalid: {}", one_line(why))
            }
            RedriveOutcome::Skipped(why) => println!("quarantine {id}: skipped: {why}"),
            RedriveOutcome::Missing => println!("quarantine {id}: no such quarantine row"),
        }
    }
    let c = report.counts;
    println!(
        "redriven {}, still invalid {}, skipped {}",
        c.redriven, c.still_invalid, c.skipped
    );
    if c.still_invalid > 0 || c.unknown_ids > 0 {
        return Err(CliError::Problem(format!(
            "{} still invalid{}; they stay in quarantine with the new reason (`notifier quarantine show ID`)",
            c.still_invalid,
            if c.unknown_ids > 0 {
                format!(", {} unknown ids", c.unknown_ids)
            } else {
                String::new()
            }
        )));
    }
    Ok(())
}
