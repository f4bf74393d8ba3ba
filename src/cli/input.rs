//! `ingest FILE` and `directory import FILE`: line-oriented input, a bad line
//! reported with its number and reason without stopping the rest. The
//! import itself is [`crate::pipeline::recovery::import_users`].

use super::CliError;
use crate::app;
use crate::config::Settings;
use crate::ops::metrics::Metrics;
use crate::pipeline::ingest::{Incoming, IngestOutcome, Source};
use std::collections::BTreeMap;
use std::path::Path;

/// The text of `file`, or of standard input for `-`.
pub(super) fn read_input(file: &Path) -> Result<String, CliError> {
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
    let lines = crate::pipeline::recovery::numbered_lines(text.as_str());
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

use crate::pipeline::recovery::import_users;

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
