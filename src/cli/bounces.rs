//! `bounces ingest` (one message from a file or an MTA's pipe, or a
//! maildir) and `bounces list`. The reading itself is
//! [`crate::pipeline::bounces`]; this takes the arguments and prints.
//!
//! `bounces ingest` has its own exit codes, the ones an MTA's pipe
//! transport understands: 0 handled (whatever the message was), 75
//! (EX_TEMPFAIL) when it could not be stored, so the MTA keeps it and
//! tries again, and 64 (EX_USAGE) for a wrong command line.

use super::{CliError, Format, parse_time, print_json, read_conn, rfc3339};
use crate::app;
use crate::config::Settings;
use crate::domain::dsn::BounceOutcome;
use crate::ops::metrics::Metrics;
use crate::pipeline::bounces::{BounceReader, Ingested};
use crate::store::bounces::{self as bx, BounceFilter, BounceRow};
use chrono::Utc;
use std::io::Read;
use std::path::{Path, PathBuf};

/// EX_USAGE (sysexits.h): a wrong command line.
pub const EX_USAGE: u8 = 64;

/// EX_TEMPFAIL (sysexits.h): the message could not be stored; try again later.
pub const EX_TEMPFAIL: u8 = 75;

/// The exit code of `bounces ingest` for `e`.
pub fn ingest_exit_code(e: &CliError) -> u8 {
    match e {
        CliError::Usage(_) => EX_USAGE,
        _ => EX_TEMPFAIL,
    }
}

/// True when the command line asks for `bounces ingest` (so that even a
/// command line clap refuses gets this command's exit codes).
pub fn is_ingest_command_line(args: &[String]) -> bool {
    args.windows(2)
        .any(|w| w[0] == "bounces" && w[1] == "ingest")
}

/// `notifier bounces ingest [FILE|-] [--recipient ADDR]` or `--maildir DIR`.
pub async fn ingest(
    settings: Settings,
    file: Option<PathBuf>,
    recipient: Option<String>,
    maildir: Option<PathBuf>,
) -> Result<(), CliError> {
    let tagging = settings.smtp.bounce_tagging().ok_or_else(|| {
        CliError::Config(
            "smtp.bounce_address and smtp.bounce_key are not set: bounces cannot be matched to deliveries"
                .into(),
        )
    })?;
    let raw = match (&file, &maildir) {
        (Some(f), None) => Some(read_input(f)?),
        (None, Some(_)) => None,
        _ => {
            return Err(CliError::Usage(
                "give one message (FILE, or - for standard input) or --maildir DIR".into(),
            ));
        }
    };
    let store = app::open_store(&settings, false).await?;
    let reader = BounceReader::new(
        store.clone(),
        tagging,
        settings.retry.deadline.0,
        Metrics::new(),
    );
    let result = match (raw, maildir) {
        (Some(raw), _) => reader
            .ingest(&raw, recipient.as_deref(), Utc::now())
            .await
            .map(|i| vec![i]),
        (None, Some(dir)) => reader.ingest_maildir(&dir).await,
        (None, None) => Ok(Vec::new()),
    };
    store.close().await;
    for i in result.map_err(|e| CliError::Dependency(e.to_string()))? {
        print_ingested(&i);
    }
    Ok(())
}

fn read_input(file: &Path) -> Result<Vec<u8>, CliError> {
    let mut raw = Vec::new();
    let read = if file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut raw).map(|_| ())
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut raw).map(|_| ()))
    };
    read.map_err(|e| CliError::Dependency(format!("cannot read {}: {e}", file.display())))?;
    Ok(raw)
}

fn print_ingested(i: &Ingested) {
    let delivery = i.delivery_id.as_deref().unwrap_or("-");
    if !i.recorded {
        println!(
            "{} (delivery {delivery}): read before, nothing changed",
            i.outcome
        );
    } else if i.bounced {
        println!(
            "{} (delivery {delivery}): bounced, {} notice(s) to the contact persons",
            i.outcome, i.notices
        );
    } else {
        println!("{} (delivery {delivery}): recorded", i.outcome);
    }
}

/// A recorded message as `bounces list` prints it in JSON.
#[derive(serde::Serialize)]
struct Line<'a> {
    id: i64,
    received_at: String,
    outcome: BounceOutcome,
    delivery_id: Option<&'a str>,
    status: Option<&'a str>,
    diagnostic: Option<&'a str>,
    detail: Option<&'a str>,
    size: i64,
    sha256: &'a str,
}

impl<'a> Line<'a> {
    fn of(b: &'a BounceRow) -> Self {
        Self {
            id: b.id,
            received_at: rfc3339(b.received_at),
            outcome: b.outcome,
            delivery_id: b.delivery_id.as_deref(),
            status: b.status.as_deref(),
            diagnostic: b.diagnostic.as_deref(),
            detail: b.detail.as_deref(),
            size: b.size,
            sha256: &b.sha256,
        }
    }
}

/// `notifier bounces list [--outcome O] [--since T]`, oldest first.
pub async fn list(
    settings: Settings,
    outcome: Option<String>,
    since: Option<String>,
    format: Format,
) -> Result<(), CliError> {
    let outcome = outcome
        .map(|o| {
            BounceOutcome::parse(&o).ok_or_else(|| {
                CliError::Usage(format!(
                    "--outcome {o}: expected hard, delayed, auto_reply, unmatched, forged or unparseable"
                ))
            })
        })
        .transpose()?;
    let since_ms = since
        .map(|s| parse_time("--since", &s, Utc::now()))
        .transpose()?;
    let store = app::open_store(&settings, false).await?;
    let mut conn = read_conn(&store).await?;
    let filter = BounceFilter {
        outcome,
        since_ms,
        ..Default::default()
    };
    let rows = bx::list(&mut conn, &filter).await;
    drop(conn);
    store.close().await;
    let rows = rows?;
    let lines: Vec<Line> = rows.iter().map(Line::of).collect();
    match format {
        Format::Json => print_json(&lines),
        Format::Table => {
            println!(
                "{:<6}  {:<24}  {:<11}  {:<7}  {:<36}  DETAIL",
                "ID", "RECEIVED", "OUTCOME", "STATUS", "DELIVERY"
            );
            for l in &lines {
                println!(
                    "{:<6}  {:<24}  {:<11}  {:<7}  {:<36}  {}",
                    l.id,
                    l.received_at,
                    l.outcome.as_str(),
                    l.status.unwrap_or("-"),
                    l.delivery_id.unwrap_or("-"),
                    l.detail.unwrap_or("")
                );
            }
        }
    }
    Ok(())
}
