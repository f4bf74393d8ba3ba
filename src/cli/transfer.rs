//! `export` and `import`: a whole database as JSON lines, to move an
//! installation from SQLite to PostgreSQL (or back). The file format and the
//! checks live in `store::transfer`; this file owns the command-line side:
//! files, locks, messages and exit codes.
//!
//! Exit codes: 0 done; 2 the file or the target is not right (not an export,
//! incomplete, another schema version, a target that is not empty, a `run`
//! holding the SQLite file): nothing was written; 3 the database failed.

use super::CliError;
use crate::app;
use crate::config::Settings;
use crate::store::transfer::{self, TransferError};
use crate::store::{RunLock, StoreError};
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

impl From<TransferError> for CliError {
    fn from(e: TransferError) -> Self {
        match e {
            TransferError::Store(e) => Self::Dependency(e.to_string()),
            other => Self::Config(other.to_string()),
        }
    }
}

/// Holds the SQLite run lock for the command, so no `notifier run` changes the
/// database while it is exported or imported.
fn lock(settings: &Settings, verb: &str) -> Result<RunLock, CliError> {
    RunLock::acquire(settings.database.url.expose_secret()).map_err(|e| match e {
        StoreError::Locked(m) => {
            CliError::Config(format!("stop `notifier run` before `notifier {verb}`: {m}"))
        }
        other => other.into(),
    })
}

/// `notifier export --output FILE` (`-` = standard output).
pub async fn export(settings: Settings, output: &Path) -> Result<(), CliError> {
    let _lock = lock(&settings, "export")?;
    let store = app::open_store(&settings, false).await?;
    let to_stdout = output == Path::new("-");
    let mut out: Box<dyn Write> = if to_stdout {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        let f = std::fs::File::create(output)
            .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", output.display())))?;
        Box::new(BufWriter::new(f))
    };
    let counts = transfer::export(&store, &mut out).await;
    drop(out);
    store.close().await;
    let counts = counts?;
    let summary = format!("exported {} rows: {counts}", counts.total());
    // On stdout the export itself is the output: the summary goes to stderr.
    if to_stdout {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    Ok(())
}

/// `notifier import --input FILE` (`-` = standard input) into an empty, migrated database.
pub async fn import(settings: Settings, input: &Path) -> Result<(), CliError> {
    let _lock = lock(&settings, "import")?;
    let mut reader: Box<dyn std::io::BufRead> = if input == Path::new("-") {
        Box::new(BufReader::new(std::io::stdin().lock()))
    } else {
        let f = std::fs::File::open(input)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", input.display())))?;
        Box::new(BufReader::new(f))
    };
    let store = app::open_store(&settings, false).await?;
    let report = transfer::import(&store, &mut reader).await;
    store.close().await;
    let report = report?;
    println!(
        "imported {} rows: {}; {} deliveries that were being sent are pending again",
        report.rows.total(),
        report.rows,
        report.leases_cleared
    );
    Ok(())
}
