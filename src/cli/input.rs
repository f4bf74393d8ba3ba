//! `ingest FILE` and `directory import FILE`: line-oriented input, a bad line
//! reported with its number and reason without stopping the rest.

use super::CliError;
use crate::app;
use crate::config::Settings;
use crate::domain::directory::VersionCheck;
use crate::domain::event::parse_user_record;
use crate::ops::metrics::Metrics;
use crate::pipeline::ingest::{Incoming, IngestOutcome, Source};
use crate::store::{Store, directory, ms};
use std::collections::BTreeMap;
use std::path::Path;

fn read_input(file: &Path) -> Result<String, CliError> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| CliError::Usage(format!("cannot read standard input: {e}")))?;
        Ok(s)
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))
    }
}

/// `notifier ingest FILE`.
pub async fn ingest_file(settings: Settings, file: &Path) -> Result<(), CliError> {
    let text = read_input(file)?;
    let store = app::open_store(&settings, false).await?;
    let ingestor = app::ingestor(&settings, &store, &Metrics::new());
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut rejected = 0;
    for chunk in lines.chunks(200) {
        let batch: Vec<Incoming> = chunk
            .iter()
            .map(|(_, l)| Incoming::new(l.as_bytes().to_vec(), None, Source::File))
            .collect();
        let outcomes = ingestor.ingest_batch(&batch).await?;
        for ((n, _), o) in chunk.iter().zip(outcomes) {
            let key = match &o {
                IngestOutcome::Accepted { .. } => "accepted",
                IngestOutcome::Applied { .. } => "applied",
                IngestOutcome::Duplicate { .. } => "duplicate",
                IngestOutcome::Stale { .. } => "stale",
                IngestOutcome::UnknownUser { .. } => "unknown user",
                IngestOutcome::Quarantined {
                    quarantine_id,
                    reason,
                } => {
                    eprintln!("line {n}: quarantined as {quarantine_id}: {reason}");
                    rejected += 1;
                    "quarantined"
                }
                // Files are ingested with quarantine_on_reject = true.
                IngestOutcome::Rejected { reason } => {
                    eprintln!("line {n}: rejected: {reason}");
                    rejected += 1;
                    "rejected"
                }
            };
            *counts.entry(key).or_default() += 1;
        }
    }
    store.close().await;
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "{} lines: {}",
        lines.len(),
        if summary.is_empty() {
            "nothing".into()
        } else {
            summary.join(", ")
        }
    );
    if rejected > 0 {
        return Err(CliError::Problem(format!(
            "{rejected} lines were bad input and are in quarantine (`notifier quarantine list`)"
        )));
    }
    Ok(())
}

/// Counts of a directory import.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportCounts {
    pub inserted: usize,
    pub updated: usize,
    pub stale: usize,
    pub rejected: usize,
}

/// Imports `gebruiker.bijgewerkt` data objects, one a line; bad lines go to `report`.
pub async fn import_users(
    store: &Store,
    text: &str,
    report: &mut dyn FnMut(usize, String),
) -> Result<ImportCounts, CliError> {
    let mut c = ImportCounts::default();
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    for chunk in lines.chunks(500) {
        let mut tx = store.begin().await?;
        let now = ms(chrono::Utc::now());
        for (n, line) in chunk {
            let parsed = serde_json::from_str::<serde_json::Value>(line)
                .map_err(|e| format!("not valid JSON ({e})"))
                .and_then(|v| match v {
                    serde_json::Value::Object(o) => parse_user_record(&o, "").map_err(|r| r.reason),
                    _ => Err("expected a JSON object".into()),
                });
            match parsed {
                Ok(rec) => match directory::apply_user(&mut tx, &rec, now).await? {
                    VersionCheck::New => c.inserted += 1,
                    VersionCheck::Newer => c.updated += 1,
                    VersionCheck::Stale => {
                        directory::log_skipped(
                            &mut tx,
                            "import",
                            rec.gebruikersnummer.as_str(),
                            "stale",
                            now,
                        )
                        .await?;
                        c.stale += 1
                    }
                },
                Err(reason) => {
                    report(*n, reason);
                    c.rejected += 1;
                }
            }
        }
        tx.commit().await.map_err(crate::store::StoreError::from)?;
    }
    let mut conn = store
        .pool()
        .acquire()
        .await
        .map_err(crate::store::StoreError::from)?;
    directory::refresh_statistics(&mut conn).await?;
    Ok(c)
}

/// `notifier directory import FILE`.
pub async fn directory_import(settings: Settings, file: &Path) -> Result<(), CliError> {
    let text = read_input(file)?;
    let store = app::open_store(&settings, false).await?;
    let c = import_users(&store, &text, &mut |n, reason| {
        eprintln!("line {n}: rejected: {reason}")
    })
    .await?;
    store.close().await;
    println!(
        "inserted {}, updated {}, stale {}, rejected {}",
        c.inserted, c.updated, c.stale, c.rejected
    );
    if c.rejected > 0 {
        return Err(CliError::Problem(format!("{} lines rejected", c.rejected)));
    }
    Ok(())
}
