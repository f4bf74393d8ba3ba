//! The command line: one file per verb group. Exit codes: 0 done; 1 the
//! command ran and found a problem; 2 usage or configuration error; 3 a
//! dependency (database, broker, relay) unavailable. `bounces ingest` is
//! the exception: it speaks to an MTA ([`bounces`]).

mod bounces;
mod check;
pub mod input;
mod inspect;
mod purge;
mod quarantine;
mod replay;
pub mod samples;
mod service;
mod templates;
mod transfer;

use crate::app::StartError;
use crate::config::{LogFormat, Settings};
use clap::{Args, Parser, Subcommand, ValueEnum};
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
    /// Recovery: give deliveries a new attempt cycle, resolve events again, list past replays. Dry-run unless --execute.
    Replay {
        #[command(subcommand)]
        command: ReplayCommand,
    },
    /// Retention: purge personal data older than retention.keep (or --older-than) from finished events, bounces and quarantine. Dry-run unless --execute.
    Purge {
        /// Purge what is older than this (default: retention.keep, 90d), e.g. 30d.
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
        /// Afterwards rewrite the database files (SQLite VACUUM, PostgreSQL VACUUM FULL); locks the database while it runs.
        #[arg(long)]
        vacuum: bool,
        #[command(flatten)]
        execute: ExecuteArgs,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Bad input kept by ingest: list, show, redrive after a fix.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// Delivery status notifications read back: ingest one (from an MTA's pipe) or a maildir, list them.
    Bounces {
        #[command(subcommand)]
        command: BouncesCommand,
    },
    /// Reconciliation: exit 1 when an event has a delivery overdue past the threshold, or an accepted module event has none.
    Check {
        /// Overdue by more than this counts as stuck (default: dispatch.stuck_after, 1h).
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Counts for the first look in an incident: deliveries, pending, attempts, quarantine, relay.
    Stats {
        /// Window start: RFC 3339, or a duration back from now (30m, 2h, 3d).
        #[arg(long, default_value = "24h", value_name = "T")]
        since: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
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
        /// pending, sending, sent, failed, cancelled or bounced.
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
        #[arg(long, value_parser = crate::domain::event::EventState::parse_arg)]
        state: Option<crate::domain::event::EventState>,
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

/// Filters shared by `replay deliveries` and `replay events`.
#[derive(Debug, Clone, Args)]
pub struct ReplayFilters {
    /// From this time on: RFC 3339, or a duration back from now (30m, 2h, 3d).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Before this time: RFC 3339, or a duration back from now.
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Only events of this type, e.g. contract.voorstel_aangeboden.
    #[arg(long = "type", value_name = "EVENT_TYPE")]
    pub event_type: Option<String>,
    /// Only events about this AGB code.
    #[arg(long, value_name = "CODE")]
    pub agb: Option<String>,
    /// Only this event.
    #[arg(long, value_name = "ID")]
    pub event: Option<String>,
}

/// What turns a dry run into a recorded change.
#[derive(Debug, Clone, Args)]
pub struct ExecuteArgs {
    /// Act (without it: print what would happen, change nothing). Needs --operator and --reason.
    #[arg(long)]
    pub execute: bool,
    /// Who runs the replay (recorded in `replay history`).
    #[arg(long, value_name = "NAME")]
    pub operator: Option<String>,
    /// Why (recorded in `replay history`), e.g. an incident number.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// The delivery statuses a replay can start from (`sending` never).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplayStatus {
    Failed,
    Cancelled,
    Pending,
    Sent,
    /// Refused by the recipient's server after the relay accepted it (the
    /// address was fixed since).
    Bounced,
}

/// Whose directory `replay events` resolves against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Resolve {
    /// The directory as it is now.
    Current,
    /// The directory at the event's time (not supported: the directory is not versioned).
    Original,
}

#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Give the matching deliveries a new attempt cycle: pending, due now, retry step 0, a new deadline.
    Deliveries {
        /// The status to replay from. `sent` also needs --include-sent.
        #[arg(long, value_enum)]
        status: ReplayStatus,
        #[command(flatten)]
        filters: ReplayFilters,
        /// Allow re-sending deliveries that were already sent (with --status sent).
        #[arg(long)]
        include_sent: bool,
        #[command(flatten)]
        execute: ExecuteArgs,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Resolve recipients again for stored module events and add deliveries for addresses that have none yet.
    Events {
        #[command(flatten)]
        filters: ReplayFilters,
        /// Resolve against the current directory (`original` is not supported).
        #[arg(long, value_enum, default_value = "current")]
        resolve: Resolve,
        #[command(flatten)]
        execute: ExecuteArgs,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Executed replays and redrives, newest first.
    History {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// Quarantined messages, newest first (open ones unless --all).
    List {
        /// Also the ones already redriven.
        #[arg(long)]
        all: bool,
        /// At most this many rows.
        #[arg(long, default_value = "100")]
        limit: i64,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// One quarantined message with its raw body (as text).
    Show {
        id: i64,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Ingest quarantined messages again after a fix; those still invalid stay, with the new reason.
    Redrive {
        /// Quarantine ids.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Every open row.
        #[arg(long)]
        all: bool,
        /// Who redrives (recorded in `replay history`).
        #[arg(long, value_name = "NAME")]
        operator: Option<String>,
        /// Why (recorded in `replay history`).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BouncesCommand {
    /// Read one message (as an MTA's pipe transport delivers it) or a maildir. Exit 0 handled, 75 not stored (the MTA retries), 64 wrong command line.
    Ingest {
        /// The message; `-` reads standard input.
        #[arg(conflicts_with = "maildir", required_unless_present = "maildir")]
        file: Option<PathBuf>,
        /// The envelope recipient (Postfix pipe: `${recipient}`); else Delivered-To, X-Original-To, To.
        #[arg(long, value_name = "ADDR", conflicts_with = "maildir")]
        recipient: Option<String>,
        /// Read every message in DIR/new, moving each to DIR/cur once recorded.
        #[arg(long, value_name = "DIR")]
        maildir: Option<PathBuf>,
    },
    /// Messages read back, oldest first.
    List {
        /// hard, delayed, auto_reply, unmatched, forged or unparseable.
        #[arg(long)]
        outcome: Option<String>,
        /// From this time on: RFC 3339, or a duration back from now (30m, 2h, 3d).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// Render every kind in strict mode with the sample, minimal (optional fields absent) and hostile data; exit 1 on any problem.
    Check,
    /// Write KIND.html, KIND.txt and KIND.eml of every kind from the sample data, and KIND.hostile.* from hostile data.
    Preview {
        /// The folder to write to (created when missing).
        #[arg(long, value_name = "DIR")]
        output: PathBuf,
        /// Render as on this date (YYYY-MM-DD): deadlines count from it. Default: the samples' own day, 2026-10-14.
        #[arg(long, value_name = "DATE")]
        today: Option<chrono::NaiveDate>,
    },
    /// Render one event (a CloudEvent, or an `events`/`deliveries` line of `notifier export`) to standard output.
    Render {
        /// The mail kind, e.g. contract.voorstel_aangeboden or beheer.geen_ontvanger.
        kind: String,
        /// The file; `-` reads standard input.
        #[arg(long, value_name = "FILE")]
        event: PathBuf,
        #[arg(long, value_enum, default_value = "eml")]
        part: templates::Part,
        /// Render as on this date (YYYY-MM-DD). Default: today in the Netherlands.
        #[arg(long, value_name = "DATE")]
        today: Option<chrono::NaiveDate>,
        /// The practice name to show (the directory's); default: the AGB code.
        #[arg(long, value_name = "NAME")]
        praktijk: Option<String>,
    },
    /// Send the sample mail of KIND, subject marked [TEST], through the configured relay.
    SendTest {
        kind: String,
        /// The address to send it to.
        #[arg(long, value_name = "ADDR")]
        to: String,
    },
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

impl From<crate::templates::TemplateError> for CliError {
    fn from(e: crate::templates::TemplateError) -> Self {
        Self::Config(format!(
            "{e} (fix the template; `notifier templates check` lists every problem)"
        ))
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Dependency(e.to_string())
    }
}

/// Parses the command line, runs the command, and maps errors to exit codes.
pub async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let bounce_ingest = bounces::is_ingest_command_line(&args);
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if bounce_ingest && e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(bounces::EX_USAGE);
        }
        Err(e) => e.exit(),
    };
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(if bounce_ingest {
                bounces::EX_TEMPFAIL
            } else {
                2
            });
        }
    };
    init_logging(&settings, matches!(cli.command, Command::Run));
    match execute(cli.command, settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if bounce_ingest {
                bounces::ingest_exit_code(&e)
            } else {
                e.code()
            })
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
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level))
        // The template engine's debug lines print the values it renders:
        // names and addresses from events and the directory. Never logged.
        .add_directive("handlebars=warn".parse().expect("a valid directive"));
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
        Command::Templates { command } => match command {
            TemplatesCommand::Check => templates::check(&settings),
            TemplatesCommand::Preview { output, today } => {
                templates::preview(&settings, &output, today)
            }
            TemplatesCommand::Render {
                kind,
                event,
                part,
                today,
                praktijk,
            } => templates::render(
                &settings,
                templates::RenderArgs {
                    kind,
                    event,
                    part,
                    today,
                    praktijk,
                },
            ),
            TemplatesCommand::SendTest { kind, to } => {
                templates::send_test(&settings, &kind, &to).await
            }
        },
        Command::Demo { database, outbox } => samples::demo(settings, &database, &outbox).await,
        Command::Replay { command } => match command {
            ReplayCommand::Deliveries {
                status,
                filters,
                include_sent,
                execute,
                format,
            } => replay::deliveries(settings, status, filters, include_sent, execute, format).await,
            ReplayCommand::Events {
                filters,
                resolve,
                execute,
                format,
            } => replay::events(settings, filters, resolve, execute, format).await,
            ReplayCommand::History { format } => replay::history(settings, format).await,
        },
        Command::Purge {
            older_than,
            vacuum,
            execute,
            format,
        } => purge::purge(settings, older_than, vacuum, execute, format).await,
        Command::Quarantine { command } => match command {
            QuarantineCommand::List { all, limit, format } => {
                quarantine::list(settings, all, limit, format).await
            }
            QuarantineCommand::Show { id, format } => quarantine::show(settings, id, format).await,
            QuarantineCommand::Redrive {
                ids,
                all,
                operator,
                reason,
            } => quarantine::redrive(settings, ids, all, operator, reason).await,
        },
        Command::Bounces { command } => match command {
            BouncesCommand::Ingest {
                file,
                recipient,
                maildir,
            } => bounces::ingest(settings, file, recipient, maildir).await,
            BouncesCommand::List {
                outcome,
                since,
                format,
            } => bounces::list(settings, outcome, since, format).await,
        },
        Command::Check { older_than, format } => check::check(settings, older_than, format).await,
        Command::Stats { since, format } => check::stats(settings, &since, format).await,
        Command::Export { output } => transfer::export(settings, &output).await,
        Command::Import { input } => transfer::import(settings, &input).await,
    }
}

/// A time given on the command line: RFC 3339 (`2026-10-14T08:00:00Z`), or
/// a duration back from `now` (`30m`, `2h`, `3d`). Epoch milliseconds.
pub fn parse_time(
    flag: &str,
    s: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<i64, CliError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.timestamp_millis());
    }
    match crate::config::HumanDuration::parse(s) {
        Ok(d) => Ok(now.timestamp_millis() - d.0.as_millis() as i64),
        Err(_) => Err(CliError::Usage(format!(
            "{flag} {s}: expected an RFC 3339 time like 2026-10-14T08:00:00Z, or a duration back from now like 30m, 2h or 3d"
        ))),
    }
}

/// A read-only transaction for commands that only look.
async fn read_conn(store: &crate::store::Store) -> Result<crate::store::Tx, CliError> {
    Ok(store.begin_read().await?)
}

pub use crate::pipeline::recovery::rfc3339;

/// Prints a report as indented JSON with its keys sorted, as the commands
/// have always printed them.
fn print_json(report: &impl serde::Serialize) {
    let v = serde_json::to_value(report).expect("reports are plain data");
    println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
}
