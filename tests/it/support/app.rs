//! [`TestApp`]: the real service in-process ([`App::build`], then
//! [`App::run`] until the test stops it), with its own SMTP server, a
//! publisher and a store of its own on the same database.

use super::config::TestConfig;
use super::db::{self, TestBackend, TestDb};
use super::smtp_server::{ReceivedMail, TestSmtpServer};
use super::{
    Parsed, WAIT, declare_topology, delete_topology, fresh, http_get, parse_mail, wait_http,
};
use notifier::app::{App, RunError};
use notifier::broker::publisher::Publisher;
use notifier::config::Settings;
use notifier::domain::delivery::DeliveryStatus;
use notifier::store::Store;
use notifier::store::deliveries::{self as dl, DeliveryRow};
use tokio_util::sync::CancellationToken;

/// A running service with its SMTP server and a publisher.
pub struct TestApp {
    pub smtp: TestSmtpServer,
    pub publisher: Publisher,
    /// The test's own store on the service's database.
    pub store: Store,
    pub http_addr: std::net::SocketAddr,
    /// The test's settings (the service's before a `rewrite`), e.g. for
    /// running the CLI against the same database.
    pub settings: Settings,
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
/// settings last (e.g. route its database or broker through a [`super::proxy::TcpProxy`]),
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
    let mut config = TestConfig::new(dir.path()).smtp(&smtp.url()).with(extra);
    let pg = match backend {
        TestBackend::Sqlite => None,
        TestBackend::Postgres => Some(TestDb::postgres().await),
    };
    if let Some(pg) = &pg {
        config = config.database(&pg.url);
    }
    let settings = config.settings();
    let store = db::migrated_store(settings.database.url.expose_secret()).await;
    declare_topology(&settings.amqp).await;
    prepare(&store, &settings).await;
    let mut service = settings.clone();
    rewrite(&mut service);
    let service = App::build(service).await.expect("the service starts");
    let http_addr = service.http_addr();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(service.run(shutdown.clone()));
    let publisher = Publisher::connect(settings.amqp.url.expose_secret(), &settings.amqp.exchange)
        .await
        .unwrap();
    let app = TestApp {
        smtp,
        publisher,
        store,
        http_addr,
        settings,
        _db: pg,
        _dir: Some(dir),
        shutdown,
        handle: Some(handle),
    };
    app.wait_until_consuming().await;
    app
}

/// Breaker settings under which [`TestApp::publish_held`] holds sending:
/// the first failed attempt opens the relay circuit for 3 s.
pub const HOLD_SENDING: &str = "[breaker]\nfailure_threshold = 1\nopen_for = \"3s\"";

/// The service with the sample directory and sending held: the relay is
/// down and [`HOLD_SENDING`] applies, so a change to the directory can be
/// made while mail waits ([`TestApp::publish_held`], then
/// [`TestApp::release_sending`]).
pub async fn spawn_app_holding_sending() -> TestApp {
    let app = spawn_app(HOLD_SENDING).await;
    app.import_directory(&super::sample_directory()).await;
    app.smtp.stop_listening().await;
    app
}

impl TestApp {
    /// Loads directory lines (JSON, one user a line).
    pub async fn import_directory(&self, jsonl: &str) {
        db::import_directory(&self.store, jsonl).await;
    }

    /// Loads users given as data objects.
    pub async fn import_users(&self, users: &[serde_json::Value]) {
        let text: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        self.import_directory(&text.join("\n")).await;
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

    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        self.publisher
            .publish(routing_key, None, body)
            .await
            .unwrap();
    }

    /// Publishes a directory event and waits until it is recorded as
    /// `applied`.
    pub async fn publish_applied(&self, event: &serde_json::Value) {
        self.publish(event).await;
        let row = self.wait_event(event["id"].as_str().unwrap()).await;
        assert_eq!(
            row.state,
            notifier::domain::event::EventState::Applied,
            "{row:?}"
        );
    }

    /// Publishes and waits until every delivery of the event is final.
    pub async fn publish_and_settle(&self, event: &serde_json::Value) -> Vec<DeliveryRow> {
        self.publish(event).await;
        let id = event["id"].as_str().unwrap();
        self.wait_event(id).await;
        self.wait_deliveries(Some(id), "all final", |r| {
            r.iter().all(|d| d.status.is_final())
        })
        .await
    }

