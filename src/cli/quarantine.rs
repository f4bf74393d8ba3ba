//! `quarantine list`, `quarantine show ID` and `quarantine redrive`: the one
//! place operators look at bad input, whether ingest rejected it or
//! RabbitMQ dead-lettered it after the delivery limit.
//!
//! A redrive sends the stored bytes through [`Ingestor::ingest_batch`], the
//! same path as the consumer, so it is as idempotent as ingest: a message
//! whose event id is known by now is a duplicate and changes nothing. A
//! message that is still bad keeps its row (with the new reason) and adds no
//! second one.

use super::{CliError, Format, read_conn, rfc3339};
use crate::app;
use crate::config::Settings;
use crate::ops::metrics::Metrics;
use crate::pipeline::ingest::{Incoming, IngestOutcome};
use crate::store::events::{self as ev, QUARANTINE_RAW_LIMIT, QuarantineRow};
use crate::store::replays::{self, NewReplay};
use crate::store::{StoreError, ms};
use serde_json::{Value, json};

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

fn row_json(q: &QuarantineRow) -> Value {
    json!({
        "id": q.id.to_string(),
        "received_at": rfc3339(q.received_at),
        "source": q.source,
        "routing_key": q.routing_key,
        "event_id": q.event_id,
        "event_type": q.event_type,
        "reason": q.reason,
        "size": q.size,
        "state": q.state,
        "redrives": q.redrives,
        "last_redrive_at": q.last_redrive_at.map(rfc3339),
    })
}

