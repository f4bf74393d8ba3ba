//! `deliveries list` and `events show`: what operators read in an incident.

use super::{CliError, Format, rfc3339};
use crate::app;
use crate::config::Settings;
use crate::domain::delivery::DeliveryStatus;
use crate::store::deliveries::{self as dl, DeliveryFilter, DeliveryRow};
use crate::store::events as ev;
use serde_json::{Value, json};

fn delivery_json(d: &DeliveryRow) -> Value {
    json!({
        "id": d.id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "kind": d.kind,
        "agb_code": d.agb_code,
        "recipient": d.recipient,
        "rule": d.rule,
        "status": d.status,
        "attempts": d.attempts,
        "message_id": d.message_id,
        "created_at": rfc3339(d.created_at),
        "due_at": rfc3339(d.due_at),
        "deadline": rfc3339(d.deadline),
        "sent_at": d.sent_at.map(rfc3339),
        "last_error": d.last_error,
    })
}

/// `notifier deliveries list`.
pub async fn deliveries_list(
    settings: Settings,
    event: Option<String>,
    status: Option<String>,
    agb: Option<String>,
    format: Format,
) -> Result<(), CliError> {
    let status = status
        .map(|s| {
            DeliveryStatus::parse(&s).ok_or_else(|| {
                CliError::Usage(format!(
                    "--status {s}: expected pending, sending, sent, failed or cancelled"
                ))
            })
        })
        .transpose()?;
    let store = app::open_store(&settings, false).await?;
    let mut conn = store
        .pool()
        .acquire()
        .await
        .map_err(crate::store::StoreError::from)?;
    let rows = dl::list(
        &mut conn,
        &DeliveryFilter {
            event_id: event,
            status,
            agb_code: agb,
            ..Default::default()
        },
    )
    .await?;
    match format {
        Format::Json => {
            let v: Vec<Value> = rows.iter().map(delivery_json).collect();
            println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
        }
        Format::Table => {
            println!(
                "{:<36}  {:<36}  {:<34}  {:<36}  {:<9}  {:>3}  LAST ERROR",
                "ID", "EVENT", "KIND", "RECIPIENT", "STATUS", "ATT"
            );
            for d in &rows {
                println!(
                    "{:<36}  {:<36}  {:<34}  {:<36}  {:<9}  {:>3}  {}",
                    d.id,
                    d.event_id,
                    d.kind,
                    d.recipient,
                    d.status,
                    d.attempts,
                    d.last_error.as_deref().unwrap_or("")
                );
            }
            println!("{} deliveries", rows.len());
        }
    }
    Ok(())
}