    /// With sending held ([`spawn_app_holding_sending`]): publishes a fresh
    /// `event_type` and waits until each of its `n` deliveries was tried
    /// once and is pending again, with no send in flight. Returns the event id.
    pub async fn publish_held(&self, event_type: &str, n: usize) -> String {
        let id = self.publish_fresh(event_type).await;
        self.wait_deliveries(Some(&id), &format!("{n} deliveries held"), |r| {
            r.len() == n
                && r.iter()
                    .all(|d| d.attempts >= 1 && d.status == DeliveryStatus::Pending)
        })
        .await;
        id
    }

    /// Ends [`spawn_app_holding_sending`]'s hold: the relay listens again.
    pub async fn release_sending(&self) {
        self.smtp.start_listening().await;
    }

    /// The attempts of one delivery, in order.
    pub async fn attempts(&self, delivery_id: &str) -> Vec<dl::AttemptRow> {
        let mut c = self.store.pool().acquire().await.unwrap();
        dl::attempts(&mut c, delivery_id).await.unwrap()
    }

    pub async fn deliveries(&self, event_id: Option<&str>) -> Vec<DeliveryRow> {
        db::deliveries(&self.store, event_id).await
    }

    /// Waits until `pred` holds for the deliveries of `event_id` (polling the store).
    pub async fn wait_deliveries(
        &self,
        event_id: Option<&str>,
        what: &str,
        pred: impl Fn(&[DeliveryRow]) -> bool,
    ) -> Vec<DeliveryRow> {
        db::wait_for_deliveries(&self.store, event_id, WAIT, what, pred).await
    }

    /// Waits until the event's delivery of `kind` (e.g. a `beheer.*`
    /// notice) is sent; returns it.
    pub async fn wait_sent(&self, event_id: &str, kind: &str) -> DeliveryRow {
        let what = format!("{kind} sent");
        let rows = self
            .wait_deliveries(Some(event_id), &what, |r| {
                r.iter()
                    .any(|d| d.kind == kind && d.status == DeliveryStatus::Sent)
            })
            .await;
        rows.into_iter()
            .find(|d| d.kind == kind && d.status == DeliveryStatus::Sent)
            .unwrap()
    }

    /// Waits until the event is recorded (accepted or otherwise).
    pub async fn wait_event(&self, id: &str) -> notifier::store::events::EventRow {
        db::wait_event(&self.store, id).await
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

    /// The mails received so far, parsed.
    pub fn parsed_mails(&self) -> Vec<Parsed> {
        self.smtp.messages().iter().map(parse_mail).collect()
    }

    /// The answer to `GET /readyz` (status line, headers, body).
    pub async fn readyz(&self) -> String {
        self.http("/readyz").await
    }

    /// The answer to `GET /metrics`.
    pub async fn metrics(&self) -> String {
        self.http("/metrics").await
    }

    /// Waits until `pred` holds for the answer to `GET /readyz`.
    pub async fn wait_readyz(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let url = format!("http://{}/readyz", self.http_addr);
        wait_http(&url, WAIT, what, pred).await
    }

    /// Waits until `pred` holds for the answer to `GET /metrics`.
    pub async fn wait_metrics(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let url = format!("http://{}/metrics", self.http_addr);
        wait_http(&url, WAIT, what, pred).await
    }

    async fn http(&self, path: &str) -> String {
        http_get(&format!("http://{}{path}", self.http_addr))
            .await
            .expect("the service answers HTTP")
    }

    async fn wait_until_consuming(&self) {
        self.wait_readyz("the consumer to start", |b| b.contains("\"consuming\""))
            .await;
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
        delete_topology(&self.settings.amqp).await;
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

/// With `s`, on a fresh database with the sample directory: ingests one
/// `naleving.aanleververzoek` as from a file and dispatches until idle, as
/// `notifier ingest` and `notifier dispatch --until-idle` would. Returns the
/// store and the dispatcher (for its breaker) with the summary.
pub async fn ingest_and_dispatch_one(
    s: &notifier::config::Settings,
) -> (
    notifier::store::Store,
    notifier::pipeline::dispatch::Dispatcher,
    notifier::pipeline::dispatch::DispatchSummary,
) {
    use notifier::pipeline::ingest::{Incoming, Source};
    let store = db::migrated_store(s.database.url.expose_secret()).await;
    db::import_directory(&store, &super::sample_directory()).await;
    let metrics = notifier::ops::metrics::Metrics::new();
    let ev = super::fresh("naleving.aanleververzoek")
        .to_string()
        .into_bytes();
    notifier::app::ingestor(s, &store, &metrics)
        .ingest_batch(&[Incoming::new(ev, None, Source::File)])
        .await
        .unwrap();
    let d = notifier::app::dispatcher(s, &store, &metrics).unwrap();
    let summary = d.run_until_idle().await.unwrap();
    (store, d, summary)
}
