//! [`Deployment`]: the world of `notifier run` subprocesses (the real
//! binary), for tests of several instances, kills and restarts.

use super::config::TestConfig;
use super::db::{TestBackend, TestDb, migrated_store};
use super::process::RunProcess;
use super::smtp_server::TestSmtpServer;
use super::{TopologyGuard, declare_topology};
use notifier::config::Settings;
use notifier::store::Store;
use std::path::PathBuf;

/// A folder with `config.toml`, a test relay, a database, and the test's
/// exchange and queues: declared, so events published before any worker
/// runs are queued, and removed when this is dropped.
pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub smtp: TestSmtpServer,
    /// `config.toml`, for `notifier --config`.
    pub config: PathBuf,
    /// What `config.toml` says.
    pub settings: Settings,
    _topology: TopologyGuard,
    _db: Option<TestDb>,
}

impl Deployment {
    /// On `backend`: SQLite is `notifier.db` in the folder (not created
    /// yet), PostgreSQL a fresh, empty database.
    pub async fn new(backend: TestBackend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let smtp = TestSmtpServer::start().await;
        let mut config = TestConfig::new(dir.path()).smtp(&smtp.url());
        let db = match backend {
            TestBackend::Sqlite => None,
            TestBackend::Postgres => Some(TestDb::postgres().await),
        };
        if let Some(db) = &db {
            config = config.database(&db.url);
        }
        let (config, settings) = config.config_file();
        let topology = TopologyGuard(settings.amqp.clone());
        declare_topology(&settings.amqp).await;
        Self {
            dir,
            smtp,
            config,
            settings,
            _topology: topology,
            _db: db,
        }
    }

    /// The folder, the relay, `config.toml` and its settings, for a test
    /// that uses them all.
    pub fn parts(&self) -> (&tempfile::TempDir, &TestSmtpServer, &PathBuf, &Settings) {
        (&self.dir, &self.smtp, &self.config, &self.settings)
    }

    /// A migrated store on the deployment's database.
    pub async fn store(&self) -> Store {
        migrated_store(self.settings.database.url.expose_secret()).await
    }

    /// Starts `notifier --config config.toml run` as `name` (its log is
    /// `name.log` in the folder), with `env` on top.
    pub fn spawn(&self, name: &str, env: &[(&str, &str)]) -> RunProcess {
        RunProcess::spawn(&self.config, name, env)
    }
}
