//! `demo`: the whole pipeline on the sample data in `templates/samples/`
//! (the contract's example of every event and a small directory), built
//! into the binary.

use super::CliError;
use crate::app;
use crate::config::Settings;
use crate::domain::event::parse_event;
use crate::ops::metrics::Metrics;
use crate::pipeline::ingest::{Incoming, Source};
use crate::pipeline::recovery::import_users;
use crate::store::deliveries::{self as dl, DeliveryFilter};
use crate::templates::samples::{SAMPLE_DIRECTORY, SAMPLE_EVENTS};
use std::path::Path;

/// `notifier demo`.
pub async fn demo(mut settings: Settings, database: &Path, outbox: &Path) -> Result<(), CliError> {
    for suffix in ["", "-wal", "-shm"] {
        let p = format!("{}{suffix}", database.display());
        if Path::new(&p).exists() {
            std::fs::remove_file(&p)
                .map_err(|e| CliError::Usage(format!("cannot replace {p}: {e}")))?;
        }
    }
    settings.database.url = format!("sqlite://{}", database.display()).into();
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
