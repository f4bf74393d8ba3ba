//! Dispatch under faults found by reading the code: an outcome that cannot
//! be recorded, a stop in the middle of a batch, a stalled relay, and two
//! deliveries racing for one shared address. Against the real RabbitMQ, the
//! database (through a TCP proxy where it is cut) and the SMTP server.

use crate::support::proxy::TcpProxy;
use crate::support::{
    TestBackend, WAIT, event_for, many_users, sample_directory, spawn_app, spawn_app_with,
};
use notifier::domain::delivery::DeliveryStatus;
use notifier::store::deliveries as dl;
use std::time::Duration;

/// The relay accepted the mail, then the database went away for longer than
/// the lease: the outcome is kept in memory and recorded when the database
/// is back; the mail is not sent a second time.
#[tokio::test]
async fn an_outcome_that_cannot_be_recorded_is_kept_and_recorded_later() {
    let proxy = TcpProxy::postgres().await;
    let app = spawn_app_with("[dispatch]\nlease = \"3s\"", TestBackend::Postgres, |s| {
        s.database.url = proxy.database_url(s.database.url.expose_secret()).into();
    })
    .await;
    app.import_directory(&sample_directory()).await;
    app.smtp.stall_after_data(Some(Duration::from_secs(1)));
    let id = app.publish_fresh("naleving.aanleververzoek").await;
    app.smtp.wait_for_data(1, WAIT).await.unwrap();
    // The database goes away while the relay holds the data; the relay
    // then accepts the mail.
    proxy.cut();
    app.wait_mails(1).await;
    // The outage lasts longer than the lease (3 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.restore();
    let rows = app
        .wait_deliveries(Some(&id), "the outcome recorded", |r| {
            r.len() == 1 && r[0].status == DeliveryStatus::Sent
        })
        .await;
    assert_eq!(rows[0].attempts, 1, "one attempt, recorded once");
    assert_eq!(
        app.smtp.count(),
        1,
        "the mail the relay accepted is not sent again"
    );
    app.stop().await;
}

/// At SIGTERM no new send starts; the one on the wire finishes within the
/// grace and is recorded; the rest stays pending, untried.
#[tokio::test]
async fn a_stop_lets_sends_on_the_wire_finish_and_starts_no_new_ones() {
    let app = spawn_app("[smtp]\nconcurrency = 1\n[shutdown]\ngrace = \"10s\"").await;
    let agb = "04333001";
    app.import_directory(&many_users(agb, 3)).await;
    app.smtp.stall_after_data(Some(Duration::from_millis(500)));
    app.publish(&event_for(agb)).await;
    app.smtp.wait_for_data(1, WAIT).await.unwrap();
    let store = app.store.clone();
    let seen = app.smtp.observer();
    let _stopped = app.stop().await;

    let rows = crate::support::deliveries(&store, None).await;
    let sent: Vec<_> = rows
        .iter()
        .filter(|d| d.status == DeliveryStatus::Sent)
        .collect();
    let untried: Vec<_> = rows
        .iter()
        .filter(|d| d.status == DeliveryStatus::Pending && d.attempts == 0)
        .collect();
    assert_eq!(sent.len(), 1, "the send on the wire finished: {rows:#?}");
    assert_eq!(
        untried.len(),
        2,
        "no send started after the signal: {rows:#?}"
    );
    assert_eq!(seen.messages().len(), 1);
}

/// A send still on the wire when `shutdown.grace` ends is recorded as
/// `unknown` and is due again (the next run sends it with the same
/// Message-ID), instead of vanishing from the attempt log.
#[tokio::test]
async fn a_send_running_past_the_grace_is_recorded_as_unknown() {
    let app = spawn_app("[smtp]\nconcurrency = 2\n[shutdown]\ngrace = \"1s\"").await;
    let agb = "04333002";
    app.import_directory(&many_users(agb, 2)).await;
    app.smtp.stall_after_data(Some(Duration::from_secs(4)));
    app.publish(&event_for(agb)).await;
    app.smtp.wait_for_data(2, WAIT).await.unwrap();
    let store = app.store.clone();
    let _stopped = app.stop().await;

    let rows = crate::support::deliveries(&store, None).await;
    assert_eq!(rows.len(), 2);
    let mut c = store.pool().acquire().await.unwrap();
    for d in &rows {
        assert_eq!(d.status, DeliveryStatus::Pending, "{d:#?}");
        let attempts = dl::attempts(&mut c, &d.id).await.unwrap();
        assert_eq!(attempts.len(), 1, "{attempts:#?}");
        assert_eq!(attempts[0].outcome.as_str(), "unknown");
        assert!(
            attempts[0]
                .detail
                .as_deref()
                .unwrap_or_default()
                .contains("abandoned at shutdown"),
            "{attempts:#?}"
        );
    }
}

