//! `deliveries list` and `events show`: what operators read in an incident.

use super::{CliError, Format, print_json, read_conn, rfc3339};
use crate::app;
use crate::config::Settings;
use crate::domain::delivery::DeliveryStatus;
use crate::domain::event::EventState;
use crate::store::deliveries::{self as dl, DeliveryFilter, DeliveryRow};
use crate::store::events as ev;
use serde::Serialize;

/// One delivery as `deliveries list` and `events show` give it; the users
/// and the attempt log only in `events show`.
#[derive(Debug, Serialize)]
pub struct DeliveryLine {
    pub agb_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_log: Option<Vec<AttemptLine>>,
    pub attempts: i64,
    /// Messages read back about this delivery (`events show`, when there are any).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bounces: Vec<BounceLine>,
    pub created_at: String,
    pub deadline: String,
    pub due_at: String,
    pub event_id: String,
    pub event_type: String,
    pub id: String,
    pub kind: String,
    pub last_error: Option<String>,
    pub message_id: String,
    pub recipient: String,
    pub rule: String,
    pub sent_at: Option<String>,
    pub status: DeliveryStatus,
    /// The templates of the last SMTP attempt: `builtin` or the
    /// `mail.templates_dir` path (`null`: no attempt yet).
    pub template_source: Option<String>,
    /// Their version, as `notifier templates check` prints it per kind.
    pub template_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<UserLine>>,
}

impl From<&DeliveryRow> for DeliveryLine {
    fn from(d: &DeliveryRow) -> Self {
        Self {
            agb_code: d.agb_code.clone(),
            attempt_log: None,
            attempts: d.attempts,
            bounces: Vec::new(),
            created_at: rfc3339(d.created_at),
            deadline: rfc3339(d.deadline),
            due_at: rfc3339(d.due_at),
            event_id: d.event_id.clone(),
            event_type: d.event_type.clone(),
            id: d.id.clone(),
            kind: d.kind.clone(),
            last_error: d.last_error.clone(),
            message_id: d.message_id.clone(),
            recipient: d.recipient.clone(),
            rule: d.rule.label(),
            sent_at: d.sent_at.map(rfc3339),
            status: d.status,
            template_source: d.template_source.clone(),
            template_version: d.template_version.clone(),
            users: None,
        }
    }
}

/// A message read back about a delivery.
#[derive(Debug, Serialize)]
pub struct BounceLine {
    pub detail: Option<String>,
    pub id: i64,
    pub outcome: crate::domain::dsn::BounceOutcome,
    pub received_at: String,
    pub status: Option<String>,
}

/// The messages read back about delivery `id`.
async fn bounce_lines(
    conn: &mut sqlx::AnyConnection,
    id: &str,
) -> Result<Vec<BounceLine>, CliError> {
    let filter = crate::store::bounces::BounceFilter {
        delivery_id: Some(id.to_owned()),
        ..Default::default()
    };
    Ok(crate::store::bounces::list(conn, &filter)
        .await?
        .into_iter()
        .map(|b| BounceLine {
            detail: b.detail,
            id: b.id,
            outcome: b.outcome,
            received_at: rfc3339(b.received_at),
            status: b.status,
        })
        .collect())
}

/// A user a delivery serves: the rule that chose them, the directory
/// version then, and their status now.
#[derive(Debug, Serialize)]
pub struct UserLine {
    pub gebruikersnummer: String,
    pub rule: String,
    pub status_now: Option<String>,
    pub versie: i64,
}

/// One attempt of a delivery.
#[derive(Debug, Serialize)]
pub struct AttemptLine {
    pub detail: Option<String>,
    pub directory_checked_at: Option<String>,
    pub duration_ms: i64,
    pub enhanced_code: Option<String>,
    /// `None` for a report read back after the relay accepted the mail.
    pub n: Option<i64>,
    pub outcome: crate::domain::delivery::LogOutcome,
    pub smtp_code: Option<i64>,
    pub started_at: String,
    /// Where the templates that rendered this attempt's mail came from:
    /// `builtin` or the `mail.templates_dir` path (`null` for a report).
    pub template_source: Option<String>,
    /// Their version: 12 hex characters of a hash over the kind's files.
    pub template_version: Option<String>,
}

/// An event as `events list` gives it.
#[derive(Debug, Serialize)]
pub struct EventLine {
    pub agb_code: Option<String>,
    pub detail: Option<String>,
    pub id: String,
    pub occurred_at: String,
    /// Retention purged its personal data (docs/security.md).
    pub purged: bool,
    pub received_at: String,
    pub state: EventState,
    #[serde(rename = "type")]
    pub event_type: String,
}

impl From<&ev::EventRow> for EventLine {
    fn from(e: &ev::EventRow) -> Self {
        Self {
            agb_code: e.agb_code.clone(),
            detail: e.detail.clone(),
            id: e.id.clone(),
            occurred_at: rfc3339(e.occurred_at),
            purged: e.purged_at.is_some(),
            received_at: rfc3339(e.received_at),
            state: e.state,
            event_type: e.event_type.clone(),
        }
    }
}

