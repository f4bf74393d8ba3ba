//! [`TestConfig`]: the one way a test makes its settings, in-process
//! ([`TestConfig::settings`]) or for a `notifier --config` subprocess
//! ([`TestConfig::config_file`]); both read the same TOML.

use figment::Figment;
use figment::providers::{Format, Toml};
use notifier::config::{DEFAULT_TOML, Settings};
use std::path::{Path, PathBuf};

/// A test's settings as TOML layers over `config/default.toml`: unique AMQP
/// names, a SQLite file and an outbox in the test's folder, fast timings
/// (seconds, not hours), and whatever the test adds with [`Self::with`].
#[derive(Clone)]
pub struct TestConfig {
    dir: PathBuf,
    toml: toml::Table,
}

impl TestConfig {
    /// The test settings for the folder `dir`: database `dir/notifier.db`,
    /// outbox `dir/outbox`, no relay ([`Self::smtp`] sets one).
    pub fn new(dir: &Path) -> Self {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let base = format!(
            r#"
[amqp]
exchange = "test.{tag}.events"
queue = "test.{tag}.q"
dead_letter_exchange = "test.{tag}.dlx"
dead_letter_queue = "test.{tag}.dead"
reconnect_min = "100ms"
reconnect_max = "1s"
[database]
url = "sqlite://{db}"
[smtp]
url = ""
outbox_dir = "{outbox}"
max_rate = 0
timeout = "5s"
connect_timeout = "2s"
[dispatch]
idle_poll = "50ms"
lease = "30s"
[retry]
schedule = ["1s"]
repeat = "1s"
jitter = 0.0
[breaker]
open_for = "1s"
[http]
listen = "127.0.0.1:0"
[log]
format = "pretty"
level = "warn"
"#,
            db = dir.join("notifier.db").display(),
            outbox = dir.join("outbox").display(),
        );
        Self {
            dir: dir.to_owned(),
            toml: base.parse().expect("the base test TOML"),
        }
    }

    /// The relay (`smtp.url`), e.g. a [`super::smtp_server::TestSmtpServer`]'s.
    pub fn smtp(self, url: &str) -> Self {
        self.with(&format!("[smtp]\nurl = {}", toml::Value::from(url)))
    }

    /// Another broker (`amqp.url`), e.g. through a [`super::proxy::TcpProxy`].
    pub fn amqp(self, url: &str) -> Self {
        self.with(&format!("[amqp]\nurl = {}", toml::Value::from(url)))
    }

    /// Another database (`database.url`), e.g. a [`super::TestDb`]'s.
    pub fn database(self, url: &str) -> Self {
        self.with(&format!("[database]\nurl = {}", toml::Value::from(url)))
    }

    /// `toml` merged over what is set so far, key by key (later wins).
    pub fn with(mut self, toml: &str) -> Self {
        let layer: toml::Table = toml.parse().expect("test TOML");
        merge(&mut self.toml, layer);
        self
    }

    /// The whole TOML.
    pub fn toml(&self) -> String {
        toml::to_string(&self.toml).expect("TOML prints")
    }

    /// The settings this TOML makes over the defaults.
    pub fn settings(&self) -> Settings {
        let fig = Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(&self.toml()));
        Settings::from_figment(fig).expect("test settings")
    }

    /// Writes the TOML as `config.toml` in the test's folder, for
    /// `notifier --config`; returns its path and the settings it means.
    pub fn config_file(&self) -> (PathBuf, Settings) {
        let path = self.dir.join("config.toml");
        std::fs::write(&path, self.toml()).unwrap();
        (path, self.settings())
    }
}

fn merge(into: &mut toml::Table, layer: toml::Table) {
    for (key, value) in layer {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(t)), toml::Value::Table(u)) => merge(t, u),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}
