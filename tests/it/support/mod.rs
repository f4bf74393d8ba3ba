//! Test support. [`spawn_app`] runs the real service in-process against the
//! machine's RabbitMQ (a unique exchange and queue per test), a temp SQLite
//! file (or, with `TEST_BACKEND=postgres`, a fresh PostgreSQL database), and
//! a scriptable SMTP server over TCP. [`TestConfig`] makes every test's
//! settings; [`TestDb`] the per-test databases; [`cli`] runs one command of
//! the real binary, [`Deployment`] and [`RunProcess`] `notifier run`
//! processes, [`Installation`] an operator's installation driven with the
//! binary, [`roles`] the least-privilege accounts of the deploy files.

mod app;
mod broker;
pub mod config;
mod db;
mod deployment;
mod events;
mod operator;
mod process;
pub mod proxy;
pub mod roles;
pub mod smtp_server;
pub mod tls;

pub use app::{
    HOLD_SENDING, TestApp, ingest_and_dispatch_one, spawn_app, spawn_app_holding_sending,
    spawn_app_prepared, spawn_app_with,
};
pub use broker::{AMQP_URL, TopologyGuard, declare_topology, delete_topology};
pub use config::TestConfig;
pub use db::{
    TestBackend, TestDb, deliveries, import_directory, migrated_store, wait_all_deliveries,
    wait_for_deliveries,
};
pub use deployment::Deployment;
pub use events::{
    Role, active_user, event_for, fresh, fresh_for, many_users, sample, sample_directory, user,
    user_event,
};
pub use operator::{Installation, events_file, install_sample_directory, replay_executed};
pub use process::{RunProcess, cli, cli_env, free_port, json, ok, stderr, stdout};

use smtp_server::ReceivedMail;
use std::time::Duration;

/// Generous upper bound for waiting on a state.
pub const WAIT: Duration = Duration::from_secs(30);

/// A minimal HTTP/1.0 GET over TCP (no HTTP client dependency for tests).
pub async fn http_get(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
    let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    Some(buf)
}

/// Waits until `pred` holds for the answer to `GET url` (status line,
/// headers and body; empty while nothing answers), for at most `within`;
/// `what` names the wait in the failure. Returns the answer.
pub async fn wait_http(
    url: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let body = http_get(url).await.unwrap_or_default();
        if pred(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A parsed mail.
pub struct Parsed {
    pub subject: String,
    pub text: String,
    pub html: String,
    pub message_id: String,
    pub raw: String,
}

pub fn parse_mail(m: &ReceivedMail) -> Parsed {
    let msg = mail_parser::MessageParser::default()
        .parse(&m.data)
        .expect("a MIME message");
    Parsed {
        subject: msg.subject().unwrap_or_default().to_owned(),
        text: msg.body_text(0).map(|c| c.into_owned()).unwrap_or_default(),
        html: msg.body_html(0).map(|c| c.into_owned()).unwrap_or_default(),
        message_id: msg.message_id().unwrap_or_default().to_owned(),
        raw: m.data_str(),
    }
}

/// Copies a folder tree (e.g. `templates/`, to break one template in a test).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &p);
        } else {
            std::fs::copy(e.path(), p).unwrap();
        }
    }
}
