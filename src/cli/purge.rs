//! `notifier purge`: the retention purge by hand
//! ([`crate::pipeline::retention::purge`]). A dry run that prints what
//! would be purged unless `--execute` (with `--operator` and `--reason`,
//! recorded in `replay history`).

use super::{CliError, ExecuteArgs, Format, print_json, replay, rfc3339};
use crate::app;
use crate::config::{HumanDuration, Settings};
use crate::pipeline::recovery::Mode;
use crate::pipeline::retention::{self, PurgeOptions, PurgeReport};
use chrono::Utc;

/// `notifier purge`.
pub async fn purge(
    settings: Settings,
    older_than: Option<String>,
    vacuum: bool,
    execute: ExecuteArgs,
    format: Format,
) -> Result<(), CliError> {
    let older_than = match older_than {
        None => settings.retention.keep,
        Some(s) => HumanDuration::parse(&s).map_err(|e| {
            CliError::Usage(format!(
                "--older-than {s}: {e} (e.g. 90d, the retention.keep default)"
            ))
        })?,
    };
    let mode = replay::mode(&execute)?;
    if vacuum && mode == Mode::DryRun {
        return Err(CliError::Usage(
            "--vacuum rewrites the database files after a purge: it needs --execute".into(),
        ));
    }
    let store = app::open_store(&settings, false).await?;
    let opts = PurgeOptions {
        record_empty: true,
        rewrite_files: vacuum,
        stop: None,
    };
    let label = older_than.to_string();
    let report = retention::purge(&store, older_than.0, &label, &mode, &opts, Utc::now()).await;
    store.close().await;
    let report = report?;
    match format {
        Format::Json => print_json(&report),
        Format::Table => print_report(&report),
    }
    Ok(())
}

fn print_report(r: &PurgeReport) {
    let c = &r.counts;
    let cutoff = rfc3339(r.filters.cutoff);
    match r.replay_id {
        Some(id) => println!(
            "purge {id}: personal data older than {} (before {cutoff}) purged",
            r.filters.older_than
        ),
        None => println!(
            "dry run: personal data older than {} (before {cutoff}) would be purged; nothing changed",
            r.filters.older_than
        ),
    }
    println!();
    println!("{:<16}  {:>8}", "ROWS", "COUNT");
    for (what, n) in [
        ("events", c.events),
        ("deliveries", c.deliveries),
        ("delivery_users", c.delivery_users),
        ("attempts", c.attempts),
        ("bounces", c.bounces),
        ("quarantine", c.quarantine),
        ("directory_log", c.directory_log),
    ] {
        println!("{what:<16}  {n:>8}");
    }
    println!();
    println!(
        "held back: {} events older than that (a delivery not final, or active since)",
        r.held_back
    );
    if let Some(f) = &r.files {
        println!("database files: {}", f.ran.join("; "));
        if let Some(note) = &f.note {
            println!("  {note}");
        }
    }
    if r.interrupted {
        println!("interrupted: the rest is purged by the next run");
    }
    if r.replay_id.is_none() && c.total() > 0 {
        println!();
        println!("to purge them: add --execute --operator NAME --reason TEXT");
    }
}