/// The stored body as text, and whether it is cut short.
fn body_text(q: &QuarantineRow) -> (String, bool) {
    let raw = &q.raw[..q.raw.len().min(QUARANTINE_RAW_LIMIT)];
    (
        String::from_utf8_lossy(raw).into_owned(),
        (q.raw.len() as i64) < q.size,
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
            let v: Vec<Value> = rows.iter().map(row_json).collect();
            println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
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
            let mut v = row_json(&q);
            v["routing_key"] = json!(q.routing_key);
            v["body"] = body.into();
            v["body_truncated"] = cut.into();
            println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
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

/// What a redrive did to one row.
enum Redrive {
    /// Ingest took it (what happened).
    Redriven(String),
    /// Still bad input (the new reason).
    StillInvalid(String),
    /// Not open any more (why).
    Skipped(String),
    /// No such row.
    Missing,
}

/// `notifier quarantine redrive (ID... | --all)`.
pub async fn redrive(
    settings: Settings,
    ids: Vec<i64>,
    all: bool,
    operator: Option<String>,
    reason: Option<String>,
) -> Result<(), CliError> {
    let store = app::open_store(&settings, false).await?;
    let mut c = read_conn(&store).await?;
    let mut todo: Vec<QuarantineRow> = Vec::new();
    let mut results: Vec<(i64, Redrive)> = Vec::new();
    if all {
        todo = ev::list_quarantine(&mut c, true, i64::MAX).await?;
        // Oldest first, as they arrived.
        todo.reverse();
    } else {
        for id in &ids {
            match ev::get_quarantine(&mut c, *id).await? {
                None => results.push((*id, Redrive::Missing)),
                Some(q) if q.state != "open" => results.push((
                    *id,
                    Redrive::Skipped(format!(
                        "already redriven{}; nothing to do",
                        q.last_redrive_at
                            .map(|t| format!(" at {}", rfc3339(t)))
                            .unwrap_or_default()
                    )),
                )),
                Some(q) => todo.push(q),
            }
        }
    }
    drop(c);

    let ingestor = app::ingestor(&settings, &store, &Metrics::new());
    let now = ms(chrono::Utc::now());
    for chunk in todo.chunks(200) {
        let mut decided: Vec<(i64, Option<String>, Redrive)> = Vec::new();
        let mut batch = Vec::new();
        let mut batch_ids = Vec::new();
        for q in chunk {
            if (q.raw.len() as i64) < q.size {
                // Parsing a cut-off body would only report broken JSON.
                let why = format!(
                    "cannot redrive: only the first {} of {} bytes were kept (the contract allows 64 KiB); ask the publisher to send the event again",
                    q.raw.len(),
                    q.size
                );
                decided.push((q.id, Some(why.clone()), Redrive::StillInvalid(why)));
            } else {
                batch.push(Incoming::redrive(q.raw.clone(), q.routing_key.clone()));
                batch_ids.push(q.id);
            }
        }
        // Committed before the rows are marked: if marking fails, a repeated
        // redrive finds the events known and reports them as duplicates.
        let outcomes = if batch.is_empty() {
            Vec::new()
        } else {
            ingestor.ingest_batch(&batch).await?
        };
        for (id, o) in batch_ids.into_iter().zip(outcomes) {
            let (new_reason, r) = match o {
                IngestOutcome::Accepted {
                    event_id,
                    deliveries,
                    routing,
                    ..
                } => (
                    None,
                    Redrive::Redriven(format!(
                        "accepted event {event_id} ({deliveries} deliveries, {routing})"
                    )),
                ),
                IngestOutcome::Applied {
                    event_id,
                    deliveries,
                    ..
                } => (
                    None,
                    Redrive::Redriven(format!(
                        "applied event {event_id} ({deliveries} deliveries)"
                    )),
                ),
                IngestOutcome::Duplicate { event_id } => (
                    None,
                    Redrive::Redriven(format!(
                        "duplicate: event {event_id} is already known, nothing new"
                    )),
                ),
                IngestOutcome::Stale { event_id } => (
                    None,
                    Redrive::Redriven(format!(
                        "stale directory update {event_id}: recorded, ignored"
                    )),
                ),
                IngestOutcome::UnknownUser { event_id } => (
                    None,
                    Redrive::Redriven(format!(
                        "event {event_id} recorded; its user is unknown to the directory"
                    )),
                ),
                IngestOutcome::Rejected { reason } | IngestOutcome::Quarantined { reason, .. } => {
                    (Some(reason.clone()), Redrive::StillInvalid(reason))
                }
            };
            decided.push((id, new_reason, r));
        }
        let mut tx = store.begin().await?;
        for (id, new_reason, _) in &decided {
            ev::mark_redrive(&mut tx, *id, new_reason.as_deref(), now).await?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        results.extend(decided.into_iter().map(|(id, _, r)| (id, r)));
    }

    let (mut redriven, mut invalid, mut skipped, mut missing) = (0, 0, 0, 0);
    for (id, r) in &results {
        match r {
            Redrive::Redriven(what) => {
                redriven += 1;
                println!("quarantine {id}: redriven: {what}");
            }
            Redrive::StillInvalid(why) => {
                invalid += 1;
                println!("quarantine {id}: still invalid: {}", one_line(why));
            }
            Redrive::Skipped(why) => {
                skipped += 1;
                println!("quarantine {id}: skipped: {why}");
            }
            Redrive::Missing => {
                missing += 1;
                println!("quarantine {id}: no such quarantine row");
            }
        }
    }
    println!("redriven {redriven}, still invalid {invalid}, skipped {skipped}");

    if redriven + invalid > 0 {
        let filters = if all {
            json!({"all": true})
        } else {
            json!({"ids": ids.iter().map(|i| i.to_string()).collect::<Vec<_>>()})
        };
        let counts = json!({"redriven": redriven, "still_invalid": invalid, "skipped": skipped, "unknown_ids": missing});
        // Redrive needs no --operator/--reason (it only ingests input that
        // was meant to be ingested), but it is recorded like a replay.
        let given = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .unwrap_or("(not given)")
                .to_owned()
        };
        let mut c = read_conn(&store).await?;
        replays::insert(
            &mut c,
            &NewReplay {
                at_ms: now,
                operator: &given(&operator),
                reason: &given(&reason),
                command: "quarantine redrive",
                filters: &filters,
                counts: &counts,
            },
        )
        .await?;
    }
    store.close().await;

    if invalid > 0 || missing > 0 {
        return Err(CliError::Problem(format!(
            "{invalid} still invalid{}; they stay in quarantine with the new reason (`notifier quarantine show ID`)",
            if missing > 0 {
                format!(", {missing} unknown ids")
            } else {
                String::new()
            }
        )));
    }
    Ok(())
}