/// Two deliveries of one event whose users both moved to one shared address,
/// re-checked in the same round: the address gets the mail once.
#[tokio::test]
async fn two_deliveries_racing_for_a_shared_address_send_it_once() {
    use crate::support::user;
    // No re-resolution on the directory change, and both retries due
    // before the next round starts, so they are claimed together.
    let app =
        spawn_app("[dispatch]\nidle_poll = \"2s\"\n[recipients]\nlate_directory_window = \"0s\"")
            .await;
    let agb = "04777004";
    let links: &[(&str, &[&str], bool, bool)] = &[(agb, &["uitvragen"], false, true)];
    app.import_users(&[
        user("50000000000011", "een@praktijk.example", true, links, 1),
        user("50000000000012", "twee@praktijk.example", true, links, 1),
    ])
    .await;
    app.smtp.refuse_connections(true);
    let event = crate::support::fresh_for("uitvraag.vragenlijst_klaargezet", agb);
    let id = event["id"].as_str().unwrap().to_owned();
    app.publish(&event).await;
    app.wait_deliveries(Some(&id), "both tried once", |r| {
        r.len() == 2
            && r.iter()
                .all(|d| d.status == DeliveryStatus::Pending && d.attempts == 1)
    })
    .await;
    app.import_users(&[
        user("50000000000011", "gedeeld@praktijk.example", true, links, 2),
        user("50000000000012", "gedeeld@praktijk.example", true, links, 2),
    ])
    .await;
    app.smtp.refuse_connections(false);
    let rows = app
        .wait_deliveries(Some(&id), "both final", |r| {
            r.len() == 2
                && r.iter().all(|d| {
                    d.status == DeliveryStatus::Sent || d.status == DeliveryStatus::Cancelled
                })
        })
        .await;
    let to_shared = app
        .smtp
        .messages()
        .iter()
        .filter(|m| m.rcpt_to[0] == "gedeeld@praktijk.example")
        .count();
    assert_eq!(to_shared, 1, "{rows:#?}");
    assert_eq!(
        rows.iter()
            .filter(|d| d.status == DeliveryStatus::Sent)
            .count(),
        1
    );
    let cancelled = rows
        .iter()
        .find(|d| d.status == DeliveryStatus::Cancelled)
        .unwrap();
    assert!(
        cancelled
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("duplicate"),
        "{cancelled:#?}"
    );
    app.stop().await;
}

/// A relay that greets and then never answers MAIL: the timeouts open the
/// circuit, the rest of the batch is not sent into it, and a probe that
/// times out keeps the circuit open. When the relay answers, all is sent.
#[tokio::test]
async fn a_relay_that_greets_and_then_hangs_opens_the_circuit() {
    let app = spawn_app(
        "[smtp]\ntimeout = \"1s\"\nconcurrency = 1\n[breaker]\nfailure_threshold = 2\nopen_for = \"2s\"",
    )
    .await;
    let agb = "04333006";
    app.import_directory(&many_users(agb, 6)).await;
    app.smtp
        .stall_command("MAIL", Some(Duration::from_secs(3600)));
    let event = event_for(agb);
    let id = event["id"].as_str().unwrap().to_owned();
    app.publish(&event).await;
    let body = app
        .wait_readyz("the circuit open", |b| {
            b.contains("\"relay_circuit\":\"open\"")
        })
        .await;
    assert!(body.starts_with("HTTP/1.0 503"), "{body}");
    let rows = app.deliveries(Some(&id)).await;
    let untried = rows.iter().filter(|d| d.attempts == 0).count();
    assert!(
        untried >= 3,
        "the rest of the batch is handed back, not sent into a hanging relay: {rows:#?}"
    );
    // The probe after breaker.open_for times out too: still open.
    app.wait_deliveries(Some(&id), "the probe tried", |r| {
        r.iter().map(|d| d.attempts).sum::<i64>() >= 3
    })
    .await;
    let body = app.wait_readyz("readiness", |b| !b.is_empty()).await;
    assert!(
        body.contains("\"relay_circuit\":\"open\""),
        "a probe that times out keeps the circuit open: {body}"
    );
    app.smtp.stall_command("MAIL", None);
    let rows = app
        .wait_deliveries(Some(&id), "all sent once the relay answers", |r| {
            r.len() == 6 && r.iter().all(|d| d.status == DeliveryStatus::Sent)
        })
        .await;
    assert_eq!(app.smtp.count(), 6, "{rows:#?}");
    app.stop().await;
}
