//! `directory import`: the directory loaded from `gebruiker.bijgewerkt` data
//! objects, one a line, under the same `versie` rule as the events that
//! update it. A bad line is reported with its number and reason and the
//! rest goes on.

use crate::domain::directory::VersionCheck;
use crate::domain::event::parse_user_record;
use crate::store::{Store, StoreError, directory, ms};
use serde::Serialize;

/// Lines written in one transaction.
const CHUNK: usize = 500;

/// Counts of a directory import.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImportCounts {
    pub inserted: usize,
    pub updated: usize,
    pub stale: usize,
    pub rejected: usize,
}

/// Imports `gebruiker.bijgewerkt` data objects, one a line; each bad line
/// goes to `report` with its number (from 1) and reason.
pub async fn import_users(
    store: &Store,
    text: &str,
    report: &mut dyn FnMut(usize, String),
) -> Result<ImportCounts, StoreError> {
    let mut c = ImportCounts::default();
    let lines = numbered_lines(text);
    for chunk in lines.chunks(CHUNK) {
        let mut tx = store.begin().await?;
        let now = ms(chrono::Utc::now());
        for (n, line) in chunk {
            let rec = match parse_line(line) {
                Ok(rec) => rec,
                Err(reason) => {
                    report(*n, reason);
                    c.rejected += 1;
                    continue;
                }
            };
            match directory::apply_user(&mut tx, &rec, now).await? {
                VersionCheck::New => c.inserted += 1,
                VersionCheck::Newer => c.updated += 1,
                VersionCheck::Stale => {
                    let nr = rec.gebruikersnummer.as_str();
                    directory::log_skipped(&mut tx, "import", nr, "stale", now).await?;
                    c.stale += 1
                }
            }
        }
        tx.commit().await?;
    }
    let mut conn = store.pool().acquire().await?;
    directory::refresh_statistics(&mut conn).await?;
    Ok(c)
}

fn parse_line(line: &str) -> Result<crate::domain::directory::UserRecord, String> {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(o)) => parse_user_record(&o, "").map_err(|r| r.reason),
        Ok(_) => Err("expected a JSON object".into()),
        Err(e) => Err(format!("not valid JSON ({e})")),
    }
}

/// The non-empty lines of a JSON-lines text, trimmed, with their line
/// numbers (counted from 1, blank lines included), as operators' messages
/// name them.
pub fn numbered_lines(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
        .collect()
}
