//! `replay deliveries`, `replay events` and `replay history`: the commands
//! that make the notifier try again after an incident.
//!
//! Both replays are dry runs unless `--execute` is given: they print the
//! counts per event type and status and a short sample, and change nothing.
//! With `--execute` (which needs `--operator` and `--reason`) the change and
//! its audit row in `replays` are committed in one transaction, so a replay
//! is either recorded and done, or neither.
//!
//! Neither command sends mail itself: they put deliveries in the queue, and
//! `notifier run` (or `notifier dispatch --until-idle`) sends them with the
//! usual send-time re-check, which is what keeps a replay from mailing an
//! address twice.

use super::{
    CliError, ExecuteArgs, Format, ReplayFilters, ReplayStatus, Resolve, parse_time, read_conn,
    rfc3339,
};
use crate::app;
use crate::config::Settings;
use crate::domain::delivery::DeliveryStatus;
use crate::domain::event::{EventBody, EventType, ValidationRules, parse_event};
use crate::domain::ids::AgbCode;
use crate::domain::recipients;
use crate::pipeline::plan;
use crate::store::deliveries::{self as dl, DeliveryFilter, DeliveryRow};
use crate::store::events::{self as ev, EventFilter, EventRow};
use crate::store::replays::{self, NewReplay};
use crate::store::{StoreError, directory as dir, ms};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::AnyConnection;
use std::collections::BTreeMap;

/// How many deliveries (or additions) a replay shows as its sample.
const SAMPLE: usize = 10;

/// `--operator` and `--reason` when `--execute` is given; `None` for a dry run.
fn who(execute: &ExecuteArgs) -> Result<Option<(String, String)>, CliError> {
    if !execute.execute {
        return Ok(None);
    }
    let operator = execute.operator.as_deref().map(str::trim).unwrap_or("");
    let reason = execute.reason.as_deref().map(str::trim).unwrap_or("");
    if operator.is_empty() || reason.is_empty() {
        return Err(CliError::Usage(
            "--execute needs --operator NAME and --reason TEXT: every executed replay is recorded with both (see `notifier replay history`)".into(),
        ));
    }
    Ok(Some((operator.to_owned(), reason.to_owned())))
}

/// The filters with their times resolved to epoch milliseconds.
struct Resolved {
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    event_type: Option<String>,
    agb: Option<String>,
    event: Option<String>,
}

impl Resolved {
    fn from(f: &ReplayFilters, now: DateTime<Utc>) -> Result<Self, CliError> {
        let since_ms = f
            .since
            .as_deref()
            .map(|s| parse_time("--since", s, now))
            .transpose()?;
        let until_ms = f
            .until
            .as_deref()
            .map(|s| parse_time("--until", s, now))
            .transpose()?;
        if let (Some(a), Some(b)) = (since_ms, until_ms)
            && a >= b
        {
            return Err(CliError::Usage(format!(
                "--since ({}) is not before --until ({}): nothing could match",
                rfc3339(a),
                rfc3339(b)
            )));
        }
        if let Some(t) = &f.event_type
            && EventType::parse(t).is_none()
        {
            return Err(CliError::Usage(format!(
                "--type {t}: not an event type of contract v1 (e.g. contract.voorstel_aangeboden)"
            )));
        }
        if let Some(a) = &f.agb
            && AgbCode::parse(a).is_err()
        {
            return Err(CliError::Usage(format!(
                "--agb {a}: expected an AGB code of 8 digits"
            )));
        }
        Ok(Self {
            since_ms,
            until_ms,
            event_type: f.event_type.clone(),
            agb: f.agb.clone(),
            event: f.event.clone(),
        })
    }

    /// The filters as recorded in `replays.filters` and printed in JSON.
    fn json(&self) -> Value {
        json!({
            "since": self.since_ms.map(rfc3339),
            "until": self.until_ms.map(rfc3339),
            "type": self.event_type,
            "agb": self.agb,
            "event": self.event,
        })
    }
}

