//! TLS that fails closed, against endpoints made in the test with a CA of
//! its own: the relay over STARTTLS and smtps (with `smtp.ca_file`, an
//! unknown CA, a certificate for another name, a stripped STARTTLS),
//! credentials that would travel without TLS, RabbitMQ over `amqps://`
//! through a TLS-terminating proxy, and PostgreSQL with `sslmode=verify-full`.

use crate::support::smtp_server::{AuthAttempt, TestSmtpServer};
use crate::support::tls::{TestCa, TlsProxy};
use crate::support::{
    AMQP_URL, TestBackend, TestConfig, WAIT, cli_env, declare_topology, delete_topology, fresh,
    sample_directory, spawn_app, spawn_app_with, stderr, wait_http,
};
use notifier::app::{App, StartError};
use notifier::config::Settings;
use notifier::domain::delivery::DeliveryStatus;
use notifier::pipeline::dispatch::DispatchSummary;
use notifier::store::Store;
use tokio_util::sync::CancellationToken;

/// The password of the issue: form-decoding made it `a b`.
const PASSWORD: &str = "a+b&c";

/// On a fresh database with the sample directory: ingests one
/// `naleving.aanleververzoek` and dispatches until idle, as `notifier
/// dispatch --until-idle` would. Returns the summary, the relay circuit's
/// last reason and the attempts' outcomes and details.
async fn send_once(s: &Settings) -> (DispatchSummary, Option<String>, Vec<(String, String)>) {
    let (store, d, summary) = crate::support::ingest_and_dispatch_one(s).await;
    let mut c = store.pool().acquire().await.unwrap();
    let rows = notifier::store::deliveries::list(&mut c, &Default::default())
        .await
        .unwrap();
    let attempts = notifier::store::deliveries::attempts(&mut c, &rows[0].id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.outcome.as_str().to_owned(), a.detail.unwrap_or_default()))
        .collect();
    (summary, d.breaker().last_reason(), attempts)
}

fn settings(dir: &std::path::Path, url: &str, ca_file: Option<&std::path::Path>) -> Settings {
    let mut c = TestConfig::new(dir).smtp(url);
    if let Some(f) = ca_file {
        c = c.with(&format!(
            "[smtp]\nca_file = {}",
            toml::Value::from(f.to_str().unwrap())
        ));
    }
    c.settings()
}

