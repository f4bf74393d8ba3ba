//! The command line: one file per verb group. Exit codes: 0 done; 1 the
//! command ran and found a problem; 2 usage or configuration error; 3 a
//! dependency (database, broker, relay) unavailable.

pub mod input;
mod inspect;
pub mod samples;
mod service;
mod transfer;

use crate::app::StartError;
use crate::config::{LogFormat, Settings};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// E-mail notification worker of the Zorginkoopportaal.
#[derive(Debug, Parser)]
#[command(name = "notifier", version, about)]
pub struct Cli {
    /// Configuration file (TOML); only the keys you change. Env NOTIFIER_<SECTION>__<KEY> wins over it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Output format of listing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume, dispatch and serve /healthz, /readyz, /metrics until SIGTERM/SIGINT.
    Run,
    /// Apply pending database migrations.
    Migrate,
    /// Send what is due (`--until-idle`), then exit.
    Dispatch {
        /// Exit when nothing is due any more (required: the long-running loop is `run`).
        #[arg(long, required = true)]
        until_idle: bool,
    },
    /// Ingest CloudEvents from a JSONL file, one a line, exactly as if consumed. Idempotent.
    Ingest {
        /// The file; `-` reads standard input.
        file: PathBuf,
    },
    /// Directory maintenance.
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// Inspect deliveries.
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// Inspect events.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Template tools.
    Templates {
        #[command(subcommand)]
        command: TemplatesCommand,
    },
    /// Write the whole database (events, directory, deliveries, attempts, quarantine) as JSON lines, e.g. to move to PostgreSQL.
    Export {
        /// The file to write; `-` writes standard output.
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Load a `notifier export` file into an empty, migrated database; deliveries being sent become pending.
    Import {
        /// The export file; `-` reads standard input.
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
    },
    /// Run the whole pipeline on sample data: a fresh SQLite file, mails to ./outbox. No broker or relay needed.
    Demo {
        /// The SQLite file to (re)create.
        #[arg(long, default_value = "notifier-demo.db")]
        database: PathBuf,
        /// Where the .eml files go.
        #[arg(long, default_value = "outbox")]
        outbox: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum DirectoryCommand {
    /// Load users: one `gebruiker.bijgewerkt` data object a line (versie rule applies).
    Import { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries, oldest first.
    List {
        #[arg(long)]
        event: Option<String>,
        /// pending, sending, sent, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        agb: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List events, newest first (e.g. `--state unroutable`: events nobody could be told about).
    List {
        /// accepted, unroutable, applied, stale or ignored.
        #[arg(long)]
        state: Option<String>,
        /// An event type, e.g. contract.voorstel_aangeboden.
        #[arg(long = "type")]
        event_type: Option<String>,
        #[arg(long)]
        agb: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// An event, its recipients with their reasons, every delivery with its attempts, and its final state.
    Show {
        id: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// Render every template against sample data; exit 1 on any error.
    Check,
}

/// An error with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Dependency(String),
    /// The command ran and found a problem (already reported).
    #[error("{0}")]
    Problem(String),
}

impl CliError {
    fn code(&self) -> u8 {
        match self {
            Self::Problem(_) => 1,
            Self::Usage(_) | Self::Config(_) => 2,
            Self::Dependency(_) => 3,
        }
    }
}

impl From<StartError> for CliError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Config(m) => Self::Config(m),
            StartError::Dependency(m) => Self::Dependency(m),
        }
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Dependency(e.to_string())
    }
}

/// Parses the command line, runs the command, and maps errors to exit codes.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&settings, matches!(cli.command, Command::Run));
    match execute(cli.command, settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.code())
        }
    }
}

fn init_logging(settings: &Settings, service: bool) {
    use tracing_subscriber::EnvFilter;
    // Short commands print their results on stdout; their logs stay quiet on stderr.
    let level = if service {
        settings.log.level.clone()
    } else {
        "warn".to_owned()
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Runs one parsed command.
pub async fn execute(command: Command, settings: Settings) -> Result<(), CliError> {
    match command {
        Command::Run => service::run(settings).await,
        Command::Migrate => service::migrate(settings).await,
        Command::Dispatch { .. } => service::dispatch_until_idle(settings).await,
        Command::Ingest { file } => input::ingest_file(settings, &file).await,
        Command::Directory {
            command: DirectoryCommand::Import { file },
        } => input::directory_import(settings, &file).await,
        Command::Deliveries {
            command:
                DeliveriesCommand::List {
                    event,
                    status,
                    agb,
                    format,
                },
        } => inspect::deliveries_list(settings, event, status, agb, format).await,
        Command::Events {
            command: EventsCommand::Show { id, format },
        } => inspect::event_show(settings, &id, format).await,
        Command::Events {
            command:
                EventsCommand::List {
                    state,
                    event_type,
                    agb,
                    limit,
                    format,
                },
        } => inspect::events_list(settings, state, event_type, agb, limit, format).await,
        Command::Templates {
            command: TemplatesCommand::Check,
        } => samples::templates_check(&settings),
        Command::Demo { database, outbox } => samples::demo(settings, &database, &outbox).await,
        Command::Export { output } => transfer::export(settings, &output).await,
        Command::Import { input } => transfer::import(settings, &input).await,
    }
}

/// RFC 3339 UTC of epoch milliseconds.
pub fn rfc3339(ms: i64) -> String {
    crate::store::from_ms(ms).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
