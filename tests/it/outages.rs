//! Outages of the broker and the database (through a TCP proxy, so the shared
//! servers keep running), a bad template deployed, and the metrics scrape.

use crate::support::proxy::TcpProxy;
use crate::support::{TestBackend, fresh, sample_directory, spawn_app, spawn_app_with};
use notifier::domain::delivery::DeliveryStatus;
use std::time::Duration;

/// Outages take a reconnect backoff or two: longer than [`crate::support::WAIT`].
async fn wait_http(url: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    crate::support::wait_http(url, Duration::from_secs(60), what, pred).await
}

#[tokio::test]
async fn a_broker_outage_is_survived_and_reported() {
    let proxy = TcpProxy::rabbitmq().await;
    let app = spawn_app_with("", TestBackend::from_env(), |s| {
        s.amqp.url = proxy.amqp_url().into();
    })
    .await;
    app.import_directory(&sample_directory()).await;
    let ready = format!("http://{}/readyz", app.http_addr);
    let metrics = format!("http://{}/metrics", app.http_addr);

    proxy.cut();
    let body = wait_http(&ready, "readiness to report the broker", |b| {
        b.contains("not consuming")
    })
    .await;
    assert!(body.starts_with("HTTP/1.0 503"), "{body}");
    wait_http(&metrics, "notifier_amqp_connected 0", |b| {
        b.contains("notifier_amqp_connected 0")
    })
    .await;

    // Published while the worker is cut off: the queue keeps it.
    let id = app.publish_fresh("naleving.aanleververzoek").await;
    proxy.restore();
    wait_http(&ready, "the consumer back", |b| b.contains("\"consuming\"")).await;
    let rows = app
        .wait_deliveries(Some(&id), "sent after the outage", |r| {
            r.len() == 1 && r[0].status == DeliveryStatus::Sent
        })
        .await;
    assert_eq!(rows.len(), 1);
    assert!(app.quarantine().await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_database_outage_holds_messages_and_resumes() {
    let proxy = TcpProxy::postgres().await;
    // One requeue too many would dead-letter the message: a nack loop would show.
    let app = spawn_app_with("[amqp]\ndelivery_limit = 1", TestBackend::Postgres, |s| {
        // The service reaches the test's database through the proxy; the test itself directly.
        s.database.url = proxy.database_url(s.database.url.expose_secret()).into();
    })
    .await;
    app.import_directory(&sample_directory()).await;
    let ready = format!("http://{}/readyz", app.http_addr);

    proxy.cut();
    let event = fresh("naleving.aanleververzoek");
    let id = event["id"].as_str().unwrap().to_owned();
    app.publish(&event).await;
    let body = wait_http(&ready, "readiness to report the database", |b| {
        b.contains("\"database\":\"unavailable\"")
    })
    .await;
    assert!(body.starts_with("HTTP/1.0 503"), "{body}");
    assert!(
        app.deliveries(Some(&id)).await.is_empty(),
        "nothing committed while the database is away"
    );
    proxy.restore();
    let rows = app
        .wait_deliveries(Some(&id), "sent after the outage", |r| {
            r.len() == 1 && r[0].status == DeliveryStatus::Sent
        })
        .await;
    assert_eq!(rows[0].attempts, 1);
    assert!(
        app.quarantine().await.is_empty(),
        "not dead-lettered: the message was held, never nacked"
    );
    wait_http(&ready, "ready again", |b| b.starts_with("HTTP/1.0 200")).await;
    app.stop().await;
}

#[tokio::test]
async fn a_bad_template_fails_deliveries_that_replay_sends_after_the_fix() {
    // A template release that references a field the data does not have.
    let tpl = tempfile::tempdir().unwrap();
    crate::support::copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"),
        tpl.path(),
    );
    std::fs::write(
        tpl.path().join("naleving.aanleververzoek/text.hbs"),
        "{{data.bestaat_niet}}",
    )
    .unwrap();
    let extra = format!("[mail]\ntemplates_dir = \"{}\"", tpl.path().display());
    let app = spawn_app(&extra).await;
    app.import_directory(&sample_directory()).await;
    let id = app.publish_fresh("naleving.aanleververzoek").await;
    let rows = app
        .wait_deliveries(Some(&id), "failed", |r| {
            r.len() == 1 && r[0].status == DeliveryStatus::Failed
        })
        .await;
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("failed to render"),
        "{rows:?}"
    );
    assert_eq!(app.smtp.count(), 0);
    let settings = app.settings.clone();
    let _kept = app.stop().await;

    // The fix: the previous (built-in) templates; then the runbook's replay.
    let s = &settings;
    let env = |c: &mut std::process::Command| {
        c.env("NOTIFIER_DATABASE__URL", s.database.url.expose_secret())
            .env("NOTIFIER_SMTP__URL", s.smtp.url.url())
            .env("NOTIFIER_SMTP__MAX_RATE", "0");
    };
    let run = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"));
        c.args(args);
        env(&mut c);
        c.output().unwrap()
    };
    let check = run(&["templates", "check"]);
    assert!(check.status.success());
    let replay = run(&[
        "replay",
        "deliveries",
        "--status",
        "failed",
        "--event",
        &id,
        "--execute",
        "--operator",
        "test",
        "--reason",
        "template fixed",
    ]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    // The app's SMTP server went with the app: dispatch to a new one.
    let smtp = crate::support::smtp_server::TestSmtpServer::start().await;
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"));
    c.args(["dispatch", "--until-idle"]);
    env(&mut c);
    c.env("NOTIFIER_SMTP__URL", smtp.url());
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mails = smtp.wait_for_count(1, crate::support::WAIT).await.unwrap();
    // A. Bakker, as registered.
    assert_eq!(mails[0].rcpt_to, vec!["Praktijk@Fysio-Noord.example"]);
}

#[tokio::test]
async fn metrics_carry_the_documented_names_and_no_addresses() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    app.smtp.reply_for_rcpt(
        "p.jansen",
        "550 5.1.1 <p.jansen@fysio-noord.example> unknown",
    );
    app.publish_and_settle(&fresh("contract.voorstel_aangeboden"))
        .await;
    app.publish_raw("x.y", b"not json").await;
    app.publish_and_settle(&fresh("naleving.aanleververzoek"))
        .await;
    let body = app
        .wait_metrics("metrics", |b| {
            b.contains("notifier_smtp_attempts_total{outcome=\"permanent\"}")
        })
        .await;
    for name in [
        "notifier_events_received_total{",
        "notifier_deliveries_total{",
        "notifier_smtp_attempts_total{outcome=\"sent\"}",
        "notifier_delivery_latency_seconds_bucket",
        "notifier_deliveries_pending",
        "notifier_oldest_pending_age_seconds",
        "notifier_dispatch_lag_seconds",
        "notifier_quarantined_events",
        "notifier_unroutable_events_total",
        "notifier_smtp_circuit_open",
        "notifier_amqp_connected 1",
        "notifier_stuck_events",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics");
    }
    assert!(body.contains("outcome=\"quarantined\""));
    assert!(body.contains("status=\"failed\""));
    assert!(!body.contains('@'), "an address in a metric");
    assert!(
        !body.contains("Jansen") && !body.contains("Vries"),
        "a name in a metric"
    );
    app.stop().await;
}