#[tokio::test]
async fn a_private_ca_carries_mail_and_the_exact_password_over_starttls_and_smtps() {
    let ca = TestCa::new();
    // STARTTLS with AUTH PLAIN, smtps with AUTH LOGIN.
    let starttls = TestSmtpServer::start_starttls_with(ca.acceptor(&["localhost"])).await;
    starttls.require_auth("notifier", PASSWORD, "PLAIN LOGIN");
    let implicit = TestSmtpServer::start_implicit_tls_with(ca.acceptor(&["localhost"])).await;
    implicit.require_auth("notifier", PASSWORD, "LOGIN");
    for (server, url, mechanism) in [
        (
            &starttls,
            format!(
                "{}?tls=required",
                starttls
                    .url_as("smtp", "localhost")
                    .replace("//", &format!("//notifier:{PASSWORD}@"))
            ),
            "PLAIN",
        ),
        (
            &implicit,
            implicit
                .url_as("smtps", "localhost")
                .replace("//", &format!("//notifier:{PASSWORD}@")),
            "LOGIN",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (summary, reason, attempts) =
            send_once(&settings(dir.path(), &url, Some(ca.ca_file()))).await;
        assert_eq!(summary.sent, 1, "{url}: {reason:?} {attempts:?}");
        assert_eq!(server.count(), 1, "{url}");
        assert_eq!(
            server.auth_attempts(),
            vec![AuthAttempt {
                mechanism: mechanism.into(),
                user: "notifier".into(),
                password: PASSWORD.into(),
                over_tls: true,
                accepted: true,
            }],
            "{url}"
        );
    }
}

#[tokio::test]
async fn credentials_go_the_same_way_from_smtp_username_and_password() {
    let ca = TestCa::new();
    let server = TestSmtpServer::start_starttls_with(ca.acceptor(&["localhost"])).await;
    server.require_auth("us@er", PASSWORD, "PLAIN");
    let dir = tempfile::tempdir().unwrap();
    let s = TestConfig::new(dir.path())
        .smtp(&format!(
            "{}?tls=required",
            server.url_as("smtp", "localhost")
        ))
        .with(&format!(
            "[smtp]\nusername = \"us@er\"\npassword = \"{PASSWORD}\"\nca_file = {}",
            toml::Value::from(ca.ca_file().to_str().unwrap())
        ))
        .settings();
    let (summary, reason, _) = send_once(&s).await;
    assert_eq!(summary.sent, 1, "{reason:?}");
    assert!(server.auth_attempts()[0].accepted);
}

/// A relay whose certificate the worker cannot verify, with credentials in
/// `smtp.url`: nothing is sent (no AUTH either), the attempt is a relay
/// fault, no delivery fails, and `/readyz` says 503 once the circuit opens.
async fn refused_relay(server: &TestSmtpServer, url: &str, ca_file: Option<&std::path::Path>) {
    let mut extra = format!(
        "[smtp]\nurl = {}\n[breaker]\nfailure_threshold = 1\nopen_for = \"1h\"",
        toml::Value::from(url)
    );
    if let Some(f) = ca_file {
        extra = extra.replace(
            "[breaker]",
            &format!(
                "ca_file = {}\n[breaker]",
                toml::Value::from(f.to_str().unwrap())
            ),
        );
    }
    let app = spawn_app(&extra).await;
    app.import_directory(&sample_directory()).await;
    let id = app.publish_fresh("naleving.aanleververzoek").await;
    let ready = app
        .wait_readyz("the relay circuit to open", |b| {
            b.contains("\"relay_circuit\":\"open\"")
        })
        .await;
    assert!(ready.starts_with("HTTP/1.0 503"), "{url}: {ready}");
    assert!(ready.contains("certificate"), "{url}: {ready}");
    let rows = app
        .wait_deliveries(Some(&id), "one attempt", |r| {
            r.len() == 1 && r[0].attempts >= 1 && r[0].status != DeliveryStatus::Sending
        })
        .await;
    assert_eq!(rows[0].status, DeliveryStatus::Pending, "{url}: {rows:?}");
    let attempts = app.attempts(&rows[0].id).await;
    assert_eq!(attempts[0].outcome.as_str(), "relay_fault", "{attempts:?}");
    assert!(
        attempts[0]
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("TLS with the relay failed"),
        "{attempts:?}"
    );
    assert_eq!(server.count(), 0, "{url}: mail sent");
    assert_eq!(server.auth_attempts(), vec![], "{url}: credentials sent");
    assert!(!server.verbs().contains(&"MAIL".to_owned()), "{url}");
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_ca_or_a_certificate_for_another_name_sends_nothing() {
    let ca = TestCa::new();
    // Signed by a CA the worker was not told about.
    let unknown = TestSmtpServer::start_starttls_with(ca.acceptor(&["localhost"])).await;
    unknown.require_auth("notifier", PASSWORD, "PLAIN");
    let url = format!(
        "{}?tls=required",
        unknown
            .url_as("smtp", "localhost")
            .replace("//", "//notifier:pw@")
    );
    refused_relay(&unknown, &url, None).await;

    // A trusted CA, but the certificate is for another host.
    let other_name = TestSmtpServer::start_implicit_tls_with(ca.acceptor(&["relay.example"])).await;
    other_name.require_auth("notifier", PASSWORD, "PLAIN");
    let url = other_name
        .url_as("smtps", "localhost")
        .replace("//", "//notifier:pw@");
    refused_relay(&other_name, &url, Some(ca.ca_file())).await;
}

#[tokio::test]
async fn a_stripped_starttls_sends_no_credentials_and_no_mail() {
    // The relay (or whoever sits in between) offers AUTH but no STARTTLS.
    let server = TestSmtpServer::start().await;
    server.require_auth("notifier", PASSWORD, "PLAIN LOGIN");
    let url = format!(
        "{}?tls=required",
        server.url().replace("//", "//notifier:pw@")
    );
    let dir = tempfile::tempdir().unwrap();
    let (summary, reason, attempts) = send_once(&settings(dir.path(), &url, None)).await;
    assert_eq!((summary.sent, summary.failed, summary.retried), (0, 0, 1));
    assert!(
        reason.unwrap_or_default().contains("STARTTLS"),
        "{attempts:?}"
    );
    assert_eq!(attempts[0].0, "relay_fault");
    assert_eq!(server.auth_attempts(), vec![]);
    let commands = server.verbs();
    assert!(commands.contains(&"EHLO".to_owned()), "{commands:?}");
    assert!(
        !commands.iter().any(|c| c == "AUTH" || c == "MAIL"),
        "{commands:?}"
    );
    assert_eq!(server.count(), 0);
}

#[tokio::test]
async fn credentials_without_required_tls_stop_the_start() {
    let server = TestSmtpServer::start().await;
    for url in [
        server.url().replace("//", "//notifier:pw@"),
        format!(
            "{}?tls=opportunistic",
            server.url().replace("//", "//notifier:pw@")
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let s = TestConfig::new(dir.path()).smtp(&url).settings();
        let Err(StartError::Config(e)) = App::build(s.clone()).await else {
            panic!("{url}: the service started");
        };
        assert!(e.contains("smtp.url") && e.contains("tls=required"), "{e}");
        assert!(
            !dir.path().join("notifier.db").exists(),
            "a refused start touched the database"
        );
        // The binary: `run` and every other command that talks to the relay.
        for args in [
            &["run"][..],
            &[
                "templates",
                "send-test",
                "naleving.aanleververzoek",
                "--to",
                "test@example.org",
            ][..],
        ] {
            let out = cli_env(&s, args, &[("NOTIFIER_SMTP__URL", &url)]);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
            assert!(
                stderr(&out).contains("smtp.url") && !stderr(&out).contains(":pw@"),
                "{}",
                stderr(&out)
            );
        }
    }
    assert_eq!(server.connections(), 0, "a refused start reached the relay");
}

/// Messages waiting in `queue` on the machine's RabbitMQ.
async fn queued(queue: &str) -> u32 {
    use lapin::options::QueueDeclareOptions;
    let conn = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "ok".into()).await;
    q.message_count()
}

#[tokio::test]
async fn amqps_through_a_tls_proxy_with_a_private_ca_is_consumed() {
    let ca = TestCa::new();
    let proxy = TlsProxy::rabbitmq(ca.acceptor(&["localhost"])).await;
    let url = proxy.amqps_url("localhost");
    let ca_file = ca.ca_file().to_str().unwrap().to_owned();
    // spawn_app waits until the service consumes, over amqps; the test
    // publishes through the plain port.
    let app = spawn_app_with("", TestBackend::from_env(), |s| {
        s.amqp.url = url.into();
        s.amqp.ca_file = ca_file;
    })
    .await;
    app.import_directory(&sample_directory()).await;
    let id = app.publish_fresh("naleving.aanleververzoek").await;
    app.wait_deliveries(Some(&id), "sent", |r| {
        r.len() == 1 && r[0].status == DeliveryStatus::Sent
    })
    .await;
    assert_eq!(app.smtp.count(), 1);
    app.stop().await;
}

#[tokio::test]
async fn amqps_to_a_broker_the_worker_cannot_verify_is_never_consumed() {
    let ca = TestCa::new();
    let trusted_other_name = TlsProxy::rabbitmq(ca.acceptor(&["broker.example"])).await;
    let unknown_ca = TlsProxy::rabbitmq(ca.acceptor(&["localhost"])).await;
    let ca_file = ca.ca_file().to_str().unwrap().to_owned();
    for (url, ca_file, why) in [
        (unknown_ca.amqps_url("localhost"), "", "certificate"),
        (
            trusted_other_name.amqps_url("localhost"),
            ca_file.as_str(),
            "certificate",
        ),
        // The plain port: TLS must really be spoken, not skipped.
        (
            "amqps://guest:guest@localhost:5672/%2f".to_owned(),
            "",
            "TLS",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = TestConfig::new(dir.path()).settings();
        declare_topology(&s.amqp).await;
        let publisher = notifier::broker::publisher::Publisher::connect(AMQP_URL, &s.amqp.exchange)
            .await
            .unwrap();
        let event = fresh("naleving.aanleververzoek");
        publisher
            .publish(
                "naleving.aanleververzoek",
                None,
                event.to_string().as_bytes(),
            )
            .await
            .unwrap();
        s.amqp.url = url.clone().into();
        s.amqp.ca_file = ca_file.to_owned();
        let app = App::build(s.clone()).await.expect("the service starts");
        let readyz = format!("http://{}/readyz", app.http_addr());
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(app.run(shutdown.clone()));
        let ready = wait_http(&readyz, WAIT, "a failed broker session", |b| {
            b.contains("\"broker_reason\":\"")
        })
        .await;
        assert!(ready.starts_with("HTTP/1.0 503"), "{url}: {ready}");
        assert!(ready.contains("\"not consuming\""), "{url}: {ready}");
        assert!(ready.contains(why), "{url}: {ready}");
        assert!(!ready.contains("guest:guest"), "{ready}");
        // The event published before the start is still in the queue.
        assert_eq!(queued(&s.amqp.queue).await, 1, "{url}: consumed");
        let store = Store::connect(s.database.url.expose_secret(), 2)
            .await
            .unwrap();
        let mut c = store.pool().acquire().await.unwrap();
        assert!(
            notifier::store::events::get_event(&mut c, event["id"].as_str().unwrap())
                .await
                .unwrap()
                .is_none(),
            "{url}: ingested"
        );
        drop(c);
        shutdown.cancel();
        run.await.unwrap().unwrap();
        delete_topology(&s.amqp).await;
    }
}

#[tokio::test]
async fn an_unusable_amqp_ca_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestConfig::new(dir.path()).settings();
    s.amqp.url = "amqps://guest:guest@localhost:5671/%2f".into();
    s.amqp.ca_file = dir.path().join("missing.pem").to_str().unwrap().into();
    let Err(StartError::Config(e)) = App::build(s.clone()).await else {
        panic!("the service started");
    };
    assert!(e.contains("amqp.ca_file: cannot read"), "{e}");
    // A CA file with amqp:// would never be used.
    let ca = TestCa::new();
    s.amqp.url = AMQP_URL.into();
    s.amqp.ca_file = ca.ca_file().to_str().unwrap().into();
    let Err(StartError::Config(e)) = App::build(s).await else {
        panic!("the service started");
    };
    assert!(e.contains("amqp.ca_file") && e.contains("amqps://"), "{e}");
}

/// The machine's PostgreSQL serves TLS with Debian's snakeoil certificate
/// (package ssl-cert; SAN `localhost`).
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

fn pg_url(host: &str, root: &str) -> String {
    format!("postgres://postgres@{host}:5432/postgres?sslmode=verify-full&sslrootcert={root}")
}

#[tokio::test]
async fn postgres_sslmode_verify_full_checks_the_server_name_and_ca() {
    assert!(
        std::path::Path::new(SNAKEOIL).exists(),
        "{SNAKEOIL} (package ssl-cert, the PostgreSQL server's certificate) is needed"
    );
    let store = Store::connect(&pg_url("localhost", SNAKEOIL), 2)
        .await
        .expect("verify-full with the server's certificate connects");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(ssl, "the connection is encrypted");
    store.pool().close().await;

    // The same certificate, but the URL names 127.0.0.1, which it is not for.
    let e = Store::connect(&pg_url("127.0.0.1", SNAKEOIL), 2)
        .await
        .err()
        .expect("a name mismatch must not connect")
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // Another CA.
    let ca = TestCa::new();
    let e = Store::connect(&pg_url("localhost", ca.ca_file().to_str().unwrap()), 2)
        .await
        .err()
        .expect("an unknown CA must not connect")
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
}