fn status_of(s: ReplayStatus) -> DeliveryStatus {
    match s {
        ReplayStatus::Failed => DeliveryStatus::Failed,
        ReplayStatus::Cancelled => DeliveryStatus::Cancelled,
        ReplayStatus::Pending => DeliveryStatus::Pending,
        ReplayStatus::Sent => DeliveryStatus::Sent,
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON"));
}

/// `notifier replay deliveries`.
pub async fn deliveries(
    settings: Settings,
    status: ReplayStatus,
    filters: ReplayFilters,
    include_sent: bool,
    execute: ExecuteArgs,
    format: Format,
) -> Result<(), CliError> {
    let status = status_of(status);
    if status == DeliveryStatus::Sent && !include_sent {
        return Err(CliError::Usage(
            "--status sent would send mail that the relay already accepted once more; \
             add --include-sent if re-sending is really what you want"
                .into(),
        ));
    }
    let who = who(&execute)?;
    let now = Utc::now();
    let f = Resolved::from(&filters, now)?;
    let filter = DeliveryFilter {
        event_id: f.event.clone(),
        status: Some(status),
        agb_code: f.agb.clone(),
        event_type: f.event_type.clone(),
        since_ms: f.since_ms,
        until_ms: f.until_ms,
        limit: None,
    };
    let mut filters_json = f.json();
    filters_json["status"] = status.as_str().into();
    filters_json["include_sent"] = include_sent.into();

    let store = app::open_store(&settings, false).await?;
    let deadline_ms = ms(now) + settings.retry.deadline.0.as_millis() as i64;
    let (rows, done) = match &who {
        None => {
            let mut c = read_conn(&store).await?;
            (dl::list(&mut c, &filter).await?, None)
        }
        Some((operator, reason)) => {
            // Selected again inside the write transaction, so the counts
            // recorded are the rows this replay really saw.
            let mut tx = store.begin().await?;
            let rows = dl::list(&mut tx, &filter).await?;
            let ids: Vec<String> = rows.iter().map(|d| d.id.clone()).collect();
            let changed = dl::replay(&mut tx, &ids, status, ms(now), deadline_ms).await?;
            let counts = json!({
                "matched": rows.len(),
                "replayed": changed,
                "by_type_and_status": type_status_counts(&rows),
            });
            let id = replays::insert(
                &mut tx,
                &NewReplay {
                    at_ms: ms(now),
                    operator,
                    reason,
                    command: "replay deliveries",
                    filters: &filters_json,
                    counts: &counts,
                },
            )
            .await?;
            tx.commit().await.map_err(StoreError::from)?;
            (rows, Some((changed, id)))
        }
    };
    store.close().await;

    let sample: Vec<&DeliveryRow> = rows.iter().take(SAMPLE).collect();
    match format {
        Format::Json => print_json(&json!({
            "command": "replay deliveries",
            "executed": done.is_some(),
            "filters": filters_json,
            "matched": rows.len(),
            "replayed": done.map(|(n, _)| n),
            "replay_id": done.map(|(_, id)| id.to_string()),
            "counts": type_status_counts(&rows),
            "sample": sample.iter().map(|d| json!({
                "id": d.id,
                "event_id": d.event_id,
                "kind": d.kind,
                "recipient": d.recipient.to_lowercase(),
                "status": d.status,
                "last_error": d.last_error,
            })).collect::<Vec<_>>(),
        })),
        Format::Table => {
            match done {
                None => println!(
                    "dry run: {} {} deliveries match; nothing changed",
                    rows.len(),
                    status.as_str()
                ),
                Some((n, id)) => println!(
                    "replayed {n} of {} matching {} deliveries: pending, due now, new deadline {} (replay {id})",
                    rows.len(),
                    status.as_str(),
                    rfc3339(deadline_ms)
                ),
            }
            print_type_status(&rows);
            if !sample.is_empty() {
                println!();
                println!("sample ({} of {}):", sample.len(), rows.len());
                println!(
                    "{:<36}  {:<36}  {:<40}  {:<36}  {:<9}  LAST ERROR",
                    "ID", "EVENT", "KIND", "RECIPIENT", "STATUS"
                );
                for d in &sample {
                    println!(
                        "{:<36}  {:<36}  {:<40}  {:<36}  {:<9}  {}",
                        d.id,
                        d.event_id,
                        d.kind,
                        d.recipient.to_lowercase(),
                        d.status,
                        d.last_error.as_deref().unwrap_or("")
                    );
                }
            }
            match done {
                None if !rows.is_empty() => {
                    println!();
                    println!("to replay them: add --execute --operator NAME --reason TEXT");
                }
                Some((n, _)) if (n as usize) < rows.len() => println!(
                    "{} changed status meanwhile (claimed by a dispatcher) and were left alone",
                    rows.len() - n as usize
                ),
                _ => {}
            }
        }
    }
    Ok(())
}

fn type_status_counts(rows: &[DeliveryRow]) -> Vec<Value> {
    let mut m: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for d in rows {
        *m.entry((&d.event_type, &d.status)).or_default() += 1;
    }
    m.into_iter()
        .map(|((t, s), n)| json!({"event_type": t, "status": s, "count": n}))
        .collect()
}

fn print_type_status(rows: &[DeliveryRow]) {
    let counts = type_status_counts(rows);
    if counts.is_empty() {
        return;
    }
    println!();
    println!("{:<40}  {:<9}  {:>6}", "EVENT TYPE", "STATUS", "COUNT");
    for c in &counts {
        println!(
            "{:<40}  {:<9}  {:>6}",
            c["event_type"].as_str().unwrap_or(""),
            c["status"].as_str().unwrap_or(""),
            c["count"].as_u64().unwrap_or(0)
        );
    }
}

/// One delivery `replay events` adds (or would add).
struct Addition {
    event_id: String,
    event_type: String,
    kind: String,
    recipient: String,
    rule: String,
}

/// What `replay events` found.
#[derive(Default)]
struct EventsReplay {
    /// Module events looked at.
    events: usize,
    /// Events that get at least one delivery.
    events_with_additions: usize,
    added: Vec<Addition>,
    /// Planned deliveries whose (event, kind, address) row already exists.
    existing: usize,
    /// Planned deliveries whose address was already sent (or is being sent) this mail.
    already_served: usize,
    /// Stored events that no longer pass validation: (id, reason).
    invalid: Vec<(String, String)>,
    /// Unroutable events that now have deliveries.
    rerouted: usize,
}

impl EventsReplay {
    fn counts(&self) -> Value {
        let mut m: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for a in &self.added {
            *m.entry((&a.event_type, &a.kind)).or_default() += 1;
        }
        json!({
            "events": self.events,
            "events_with_additions": self.events_with_additions,
            "added": self.added.len(),
            "skipped_existing": self.existing,
            "skipped_already_sent": self.already_served,
            "invalid": self.invalid.len(),
            "rerouted_unroutable": self.rerouted,
            "by_type_and_kind": m.into_iter()
                .map(|((t, k), n)| json!({"event_type": t, "kind": k, "count": n}))
                .collect::<Vec<_>>(),
        })
    }
}

/// Resolves `events` again against the current directory; inserts the new
/// deliveries when `insert` (inside the caller's transaction), else only
/// reports them.
async fn resolve_again(
    conn: &mut AnyConnection,
    events: &[EventRow],
    rules: &ValidationRules,
    insert: bool,
    now: DateTime<Utc>,
    deadline_ms: i64,
) -> Result<EventsReplay, StoreError> {
    let mut r = EventsReplay::default();
    for e in events {
        // Validated again with today's rules (e.g. mail.allowed_link_hosts):
        // dispatch renders with them too, so an event that fails here would
        // only produce failed deliveries.
        let parsed = match parse_event(e.payload.as_bytes(), rules) {
            Ok(p) => p,
            Err(rej) => {
                r.invalid.push((
                    e.id.clone(),
                    format!("stored event no longer valid: {}", rej.reason),
                ));
                continue;
            }
        };
        let EventBody::Module(m) = &parsed.body else {
            continue;
        };
        r.events += 1;
        let snapshot = dir::agb_snapshot(conn, &m.agb_code).await?;
        let actor = match &m.actor {
            Some(a) => dir::get_user(conn, a).await?,
            None => None,
        };
        let res = recipients::resolve_module(m, &e.id, &snapshot, actor.as_ref());
        // Due now, with a full deadline from now: the event's own deadline
        // may have passed while the directory was wrong.
        let timing = plan::Timing {
            now_ms: ms(now),
            due_ms: ms(now),
            deadline_ms,
        };
        let report = plan::plan_resolution(conn, &e.id, &res, timing, insert).await?;
        r.existing += report.existing;
        r.already_served += report.already_served + report.joined;
        let n = report.added.len();
        for p in report.added {
            r.added.push(Addition {
                event_id: e.id.clone(),
                event_type: e.event_type.clone(),
                kind: p.kind.as_str().to_owned(),
                recipient: p.address.as_str().to_lowercase(),
                rule: p.rule_label(),
            });
        }
        if n > 0 {
            r.events_with_additions += 1;
            if e.state == "unroutable" {
                r.rerouted += 1;
            }
            if insert {
                // `events show` tells the story: what the event was, and that
                // a replay added mail to it.
                let note = format!(
                    "{n} deliveries added at {} by `notifier replay events` (current directory)",
                    super::rfc3339(ms(now))
                );
                let detail = match &e.detail {
                    Some(d) if e.state == "unroutable" => format!("{note}; was unroutable: {d}"),
                    Some(d) => format!("{d}; {note}"),
                    None => note,
                };
                ev::set_event_state(conn, &e.id, "accepted", Some(&detail)).await?;
            }
        }
    }
    Ok(r)
}

/// `notifier replay events`.
pub async fn events(
    settings: Settings,
    filters: ReplayFilters,
    resolve: Resolve,
    execute: ExecuteArgs,
    format: Format,
) -> Result<(), CliError> {
    if resolve == Resolve::Original {
        return Err(CliError::Usage(
            "--resolve original is not supported: the directory is not versioned, so who had \
             which right at the event's time is not known; use --resolve current (the default)"
                .into(),
        ));
    }
    let who = who(&execute)?;
    let now = Utc::now();
    let f = Resolved::from(&filters, now)?;
    if let Some(t) = f.event_type.as_deref().and_then(EventType::parse)
        && !t.is_module()
    {
        return Err(CliError::Usage(format!(
            "--type {}: replay events resolves module events only; directory events have no recipients to resolve",
            t.as_str()
        )));
    }
    let filter = EventFilter {
        event_id: f.event.clone(),
        event_type: f.event_type.clone(),
        agb_code: f.agb.clone(),
        since_ms: f.since_ms,
        until_ms: f.until_ms,
        states: vec!["accepted".into(), "unroutable".into()],
        ..Default::default()
    };
    let mut filters_json = f.json();
    filters_json["resolve"] = "current".into();
    let rules = app::validation_rules(&settings);
    let deadline_ms = ms(now) + settings.retry.deadline.0.as_millis() as i64;

    let store = app::open_store(&settings, false).await?;
    let (r, replay_id) = match &who {
        None => {
            let mut c = read_conn(&store).await?;
            let rows = ev::list_events(&mut c, &filter).await?;
            (
                resolve_again(&mut c, &rows, &rules, false, now, deadline_ms).await?,
                None,
            )
        }
        Some((operator, reason)) => {
            // One transaction: the existence checks and the inserts see the
            // same queue, and the audit row commits with them.
            let mut tx = store.begin().await?;
            let rows = ev::list_events(&mut tx, &filter).await?;
            let r = resolve_again(&mut tx, &rows, &rules, true, now, deadline_ms).await?;
            let id = replays::insert(
                &mut tx,
                &NewReplay {
                    at_ms: ms(now),
                    operator,
                    reason,
                    command: "replay events",
                    filters: &filters_json,
                    counts: &r.counts(),
                },
            )
            .await?;
            tx.commit().await.map_err(StoreError::from)?;
            (r, Some(id))
        }
    };
    store.close().await;

    let sample: Vec<&Addition> = r.added.iter().take(SAMPLE).collect();
    match format {
        Format::Json => print_json(&json!({
            "command": "replay events",
            "executed": replay_id.is_some(),
            "filters": filters_json,
            "replay_id": replay_id.map(|id| id.to_string()),
            "counts": r.counts(),
            "sample": sample.iter().map(|a| json!({
                "event_id": a.event_id,
                "event_type": a.event_type,
                "kind": a.kind,
                "recipient": a.recipient,
                "rule": a.rule,
            })).collect::<Vec<_>>(),
            "invalid": r.invalid.iter().map(|(id, why)| json!({"event_id": id, "reason": why})).collect::<Vec<_>>(),
        })),
        Format::Table => {
            let verb = if replay_id.is_some() {
                "added"
            } else {
                "would add"
            };
            match replay_id {
                None => print!("dry run: "),
                Some(id) => print!("replay {id}: "),
            }
            println!(
                "{} module events resolved again against the current directory; {verb} {} deliveries to {} events",
                r.events,
                r.added.len(),
                r.events_with_additions
            );
            println!(
                "skipped: {} already exist (any status; `replay deliveries` sends failed ones again), {} addresses already sent or being sent this mail",
                r.existing, r.already_served
            );
            if r.rerouted > 0 {
                println!("{} of those events were unroutable", r.rerouted);
            }
            let counts = r.counts();
            let by = counts["by_type_and_kind"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !by.is_empty() {
                println!();
                println!("{:<40}  {:<40}  {:>6}", "EVENT TYPE", "KIND", "COUNT");
                for c in &by {
                    println!(
                        "{:<40}  {:<40}  {:>6}",
                        c["event_type"].as_str().unwrap_or(""),
                        c["kind"].as_str().unwrap_or(""),
                        c["count"].as_u64().unwrap_or(0)
                    );
                }
                println!();
                println!("sample ({} of {}):", sample.len(), r.added.len());
                println!("{:<36}  {:<40}  {:<36}  RULE", "EVENT", "KIND", "RECIPIENT");
                for a in &sample {
                    println!(
                        "{:<36}  {:<40}  {:<36}  {}",
                        a.event_id, a.kind, a.recipient, a.rule
                    );
                }
            }
            for (id, why) in r.invalid.iter().take(SAMPLE) {
                println!("event {id} skipped: {why}");
            }
            if replay_id.is_none() && !r.added.is_empty() {
                println!();
                println!("to add them: add --execute --operator NAME --reason TEXT");
            }
        }
    }
    Ok(())
}

/// `notifier replay history`.
pub async fn history(settings: Settings, format: Format) -> Result<(), CliError> {
    let store = app::open_store(&settings, false).await?;
    let mut c = read_conn(&store).await?;
    let rows = replays::list(&mut c, i64::MAX).await?;
    drop(c);
    store.close().await;
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or_else(|_| Value::from(s));
    match format {
        Format::Json => {
            let v: Vec<Value> = rows
                .iter()
                .map(|r| {
                    json!({
                        "id": r.id.to_string(),
                        "at": rfc3339(r.at),
                        "operator": r.operator,
                        "reason": r.reason,
                        "command": r.command,
                        "filters": parse(&r.filters),
                        "counts": parse(&r.counts),
                    })
                })
                .collect();
            print_json(&Value::from(v));
        }
        Format::Table => {
            println!(
                "{:>5}  {:<20}  {:<20}  {:<18}  REASON",
                "ID", "AT", "OPERATOR", "COMMAND"
            );
            for r in &rows {
                println!(
                    "{:>5}  {:<20}  {:<20}  {:<18}  {}",
                    r.id,
                    rfc3339(r.at),
                    r.operator,
                    r.command,
                    r.reason
                );
                println!("       filters {}", r.filters);
                println!("       counts  {}", r.counts);
            }
            println!("{} replays", rows.len());
        }
    }
    Ok(())
}
