//! `replay deliveries`, `replay events` and `replay history`: the arguments
//! checked, the operation run ([`crate::pipeline::recovery`]), its report
//! printed as a table or as JSON.
//!
//! Both replays are dry runs unless `--execute` is given (which needs
//! `--operator` and `--reason`): they print the counts per event type and
//! status and a short sample, and change nothing. Neither replays what
//! retention purged: `--event` naming a purged event is a usage error
//! (exit 2), and purged rows among other matches are skipped and counted.

use super::{
    CliError, ExecuteArgs, Format, ReplayFilters, ReplayStatus, Resolve, parse_time, print_json,
    rfc3339,
};
use crate::app;
use crate::config::Settings;
use crate::domain::delivery::DeliveryStatus;
use crate::domain::event::EventType;
use crate::domain::ids::AgbCode;
use crate::pipeline::recovery::{
    self, Audit, DeliveriesReplay, DeliveriesReport, EventsReport, Mode, SAMPLE, Scope,
};
use chrono::{DateTime, Utc};

/// [`Mode::Execute`] with `--operator` and `--reason` when `--execute` is
/// given; a dry run otherwise.
pub(super) fn mode(execute: &ExecuteArgs) -> Result<Mode, CliError> {
    if !execute.execute {
        return Ok(Mode::DryRun);
    }
    let operator = execute.operator.as_deref().map(str::trim).unwrap_or("");
    let reason = execute.reason.as_deref().map(str::trim).unwrap_or("");
    if operator.is_empty() || reason.is_empty() {
        return Err(CliError::Usage(
            "--execute needs --operator NAME and --reason TEXT: every executed replay is recorded with both (see `notifier replay history`)".into(),
        ));
    }
    Ok(Mode::Execute(Audit {
        operator: operator.to_owned(),
        reason: reason.to_owned(),
    }))
}

/// The filters checked, with their times resolved against `now`.
fn scope(f: &ReplayFilters, now: DateTime<Utc>) -> Result<Scope, CliError> {
    let time =
        |flag: &str, v: &Option<String>| v.as_deref().map(|s| parse_time(flag, s, now)).transpose();
    let since_ms = time("--since", &f.since)?;
    let until_ms = time("--until", &f.until)?;
    if let (Some(a), Some(b)) = (since_ms, until_ms)
        && a >= b
    {
        return Err(CliError::Usage(format!(
            "--since ({}) is not before --until ({}): nothing could match",
            rfc3339(a),
            rfc3339(b)
        )));
    }
    let event_type = f
        .event_type
        .as_deref()
        .map(|t| {
            EventType::parse(t).ok_or_else(|| {
                CliError::Usage(format!(
                    "--type {t}: not an event type of contract v1 (e.g. contract.voorstel_aangeboden)"
                ))
            })
        })
        .transpose()?;
    let agb = f
        .agb
        .as_deref()
        .map(|a| {
            AgbCode::parse(a).map_err(|_| {
                CliError::Usage(format!("--agb {a}: expected an AGB code of 8 digits"))
            })
        })
        .transpose()?;
    Ok(Scope {
        since_ms,
        until_ms,
        event_type,
        agb,
        event: f.event.clone(),
    })
}

fn status_of(s: ReplayStatus) -> DeliveryStatus {
    match s {
        ReplayStatus::Failed => DeliveryStatus::Failed,
        ReplayStatus::Cancelled => DeliveryStatus::Cancelled,
        ReplayStatus::Pending => DeliveryStatus::Pending,
        ReplayStatus::Sent => DeliveryStatus::Sent,
        ReplayStatus::Bounced => DeliveryStatus::Bounced,
    }
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
    let mode = mode(&execute)?;
    let now = Utc::now();
    let req = DeliveriesReplay {
        scope: scope(&filters, now)?,
        status,
        include_sent,
    };
    let store = app::open_store(&settings, false).await?;
    refuse_purged_event(&store, req.scope.event.as_deref()).await?;
    let report =
        recovery::replay_deliveries(&store, &req, &mode, now, settings.retry.deadline.0).await;
    store.close().await;
    let report = report?;
    match format {
        Format::Json => print_json(&report),
        Format::Table => print_deliveries(&report),
    }
    Ok(())
}

/// `--event ID` naming an event that retention purged: there is nothing
/// left to send to (its addresses and recipients are gone), so the command
/// stops with a usage error instead of reporting nothing to do.
async fn refuse_purged_event(
    store: &crate::store::Store,
    event: Option<&str>,
) -> Result<(), CliError> {
    let Some(id) = event else {
        return Ok(());
    };
    let mut conn = super::read_conn(store).await?;
    let purged_at = crate::store::events::get_event(&mut conn, id)
        .await?
        .and_then(|e| e.purged_at);
    drop(conn);
    match purged_at {
        Some(t) => {
            store.close().await;
            Err(CliError::Usage(format!(
                "--event {id}: this event was purged by retention at {} (retention.keep): \
                 its recipients, addresses and data are gone, so it cannot be replayed",
                rfc3339(t)
            )))
        }
        None => Ok(()),
    }
}

