//! Test support: `spawn_app` runs the real service in-process against the
//! machine's RabbitMQ (a unique exchange and queue per test), a temp SQLite
//! file (or, with `TEST_BACKEND=postgres`, a fresh PostgreSQL
//! database), and a scriptable SMTP server over TCP. [`TestDb`] makes and
//! removes the per-test databases.

pub mod proxy;
pub mod smtp_server;

use figment::Figment;
use figment::providers::{Format, Toml};
use notifier::app::{App, RunError};
use notifier::broker::publisher::Publisher;
use notifier::config::{DEFAULT_TOML, Settings};
use notifier::store::Store;
use notifier::store::deliveries::{self as dl, DeliveryFilter, DeliveryRow};
use smtp_server::{ReceivedMail, TestSmtpServer};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Generous upper bound for waiting on a state.
pub const WAIT: Duration = Duration::from_secs(30);

/// The contract's example of `type` (copied into templates/samples/events).
pub fn sample(event_type: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(format!(
        "{}/templates/samples/events/{event_type}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("sample event");
    serde_json::from_str(&text).unwrap()
}

/// The sample event with a fresh id.
pub fn fresh(event_type: &str) -> serde_json::Value {
    let mut v = sample(event_type);
    v["id"] = uuid::Uuid::new_v4().to_string().into();
    // Deadlines run from the event time: a fresh event happened now.
    v["time"] = chrono::Utc::now().to_rfc3339().into();
    v
}

pub fn sample_directory() -> String {
    std::fs::read_to_string(format!(
        "{}/templates/samples/directory.jsonl",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Settings for one test: unique AMQP names, a temp database, fast timings.
pub fn test_settings(dir: &std::path::Path, smtp_url: &str, extra: &str) -> Settings {
    let toml = test_toml(dir, smtp_url);
    let fig = Figment::from(Toml::string(DEFAULT_TOML))
        .merge(Toml::string(&toml))
        .merge(Toml::string(extra));
    Settings::from_figment(fig).expect("test settings")
}

/// The TOML behind [`test_settings`], for a `notifier` subprocess (`--config`).
pub fn test_toml(dir: &std::path::Path, smtp_url: &str) -> String {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let db = dir.join("notifier.db");
    format!(
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
url = "{smtp_url}"
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
        db = db.display(),
        outbox = dir.join("outbox").display(),
    )
}

/// The PostgreSQL server the tests use (trust auth), without a database name.
/// `TEST_PG_SERVER` overrides it, e.g. `postgres://postgres@db:5432`. (Not a
/// `NOTIFIER_` variable: the binary refuses unknown `NOTIFIER_*` settings, and
/// subprocesses inherit the environment.)
pub fn pg_server() -> String {
    std::env::var("TEST_PG_SERVER")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    Sqlite,
    Postgres,
}

impl TestBackend {
    /// The backend `spawn_app` uses: PostgreSQL when
    /// `TEST_BACKEND=postgres`, else SQLite.
    pub fn from_env() -> Self {
        match std::env::var("TEST_BACKEND").as_deref() {
            Ok("postgres") | Ok("pg") => Self::Postgres,
            _ => Self::Sqlite,
        }
    }
}

/// A fresh, empty database for one test. SQLite: a file in a temp directory.
/// PostgreSQL: a new database `notifier_test_<uuid>`, dropped (`WITH (FORCE)`,
/// so open pools do not keep it alive) when this value is dropped.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A new database on `backend`.
    pub async fn new(backend: TestBackend) -> Self {
        match backend {
            TestBackend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let mut db = Self::sqlite(dir.path());
                db._dir = Some(dir);
                db
            }
            TestBackend::Postgres => Self::postgres().await,
        }
    }

    /// A SQLite file `notifier.db` in `dir` (removed with `dir`).
    pub fn sqlite(dir: &std::path::Path) -> Self {
        Self {
            url: format!("sqlite://{}", dir.join("notifier.db").display()),
            pg_name: None,
            _dir: None,
        }
    }

    /// A new PostgreSQL database, created through the `postgres` database.
    pub async fn postgres() -> Self {
        use sqlx::Connection;
        let name = format!("notifier_test_{}", uuid::Uuid::new_v4().simple());
        let admin = format!("{}/postgres", pg_server());
        let mut c = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL at {admin} (trust auth, user postgres) is needed: {e}")
            });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .unwrap();
        let _ = c.close().await;
        Self {
            url: format!("{}/{name}", pg_server()),
            pg_name: Some(name),
            _dir: None,
        }
    }

    /// A migrated store on this database.
    pub async fn store(&self) -> Store {
        let store = Store::connect(&self.url, 4).await.unwrap();
        store.migrate().await.unwrap();
        store
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let admin = format!("{}/postgres", pg_server());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

/// A running service with its SMTP server and a publisher.
pub struct TestApp {
    pub smtp: TestSmtpServer,
    pub publisher: Publisher,
    pub store: Store,
    pub http_addr: std::net::SocketAddr,
    /// The service's settings (for running the CLI against its database).
    pub settings: Settings,
    amqp: notifier::config::AmqpSettings,
    _db: Option<TestDb>,
    _dir: Option<tempfile::TempDir>,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<Result<(), RunError>>>,
}

/// Starts the service; `extra` is TOML merged over the test settings.
pub async fn spawn_app(extra: &str) -> TestApp {
    spawn_app_with(extra, TestBackend::from_env(), |_| {}).await
}

/// Starts the service on `backend`; `rewrite` may change the service's
/// settings last (e.g. route its database or broker through a [`proxy::TcpProxy`]),
/// while the test's own store and publisher keep talking to them directly.
pub async fn spawn_app_with(
    extra: &str,
    backend: TestBackend,
    rewrite: impl FnOnce(&mut Settings),
) -> TestApp {
    spawn_app_prepared(extra, backend, rewrite, async |_, _| {}).await
}

/// Like [`spawn_app_with`]; `prepare` runs on the migrated database and the
/// declared topology before the service starts (e.g. to queue a backlog
/// that the service then takes as one batch).
pub async fn spawn_app_prepared(
    extra: &str,
    backend: TestBackend,
    rewrite: impl FnOnce(&mut Settings),
    prepare: impl AsyncFnOnce(&Store, &Settings),
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let smtp = TestSmtpServer::start().await;
    let mut settings = test_settings(dir.path(), &smtp.url(), extra);
    let db = match backend {
        TestBackend::Sqlite => None,
        TestBackend::Postgres => {
            let db = TestDb::postgres().await;
            settings.database.url = db.url.clone();
            Some(db)
        }
    };
    let store = Store::connect(&settings.database.url, 4).await.unwrap();
    store.migrate().await.unwrap();
    declare_topology(&settings.amqp).await;
    prepare(&store, &settings).await;
    let direct_amqp = settings.amqp.url.clone();
    let mut service = settings.clone();
    rewrite(&mut service);
    let service = App::build(service).await.expect("app started");
    let http_addr = service.http_addr();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(service.run(shutdown.clone()));
    let publisher = Publisher::connect(&direct_amqp, &settings.amqp.exchange)
        .await
        .unwrap();
    let app = TestApp {
        smtp,
        publisher,
        store,
        http_addr,
        amqp: settings.amqp.clone(),
        settings: settings.clone(),
        _db: db,
        _dir: Some(dir),
        shutdown,
        handle: Some(handle),
    };
    app.wait_until_consuming().await;
    app
}

impl TestApp {
    /// Loads the sample directory.
    pub async fn import_directory(&self, text: &str) {
        notifier::cli::input::import_users(&self.store, text, &mut |n, r| panic!("line {n}: {r}"))
            .await
            .unwrap();
    }

    pub async fn publish(&self, event: &serde_json::Value) {
        let t = event["type"].as_str().unwrap_or("unknown");
        self.publisher
            .publish(t, event["id"].as_str(), event.to_string().as_bytes())
            .await
            .unwrap();
    }

    /// Publishes the sample of `event_type` with a fresh id; returns the id.
    pub async fn publish_fresh(&self, event_type: &str) -> String {
        let e = fresh(event_type);
        self.publish(&e).await;
        e["id"].as_str().unwrap().to_owned()
    }

    /// The attempts of one delivery, in order.
    pub async fn attempts(&self, delivery_id: &str) -> Vec<dl::AttemptRow> {
        let mut c = self.store.pool().acquire().await.unwrap();
        dl::attempts(&mut c, delivery_id).await.unwrap()
    }

    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        self.publisher
            .publish(routing_key, None, body)
            .await
            .unwrap();
    }

    async fn wait_until_consuming(&self) {
        let url = format!("http://{}/readyz", self.http_addr);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let body = http_get(&url).await.unwrap_or_default();
            if body.contains("\"consuming\"") {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "consumer never started: {body}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn deliveries(&self, event_id: Option<&str>) -> Vec<DeliveryRow> {
        let mut c = self.store.pool().acquire().await.unwrap();
        dl::list(
            &mut c,
            &DeliveryFilter {
                event_id: event_id.map(str::to_owned),
                ..Default::default()
            },
        )
        .await
        .unwrap()
    }

    /// Waits until `pred` holds for the deliveries of `event_id` (polling the store).
    pub async fn wait_deliveries(
        &self,
        event_id: Option<&str>,
        what: &str,
        pred: impl Fn(&[DeliveryRow]) -> bool,
    ) -> Vec<DeliveryRow> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let rows = self.deliveries(event_id).await;
            if pred(&rows) {
                return rows;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}; deliveries: {rows:#?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the event is recorded (accepted or otherwise).
    pub async fn wait_event(&self, id: &str) -> notifier::store::events::EventRow {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut c = self.store.pool().acquire().await.unwrap();
            if let Some(e) = notifier::store::events::get_event(&mut c, id)
                .await
                .unwrap()
            {
                return e;
            }
            drop(c);
            assert!(
                tokio::time::Instant::now() < deadline,
                "event {id} never recorded"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn quarantine(&self) -> Vec<notifier::store::events::QuarantineRow> {
        let mut c = self.store.pool().acquire().await.unwrap();
        notifier::store::events::list_quarantine(&mut c, false, 100)
            .await
            .unwrap()
    }

    pub async fn wait_mails(&self, n: usize) -> Vec<ReceivedMail> {
        self.smtp.wait_for_count(n, WAIT).await.unwrap()
    }

    /// The test's database URL: its SQLite file, or its PostgreSQL database
    /// under `TEST_BACKEND=postgres` (for running the binary on it).
    pub fn db_url(&self) -> String {
        match &self._db {
            Some(db) => db.url.clone(),
            None => format!(
                "sqlite://{}",
                self._dir
                    .as_ref()
                    .expect("running app")
                    .path()
                    .join("notifier.db")
                    .display()
            ),
        }
    }

    /// Tells the service to stop, without waiting for it ([`Self::stop`]
    /// waits).
    pub fn request_stop(&self) {
        self.shutdown.cancel();
    }

    /// Shuts the service down (it must exit cleanly) and removes the test's
    /// queues and exchanges. Returns the PostgreSQL test database (if any):
    /// it is dropped, with the data, when the caller drops it.
    pub async fn stop(mut self) -> Stopped {
        self.request_stop();
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
        delete_topology(&self.amqp).await;
        Stopped {
            _db: self._db.take(),
            _dir: self._dir.take(),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What a stopped app leaves: its database (and the folder of a SQLite file)
/// live as long as this value, for checks after the stop.
pub struct Stopped {
    _db: Option<TestDb>,
    _dir: Option<tempfile::TempDir>,
}

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

/// Runs the `notifier` binary with the test's settings in the environment.
pub fn cli(settings: &Settings, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
        .args(args)
        .env("NOTIFIER_DATABASE__URL", &settings.database.url)
        .env("NOTIFIER_SMTP__URL", &settings.smtp.url)
        .env("NOTIFIER_SMTP__OUTBOX_DIR", &settings.smtp.outbox_dir)
        .env("NOTIFIER_SMTP__MAX_RATE", "0")
        .output()
        .expect("run notifier")
}

/// Deletes a test's queues and exchanges (quorum queues are not free on the broker).
pub async fn delete_topology(a: &notifier::config::AmqpSettings) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Ok(conn) =
        lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        for q in [&a.queue, &a.dead_letter_queue] {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for e in [&a.exchange, &a.dead_letter_exchange] {
            let _ = ch
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = conn.close(200, "test done".into()).await;
}

/// A directory of `n` active users of `agb` with every right, each with its own address.
pub fn many_users(agb: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "gebruikersnummer": format!("2{i:013}"),
                "naam": format!("Gebruiker {i}"),
                "email": format!("user{i}@praktijk{agb}.example"),
                "status": "actief",
                "koppelingen": [{"agb_code": agb, "rechten": ["uitvragen", "contracteren", "onderhandelen", "naleving"],
                                 "tekenbevoegd": i == 0, "contactpersoon": i == 0}],
                "versie": 1
            })
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A module event for `agb` that every user of [`many_users`] receives.
pub fn event_for(agb: &str) -> serde_json::Value {
    let mut e = fresh("uitvraag.vragenlijst_klaargezet");
    e["data"]["agb_code"] = agb.into();
    e
}

/// [`test_toml`] with `database.url` set to `db_url` (e.g. a [`TestDb`]'s).
pub fn test_toml_with_db(dir: &std::path::Path, smtp_url: &str, db_url: &str) -> String {
    let toml = test_toml(dir, smtp_url);
    let sqlite_line = toml
        .lines()
        .find(|l| l.starts_with("url = \"sqlite://"))
        .expect("test_toml sets database.url")
        .to_owned();
    toml.replace(&sqlite_line, &format!("url = \"{db_url}\""))
}

/// Settings parsed from a TOML written by [`test_toml`] (the same a `notifier --config` subprocess reads).
/// Writes `toml` as `dir/config.toml` for a `notifier --config` subprocess and
/// returns the path with the settings it means.
pub fn config_file(dir: &std::path::Path, toml: &str) -> (std::path::PathBuf, Settings) {
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, toml).unwrap();
    (cfg, settings_from_toml(toml))
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

pub fn settings_from_toml(toml: &str) -> Settings {
    Settings::from_figment(Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(toml)))
        .expect("test settings")
}

/// Declares the test's exchange and queues, so events published before any
/// worker runs are queued.
pub async fn declare_topology(a: &notifier::config::AmqpSettings) {
    let conn = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    notifier::broker::topology::declare(&ch, a).await.unwrap();
    let _ = conn.close(200, "ok".into()).await;
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `notifier run` subprocess (the real binary) with its own HTTP port and a
/// log file. Dropping it kills the process, so a failed test leaves none behind.
pub struct RunProcess {
    pub child: std::process::Child,
    pub http: std::net::SocketAddr,
    pub log: std::path::PathBuf,
}

impl RunProcess {
    /// Starts `notifier --config CONFIG run` with `env` on top.
    pub fn spawn(config: &std::path::Path, name: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn_bin(
            std::path::Path::new(env!("CARGO_BIN_EXE_notifier")),
            config,
            name,
            env,
        )
    }

    /// [`RunProcess::spawn`] with another build of the binary (e.g. release).
    pub fn spawn_bin(
        bin: &std::path::Path,
        config: &std::path::Path,
        name: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = config.with_file_name(format!("{name}.log"));
        let child = std::process::Command::new(bin)
            .args(["--config", config.to_str().unwrap(), "run"])
            .env("NOTIFIER_HTTP__LISTEN", http.to_string())
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        Self { child, http, log }
    }

    /// Waits until `/readyz` says it consumes from the queue.
    pub async fn wait_consuming(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let body = http_get(&format!("http://{}/readyz", self.http))
                .await
                .unwrap_or_default();
            if body.contains("\"consuming\"") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("notifier run exited with {status}: {}", self.log_text());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "notifier run never consumed: {body}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.http))
            .await
            .unwrap_or_default()
    }

    /// SIGKILL: no shutdown, leases and unacked messages left behind.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait; returns whether it exited with 0.
    pub fn terminate(&mut self) -> bool {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        ok && self.child.wait().unwrap().success()
    }

    /// What the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RunProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `pred` holds for all deliveries in `store`, polling with a deadline.
pub async fn wait_all_deliveries(
    store: &Store,
    within: Duration,
    what: &str,
    pred: impl Fn(&[DeliveryRow]) -> bool,
) -> Vec<DeliveryRow> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let rows = {
            let mut c = store.pool().acquire().await.unwrap();
            dl::list(&mut c, &DeliveryFilter::default()).await.unwrap()
        };
        if pred(&rows) {
            return rows;
        }
        if tokio::time::Instant::now() > deadline {
            let mut by_status: std::collections::BTreeMap<&str, usize> = Default::default();
            for r in &rows {
                *by_status.entry(r.status.as_str()).or_default() += 1;
            }
            panic!(
                "timed out waiting for {what}: {} deliveries {by_status:?}",
                rows.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deletes a test's queues and exchanges when dropped, also when the test
/// fails half-way (quorum queues left behind cost the broker memory).
pub struct TopologyGuard(pub notifier::config::AmqpSettings);

impl Drop for TopologyGuard {
    fn drop(&mut self) {
        let a = self.0.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(delete_topology(&a));
        })
        .join();
    }
}

/// One `gebruiker.bijgewerkt` data object: links are (agb, rights, tekenbevoegd, contactpersoon).
pub fn user(
    nr: &str,
    email: &str,
    active: bool,
    links: &[(&str, &[&str], bool, bool)],
    versie: i64,
) -> serde_json::Value {
    serde_json::json!({
        "gebruikersnummer": nr,
        "naam": format!("Gebruiker {}", &nr[10..]),
        "email": email,
        "status": if active { "actief" } else { "ingetrokken" },
        "koppelingen": links.iter().map(|(agb, rechten, teken, cp)| serde_json::json!({
            "agb_code": agb, "rechten": rechten, "tekenbevoegd": teken, "contactpersoon": cp
        })).collect::<Vec<_>>(),
        "versie": versie,
    })
}

/// A `gebruiker.bijgewerkt` event carrying `data`.
pub fn user_event(data: serde_json::Value) -> serde_json::Value {
    let mut e = fresh("gebruiker.bijgewerkt");
    e["data"] = data;
    e
}

/// The sample event of `event_type`, fresh, about `agb`.
pub fn fresh_for(event_type: &str, agb: &str) -> serde_json::Value {
    let mut e = fresh(event_type);
    e["data"]["agb_code"] = agb.into();
    e
}

impl TestApp {
    /// Loads users given as data objects.
    pub async fn import_users(&self, users: &[serde_json::Value]) {
        let text: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        self.import_directory(&text.join("\n")).await;
    }

    /// Publishes and waits until every delivery of the event is final.
    pub async fn publish_and_settle(&self, event: &serde_json::Value) -> Vec<DeliveryRow> {
        self.publish(event).await;
        let id = event["id"].as_str().unwrap();
        self.wait_event(id).await;
        self.wait_deliveries(Some(id), "all final", |r| {
            r.iter()
                .all(|d| matches!(d.status.as_str(), "sent" | "failed" | "cancelled"))
        })
        .await
    }

    /// The mails received so far, parsed.
    pub fn parsed_mails(&self) -> Vec<Parsed> {
        self.smtp.messages().iter().map(parse_mail).collect()
    }
}

/// A `notifier` subprocess that is killed if the test ends early (a failed
/// assertion must not leave a worker running).
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
