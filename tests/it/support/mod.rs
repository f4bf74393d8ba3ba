//! Test support: `spawn_app` runs the real service in-process against the
//! machine's RabbitMQ (a unique exchange and queue per test), a temp SQLite
//! file, and a scriptable SMTP server over TCP.

pub mod smtp_server;

use figment::Figment;
use figment::providers::{Format, Toml};
use notifier::broker::publisher::Publisher;
use notifier::config::{DEFAULT_TOML, Settings};
use notifier::store::Store;
use notifier::store::deliveries::{self as dl, DeliveryFilter, DeliveryRow};
use smtp_server::{ReceivedMail, TestSmtpServer};
use std::time::Duration;
use tokio::sync::watch;

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

/// A running service with its SMTP server and a publisher.
pub struct TestApp {
    pub smtp: TestSmtpServer,
    pub publisher: Publisher,
    pub store: Store,
    pub http_addr: std::net::SocketAddr,
    /// The service's settings (for running the CLI against its database).
    pub settings: Settings,
    amqp: notifier::config::AmqpSettings,
    _dir: tempfile::TempDir,
    shutdown: watch::Sender<bool>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Starts the service; `extra` is TOML merged over the test settings.
pub async fn spawn_app(extra: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let smtp = TestSmtpServer::start().await;
    let settings = test_settings(dir.path(), &smtp.url(), extra);
    let store = Store::connect(&settings.database.url, 4).await.unwrap();
    store.migrate().await.unwrap();
    let (tx, rx) = watch::channel(false);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(notifier::app::run(settings.clone(), rx, Some(ready_tx)));
    let running = ready_rx.await.expect("app started");
    let publisher = Publisher::connect(AMQP_URL, &settings.amqp.exchange)
        .await
        .unwrap();
    let app = TestApp {
        smtp,
        publisher,
        store,
        http_addr: running.http_addr,
        amqp: settings.amqp.clone(),
        settings: settings.clone(),
        _dir: dir,
        shutdown: tx,
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

    /// The test's SQLite file.
    pub fn db_file(&self) -> std::path::PathBuf {
        self._dir.path().join("notifier.db")
    }

    /// Shuts the service down (it must exit cleanly) and removes the test's queues and exchanges.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
        delete_topology(&self.amqp).await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
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
