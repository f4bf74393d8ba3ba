//! `templates check` and `demo`: both run on the sample data in
//! `templates/samples/` (the contract's example of every event and a small
//! directory), built into the binary.

use super::CliError;
use crate::app;
use crate::config::Settings;
use crate::domain::delivery::MailKind;
use crate::domain::event::{EventBody, parse_event};
use crate::mail::context;
use crate::ops::metrics::Metrics;
use crate::pipeline::ingest::{Incoming, Source};
use crate::pipeline::recovery::import_users;
use crate::store::deliveries::{self as dl, DeliveryFilter};
use serde_json::json;
use std::path::Path;

macro_rules! samples {
    ($($name:literal),* $(,)?) => {
        &[$(include_str!(concat!("../../templates/samples/events/", $name, ".json"))),*]
    };
}

/// The contract's example of every event type.
pub const SAMPLE_EVENTS: &[&str] = samples!(
    "uitvraag.vragenlijst_klaargezet",
    "uitvraag.herinnering_sluitingsdatum",
    "uitvraag.aanvulling_gevraagd",
    "uitvraag.beoordeeld",
    "contract.voorstel_aangeboden",
    "contract.herinnering_acceptatie",
    "contract.geaccepteerd",
    "contract.administratief_vastgelegd",
    "onderhandeling.voorstel_gedaan",
    "onderhandeling.geaccordeerd",
    "onderhandeling.afgerond",
    "naleving.aanleververzoek",
    "gebruiker.bijgewerkt",
    "gebruiker.emailadres_gewijzigd",
    "certificaat.ingetrokken",
    "organisatie.bijgewerkt",
);

/// A small directory for AGB 04123456 (shared address, uppercase address, a revoked user, two AGB codes).
pub const SAMPLE_DIRECTORY: &str = include_str!("../../templates/samples/directory.jsonl");

/// Renders every kind against sample data; returns (kind, error) for failures.
pub fn check_all(
    templates: &crate::templates::Templates,
    settings: &Settings,
) -> Vec<(String, String)> {
    let rules = app::validation_rules(settings);
    let portal = &settings.portal.url;
    let mut failures = Vec::new();
    for kind in MailKind::all() {
        let ctx = match kind {
            MailKind::Module(t) => {
                let sample = SAMPLE_EVENTS
                    .iter()
                    .filter_map(|s| parse_event(s.as_bytes(), &rules).ok())
                    .find(|e| e.event_type == t);
                let Some(EventBody::Module(m)) = sample.map(|e| e.body) else {
                    failures.push((
                        kind.as_str().into(),
                        "no valid sample event (check mail.allowed_link_hosts)".into(),
                    ));
                    continue;
                };
                context::module_context(kind.as_str(), &m, "Fysiotherapie Noord", portal)
            }
            _ => {
                let notice = json!({
                    "event_id": "9b2f4c1e-3a57-4c6f-9d0e-000000000005",
                    "event_type": "contract.voorstel_aangeboden",
                    "event_label": "Er is een contractvoorstel aangeboden",
                    "module": "Contracteermodule",
                    "recht": "contracteren",
                    "contract_naam": "Overeenkomst fysiotherapie 2027",
                    "zorgverzekeraar_naam": "Zorgverzekeraar Noord",
                    "uiterste_acceptatiedatum": "2026-11-12",
                    "gebruiker_naam": "P. Jansen",
                    "gebruikersnummer": "10000000000002",
                    "agb_code": "04123456",
                    "reden": "het adres werd door de ontvangende mailserver geweigerd",
                });
                context::notice_context(
                    kind.as_str(),
                    Some("04123456"),
                    Some("Fysiotherapie Noord"),
                    &notice,
                    portal,
                )
            }
        };
        if let Err(e) = templates.render(kind, &ctx) {
            failures.push((kind.as_str().into(), e.to_string()));
        }
    }
    failures
}

/// `notifier templates check`.
pub fn templates_check(settings: &Settings) -> Result<(), CliError> {
    let templates = app::load_templates(settings)?;
    let failures = check_all(&templates, settings);
    for kind in MailKind::all() {
        match failures.iter().find(|(k, _)| k == kind.as_str()) {
            Some((_, e)) => println!("FAIL  {}: {e}", kind.as_str()),
            None => println!("ok    {}", kind.as_str()),
        }
    }
    if failures.is_empty() {
        println!("all {} templates render", MailKind::all().len());
        Ok(())
    } else {
        Err(CliError::Problem(format!(
            "{} templates failed to render",
            failures.len()
        )))
    }
}

/// `notifier demo`.
pub async fn demo(mut settings: Settings, database: &Path, outbox: &Path) -> Result<(), CliError> {
    for suffix in ["", "-wal", "-shm"] {
        let p = format!("{}{suffix}", database.display());
        if Path::new(&p).exists() {
            std::fs::remove_file(&p)
                .map_err(|e| CliError::Usage(format!("cannot replace {p}: {e}")))?;
        }
    }
    settings.database.url = format!("sqlite://{}", database.display());
    settings.smtp.url = crate::mail::Relay::Outbox;
    settings.smtp.outbox_dir = outbox.display().to_string();
    settings.smtp.max_rate = 0;

    let store = app::open_store(&settings, true).await?;
    let metrics = Metrics::new();
    let c = import_users(&store, SAMPLE_DIRECTORY, &mut |n, r| {
        eprintln!("directory line {n}: {r}")
    })
    .await?;
    println!("directory: {} users imported", c.inserted + c.updated);

    let mut events: Vec<&str> = SAMPLE_EVENTS.to_vec();
    events.sort_by_key(|s| {
        serde_json::from_str::<serde_json::Value>(s)
            .ok()
            .and_then(|v| v["time"].as_str().map(str::to_owned))
    });
    let ingestor = app::ingestor(&settings, &store, &metrics);
    // Module events first and sent; then the directory changes (an address
    // change, a revocation) with the mails they cause.
    let (module, directory): (Vec<&str>, Vec<&str>) = events.into_iter().partition(|s| {
        parse_event(s.as_bytes(), &app::validation_rules(&settings))
            .is_ok_and(|e| e.event_type.is_module())
    });
    for (label, part) in [("module events", module), ("directory events", directory)] {
        let batch: Vec<Incoming> = part
            .iter()
            .map(|s| Incoming::new(s.as_bytes().to_vec(), None, Source::File))
            .collect();
        let outcomes = ingestor.ingest_batch(&batch).await?;
        let summary = app::dispatcher(&settings, &store, &metrics)?
            .run_until_idle()
            .await?;
        println!(
            "{label}: {} ingested; {} mails sent, {} cancelled, {} failed",
            outcomes.len(),
            summary.sent,
            summary.cancelled,
            summary.failed
        );
    }
    println!("mails are in {}/", outbox.display());
    println!();
    let mut conn = super::read_conn(&store).await?;
    let rows = dl::list(&mut conn, &DeliveryFilter::default()).await?;
    println!(
        "{:<36}  {:<42}  {:<32}  STATUS",
        "EVENT", "MAIL", "RECIPIENT"
    );
    for r in &rows {
        println!(
            "{:<36}  {:<42}  {:<32}  {}",
            r.event_type, r.kind, r.recipient, r.status
        );
    }
    drop(conn);
    store.close().await;
    Ok(())
}