/// What `events show` gives: the event, its final state as operators read
/// it, and every delivery with its users and attempts.
#[derive(Debug, Serialize)]
pub struct EventReport {
    pub agb_code: Option<String>,
    pub deliveries: Vec<DeliveryLine>,
    pub detail: Option<String>,
    pub final_state: &'static str,
    pub id: String,
    pub occurred_at: String,
    /// Retention purged its personal data: names, addresses and free text
    /// are gone; ids, types, statuses, codes, times and counts are kept.
    pub purged: bool,
    /// When (absent while not purged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purged_at: Option<String>,
    pub received_at: String,
    pub state: EventState,
    #[serde(rename = "type")]
    pub event_type: String,
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
                    "--status {s}: expected pending, sending, sent, failed, cancelled or bounced"
                ))
            })
        })
        .transpose()?;
    let store = app::open_store(&settings, false).await?;
    let mut conn = read_conn(&store).await?;
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
        Format::Json => print_json(&rows.iter().map(DeliveryLine::from).collect::<Vec<_>>()),
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
    state: Option<EventState>,
    event_type: Option<String>,
    agb: Option<String>,
    limit: i64,
    format: Format,
) -> Result<(), CliError> {
    let store = app::open_store(&settings, false).await?;
    let mut conn = read_conn(&store).await?;
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
        Format::Json => print_json(&rows.iter().map(EventLine::from).collect::<Vec<_>>()),
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

/// `notifier events show ID`.
pub async fn event_show(settings: Settings, id: &str, format: Format) -> Result<(), CliError> {
    let store = app::open_store(&settings, false).await?;
    let mut conn = read_conn(&store).await?;
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
        let mut line = DeliveryLine::from(d);
        line.users = Some(
            dl::served_users(&mut conn, &d.id)
                .await?
                .into_iter()
                .map(|u| UserLine {
                    gebruikersnummer: u.gebruikersnummer,
                    rule: u.rule.label(),
                    status_now: u.status.map(|s| s.as_str().to_owned()),
                    versie: u.versie,
                })
                .collect(),
        );
        line.attempt_log = Some(
            dl::attempts(&mut conn, &d.id)
                .await?
                .into_iter()
                .map(|a| AttemptLine {
                    detail: a.detail,
                    directory_checked_at: a.checked_at.map(rfc3339),
                    duration_ms: a.duration_ms,
                    enhanced_code: a.enhanced_code,
                    n: a.n,
                    outcome: a.outcome,
                    smtp_code: a.smtp_code,
                    started_at: rfc3339(a.started_at),
                    template_source: a.template_source,
                    template_version: a.template_version,
                })
                .collect(),
        );
        line.bounces = bounce_lines(&mut conn, &d.id).await?;
        deliveries.push(line);
    }
    let statuses: Vec<DeliveryStatus> = rows.iter().map(|d| d.status).collect();
    let event = EventLine::from(&e);
    let report = EventReport {
        agb_code: event.agb_code,
        deliveries,
        detail: event.detail,
        final_state: e.state.final_state(&statuses),
        id: event.id,
        occurred_at: event.occurred_at,
        purged: e.purged_at.is_some(),
        purged_at: e.purged_at.map(rfc3339),
        received_at: event.received_at,
        state: event.state,
        event_type: event.event_type,
    };
    match format {
        Format::Json => print_json(&report),
        Format::Table => report.print_table(),
    }
    Ok(())
}

impl EventReport {
    fn print_table(&self) {
        let e = self;
        println!("event      {}", e.id);
        println!("type       {}", e.event_type);
        println!("agb_code   {}", e.agb_code.as_deref().unwrap_or("-"));
        println!("occurred   {}", e.occurred_at);
        println!("received   {}", e.received_at);
        println!("state      {} ({})", e.state, self.final_state);
        if let Some(d) = &e.detail {
            println!("detail     {d}");
        }
        if let Some(t) = &e.purged_at {
            println!(
                "purged     true (at {t}, retention.keep: names, addresses and free text removed)"
            );
        }
        println!();
        for d in &self.deliveries {
            println!(
                "delivery {}  {}  to {}  [{}]  status {}  attempts {}",
                d.id, d.kind, d.recipient, d.rule, d.status, d.attempts
            );
            for u in d.users.iter().flatten() {
                println!(
                    "    serves {} by {} at versie {} (now {})",
                    u.gebruikersnummer,
                    u.rule,
                    u.versie,
                    u.status_now.as_deref().unwrap_or("unknown")
                );
            }
            for a in d.attempt_log.iter().flatten() {
                let what = match a.n {
                    Some(n) => format!("attempt {n}"),
                    None => "report".to_owned(),
                };
                println!(
                    "    {what} at {}: {} {}",
                    a.started_at,
                    a.outcome.as_str(),
                    a.detail.as_deref().unwrap_or("")
                );
                if let (Some(source), Some(version)) = (&a.template_source, &a.template_version) {
                    println!("        templates {version} ({source})");
                }
            }
            for b in &d.bounces {
                println!(
                    "    bounce {} at {}: {} {} {}",
                    b.id,
                    b.received_at,
                    b.outcome,
                    b.status.as_deref().unwrap_or("-"),
                    b.detail.as_deref().unwrap_or("")
                );
            }
            if let Some(err) = &d.last_error {
                println!("    last error: {err}");
            }
        }
    }
}
