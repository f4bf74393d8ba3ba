//! What an operator does by hand with the real binary: an installation
//! made with `migrate` and `directory import`, mail that failed at the
//! relay, and the replay that sends it again.

use super::config::TestConfig;
use super::process::{cli, ok};
use super::sample_directory;
use super::smtp_server::TestSmtpServer;
use notifier::config::Settings;
use serde_json::Value;
use std::path::Path;
use std::process::Output;

/// A SQLite installation in a folder of its own, migrated and with the
/// sample directory imported by the binary, and a test relay. Bind every
/// field when taking it apart (`dir: _dir`, not `..`): the folder holds the
/// database, the relay the mail.
pub struct Installation {
    pub dir: tempfile::TempDir,
    pub smtp: TestSmtpServer,
    pub settings: Settings,
}

impl Installation {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let smtp = TestSmtpServer::start().await;
        let settings = TestConfig::new(dir.path()).smtp(&smtp.url()).settings();
        install_sample_directory(&settings, dir.path());
        Self {
            dir,
            smtp,
            settings,
        }
    }

    /// The starting point of a replay: the relay refused (550) every
    /// address containing `refused` while `events` were ingested and
    /// dispatched until idle, so that mail is `failed`. The relay keeps
    /// refusing until its script is reset.
    pub async fn with_failed_mail(refused: &str, events: &[&Value]) -> Self {
        let it = Self::new().await;
        it.smtp.reply_for_rcpt(refused, "550 5.1.1 No such user");
        let file = events_file(it.dir.path(), "events.jsonl", events);
        ok(&cli(&it.settings, &["ingest", &file]));
        ok(&cli(&it.settings, &["dispatch", "--until-idle"]));
        it
    }
}

/// `notifier migrate` and `notifier directory import` of the sample
/// directory (written to `dir/directory.jsonl`); both must succeed.
pub fn install_sample_directory(s: &Settings, dir: &Path) {
    ok(&cli(s, &["migrate"]));
    let file = dir.join("directory.jsonl");
    std::fs::write(&file, sample_directory()).unwrap();
    ok(&cli(s, &["directory", "import", file.to_str().unwrap()]));
}

/// Writes events as a JSONL file `dir/name`; returns its path.
pub fn events_file(dir: &Path, name: &str, events: &[&Value]) -> String {
    let path = dir.join(name);
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `notifier replay ARGS --execute` by operator `ops-test` giving `reason`,
/// with JSON output; `args` names what and filters, e.g.
/// `["deliveries", "--status", "failed"]`.
pub fn replay_executed(s: &Settings, args: &[&str], reason: &str) -> Output {
    let mut all = vec!["replay"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--execute",
        "--operator",
        "ops-test",
        "--reason",
        reason,
        "--format",
        "json",
    ]);
    cli(s, &all)
}