fn print_deliveries(r: &DeliveriesReport) {
    let status = r.filters.status.as_str();
    match (r.replayed, r.replay_id) {
        (Some(n), Some(id)) => println!(
            "replayed {n} of {} matching {status} deliveries: pending, due now, new deadline {} (replay {id})",
            r.matched,
            rfc3339(r.deadline_ms)
        ),
        _ => println!(
            "dry run: {} {status} deliveries match; nothing changed",
            r.matched
        ),
    }
    if !r.counts.is_empty() {
        println!();
        println!("{:<40}  {:<9}  {:>6}", "EVENT TYPE", "STATUS", "COUNT");
        for c in &r.counts {
            println!("{:<40}  {:<9}  {:>6}", c.event_type, c.status, c.count);
        }
    }
    if !r.sample.is_empty() {
        println!();
        println!("sample ({} of {}):", r.sample.len(), r.matched);
        println!(
            "{:<36}  {:<36}  {:<40}  {:<36}  {:<9}  LAST ERROR",
            "ID", "EVENT", "KIND", "RECIPIENT", "STATUS"
        );
        for d in &r.sample {
            println!(
                "{:<36}  {:<36}  {:<40}  {:<36}  {:<9}  {}",
                d.id,
                d.event_id,
                d.kind,
                d.recipient,
                d.status,
                d.last_error.as_deref().unwrap_or("")
            );
        }
    }
    if r.refused_purged > 0 {
        println!(
            "{} matching deliveries refused: their events were purged by retention (addresses gone)",
            r.refused_purged
        );
    }
    match r.replayed {
        None if r.matched > 0 => {
            println!();
            println!("to replay them: add --execute --operator NAME --reason TEXT");
        }
        Some(n) if (n as usize) < r.matched => println!(
            "{} changed status meanwhile (claimed by a dispatcher) and were left alone",
            r.matched - n as usize
        ),
        _ => {}
    }
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
    let mode = mode(&execute)?;
    let now = Utc::now();
    let scope = scope(&filters, now)?;
    if let Some(t) = scope.event_type
        && !t.is_module()
    {
        return Err(CliError::Usage(format!(
            "--type {}: replay events resolves module events only; directory events have no recipients to resolve",
            t.as_str()
        )));
    }
    let rules = app::validation_rules(&settings);
    let store = app::open_store(&settings, false).await?;
    refuse_purged_event(&store, scope.event.as_deref()).await?;
    let report = recovery::replay_events(
        &store,
        &scope,
        &rules,
        &mode,
        now,
        settings.retry.deadline.0,
    )
    .await;
    store.close().await;
    let report = report?;
    match format {
        Format::Json => print_json(&report),
        Format::Table => print_events(&report),
    }
    Ok(())
}

fn print_events(r: &EventsReport) {
    let c = &r.counts;
    let verb = match r.replay_id {
        None => {
            print!("dry run: ");
            "would add"
        }
        Some(id) => {
            print!("replay {id}: ");
            "added"
        }
    };
    println!(
        "{} module events resolved again against the current directory; {verb} {} deliveries to {} events",
        c.events, c.added, c.events_with_additions
    );
    println!(
        "skipped: {} already exist (any status; `replay deliveries` sends failed ones again), {} addresses already sent or being sent this mail",
        c.skipped_existing, c.skipped_already_sent
    );
    if c.rerouted_unroutable > 0 {
        println!("{} of those events were unroutable", c.rerouted_unroutable);
    }
    if c.refused_purged > 0 {
        println!(
            "{} matching events refused: purged by retention (recipients and data gone)",
            c.refused_purged
        );
    }
    if !c.by_type_and_kind.is_empty() {
        println!();
        println!("{:<40}  {:<40}  {:>6}", "EVENT TYPE", "KIND", "COUNT");
        for t in &c.by_type_and_kind {
            println!("{:<40}  {:<40}  {:>6}", t.event_type, t.kind, t.count);
        }
        println!();
        println!("sample ({} of {}):", r.sample.len(), c.added);
        println!("{:<36}  {:<40}  {:<36}  RULE", "EVENT", "KIND", "RECIPIENT");
        for a in &r.sample {
            println!(
                "{:<36}  {:<40}  {:<36}  {}",
                a.event_id, a.kind, a.recipient, a.rule
            );
        }
    }
    for i in r.invalid.iter().take(SAMPLE) {
        println!("event {} skipped: {}", i.event_id, i.reason);
    }
    if r.replay_id.is_none() && c.added > 0 {
        println!();
        println!("to add them: add --execute --operator NAME --reason TEXT");
    }
}

/// `notifier replay history`.
pub async fn history(settings: Settings, format: Format) -> Result<(), CliError> {
    let store = app::open_store(&settings, false).await?;
    let entries = recovery::history(&store).await;
    store.close().await;
    let entries = entries?;
    match format {
        Format::Json => print_json(&entries),
        Format::Table => {
            println!(
                "{:>5}  {:<20}  {:<20}  {:<18}  REASON",
                "ID", "AT", "OPERATOR", "COMMAND"
            );
            for r in &entries {
                println!(
                    "{:>5}  {:<20}  {:<20}  {:<18}  {}",
                    r.id,
                    rfc3339(r.at),
                    r.operator,
                    r.command,
                    r.reason
                );
                println!("       filters {}", r.filters_text);
                println!("       counts  {}", r.counts_text);
            }
            println!("{} replays", entries.len());
        }
    }
    Ok(())
}