/// `notifier events list`.
pub async fn events_list(
    settings: Settings,
    state: Option<String>,
    event_type: Option<String>,
    agb: Option<String>,
    limit: i64,
    format: Format,
) -> Result<(), CliError> {
    let store = app::open_store(&settings, false).await?;
    let mut conn = store
        .pool()
        .acquire()
        .await
        .map_err(crate::store::StoreError::from)?;
    let filter = ev::EventFilter {
        event_type,
        agb_code: agb,
        states: state.into_iter().collect(),
        newest_first: true,
        limit: Some(limit),
        ..Default::default()
    };
    let rows = ev::list_events(&mut conn, &filter).await?;
    match format {
        Format::Json => {
            let v: Vec<Value> = rows
                .iter()
                .map(|e| {
                    json!({"id": e.id, "type": e.event_type, "agb_code": e.agb_code, "state": e.state,
                           "detail": e.detail, "occurred_at": rfc3339(e.occurred_at), "received_at": rfc3339(e.received_at)})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
        }
        Format::Table => {
            println!(
                "{:<36}  {:<36}  {:<8}  {:<10}  {:<20}  DETAIL",
                "ID", "TYPE", "AGB", "STATE", "RECEIVED"
            );
            for e in &rows {
                println!(
                    "{:<36}  {:<36}  {:<8}  {:<10}  {:<20}  {}",
                    e.id,
                    e.event_type,
                    e.agb_code.as_deref().unwrap_or("-"),
                    e.state,
                    rfc3339(e.received_at),
                    e.detail.as_deref().unwrap_or("")
                );
            }
            println!("{} events", rows.len());
        }
    }
    Ok(())
}

/// The final state of an event as operators read it.
pub fn final_state(event_state: &str, statuses: &[&str]) -> &'static str {
    if event_state == "unroutable" {
        return "unroutable";
    }
    if statuses.is_empty() {
        return match event_state {
            "stale" => "stale (ignored)",
            "ignored" => "ignored",
            _ => "done (no mail)",
        };
    }
    if statuses.iter().any(|s| *s == "pending" || *s == "sending") {
        "in progress"
    } else if statuses.contains(&"failed") {
        "done with failures"
    } else {
        "done"
    }
}

/// `notifier events show ID`.
pub async fn event_show(settings: Settings, id: &str, format: Format) -> Result<(), CliError> {
    let store = app::open_store(&settings, false).await?;
    let mut conn = store
        .pool()
        .acquire()
        .await
        .map_err(crate::store::StoreError::from)?;
    let Some(e) = ev::get_event(&mut conn, id).await? else {
        return Err(CliError::Problem(format!("no event with id {id}")));
    };
    let rows = dl::list(
        &mut conn,
        &DeliveryFilter {
            event_id: Some(id.to_owned()),
            ..Default::default()
        },
    )
    .await?;
    let mut deliveries = Vec::new();
    for d in &rows {
        let users = dl::served_users(&mut conn, &d.id).await?;
        let attempts = dl::attempts(&mut conn, &d.id).await?;
        let mut v = delivery_json(d);
        v["users"] = users
            .iter()
            .map(|u| json!({"gebruikersnummer": u.gebruikersnummer, "rule": u.rule, "versie": u.versie, "status_now": u.status}))
            .collect();
        v["attempt_log"] = attempts
            .iter()
            .map(|a| {
                json!({"n": a.n, "started_at": rfc3339(a.started_at), "duration_ms": a.duration_ms,
                       "outcome": a.outcome, "smtp_code": a.smtp_code, "enhanced_code": a.enhanced_code, "detail": a.detail,
                       "directory_checked_at": a.checked_at.map(rfc3339)})
            })
            .collect();
        deliveries.push(v);
    }
    let statuses: Vec<&str> = rows.iter().map(|d| d.status.as_str()).collect();
    let state = final_state(&e.state, &statuses);
    match format {
        Format::Json => {
            let out = json!({
                "id": e.id, "type": e.event_type, "agb_code": e.agb_code,
                "occurred_at": rfc3339(e.occurred_at), "received_at": rfc3339(e.received_at),
                "state": e.state, "detail": e.detail, "final_state": state,
                "deliveries": deliveries,
            });
            println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
        }
        Format::Table => {
            println!("event      {}", e.id);
            println!("type       {}", e.event_type);
            println!("agb_code   {}", e.agb_code.as_deref().unwrap_or("-"));
            println!("occurred   {}", rfc3339(e.occurred_at));
            println!("received   {}", rfc3339(e.received_at));
            println!("state      {} ({state})", e.state);
            if let Some(d) = &e.detail {
                println!("detail     {d}");
            }
            println!();
            for d in &deliveries {
                println!(
                    "delivery {}  {}  to {}  [{}]  status {}  attempts {}",
                    d["id"].as_str().unwrap_or(""),
                    d["kind"].as_str().unwrap_or(""),
                    d["recipient"].as_str().unwrap_or(""),
                    d["rule"].as_str().unwrap_or(""),
                    d["status"].as_str().unwrap_or(""),
                    d["attempts"]
                );
                for u in d["users"].as_array().into_iter().flatten() {
                    println!(
                        "    serves {} by {} at versie {} (now {})",
                        u["gebruikersnummer"].as_str().unwrap_or(""),
                        u["rule"].as_str().unwrap_or(""),
                        u["versie"],
                        u["status_now"].as_str().unwrap_or("unknown")
                    );
                }
                for a in d["attempt_log"].as_array().into_iter().flatten() {
                    println!(
                        "    attempt {} at {}: {} {}",
                        a["n"],
                        a["started_at"].as_str().unwrap_or(""),
                        a["outcome"].as_str().unwrap_or(""),
                        a["detail"].as_str().unwrap_or("")
                    );
                }
                if let Some(err) = d["last_error"].as_str() {
                    println!("    last error: {err}");
                }
            }
        }
    }
    Ok(())
}
