//! Hostile and unlucky input on the ingest side, against the real RabbitMQ
//! and both backends: one message must never stall the consumer, and what
//! it costs in memory is bounded by the contract's limit, not its size.

use crate::support::{
    AMQP_URL, Deployment, TestApp, TestBackend, fresh, sample_directory, spawn_app_prepared,
    spawn_app_with,
};
use notifier::broker::publisher::Publisher;
use notifier::domain::delivery::DeliveryStatus;
use notifier::store::Store;
use notifier::store::events::QuarantineRow;
use std::time::Duration;

/// Waits until quarantine holds at least `n` rows.
async fn wait_quarantine(app: &TestApp, n: usize) -> Vec<QuarantineRow> {
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    loop {
        let rows = app.quarantine().await;
        if rows.len() >= n {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {n} quarantined messages: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn nul_in_the_envelope_is_quarantined_and_ingest_goes_on(backend: TestBackend) {
    let app = spawn_app_with("", backend, |_| {}).await;
    app.import_directory(&sample_directory()).await;

    let mut bad_id = fresh("naleving.aanleververzoek");
    bad_id["id"] = "abc\u{0}def".into();
    app.publish_raw("naleving.aanleververzoek", bad_id.to_string().as_bytes())
        .await;
    let mut bad_type = fresh("naleving.aanleververzoek");
    bad_type["type"] = "naleving.aanleververzoek\u{0}".into();
    app.publish_raw("naleving.aanleververzoek", bad_type.to_string().as_bytes())
        .await;
    // A NUL in the routing key and a body that is not even JSON.
    app.publish_raw("naleving.\u{0}x", b"not json \x00 at all")
        .await;
    // A dead-lettered message with a NUL in its routing key: the
    // dead-letter consumer stores it too.
    let dead = Publisher::connect(AMQP_URL, &app.settings.amqp.dead_letter_exchange)
        .await
        .unwrap();
    dead.publish("dead.\u{0}", None, b"{\"id\": \"x\x00\"}")
        .await
        .unwrap();

    // Published after the bad ones: it must not wait behind them.
    let good = app.publish_fresh("naleving.aanleververzoek").await;
    app.wait_deliveries(Some(&good), "the good event sent", |r| {
        !r.is_empty() && r.iter().all(|d| d.status == DeliveryStatus::Sent)
    })
    .await;

    let rows = wait_quarantine(&app, 4).await;
    let reason_for = |pred: &dyn Fn(&QuarantineRow) -> bool| {
        rows.iter()
            .find(|r| pred(r))
            .map(|r| r.reason.clone())
            .unwrap_or_else(|| panic!("no such quarantine row in {rows:#?}"))
    };
    let id_reason = reason_for(&|r| r.event_id.as_deref() == Some("abc\u{FFFD}def"));
    assert!(id_reason.contains("id: contains a NUL"), "{id_reason}");
    let type_reason =
        reason_for(&|r| r.event_type.as_deref() == Some("naleving.aanleververzoek\u{FFFD}"));
    assert!(
        type_reason.contains("type: contains a NUL"),
        "{type_reason}"
    );
    let key_reason = reason_for(&|r| r.routing_key.as_deref() == Some("naleving.\u{FFFD}x"));
    assert!(key_reason.contains("not valid JSON"), "{key_reason}");
    let dead_row = rows
        .iter()
        .find(|r| r.source == "dead-letter")
        .expect("the dead-lettered message is kept");
    assert_eq!(dead_row.routing_key.as_deref(), Some("dead.\u{FFFD}"));
    // The raw bytes are kept exactly as they came.
    let by_key = rows
        .iter()
        .find(|r| r.routing_key.as_deref() == Some("naleving.\u{FFFD}x"))
        .unwrap();
    assert_eq!(by_key.raw, b"not json \x00 at all");

    let ready = app.readyz().await;
    assert!(ready.starts_with("HTTP/1.0 200"), "{ready}");
    app.stop().await;
}

#[tokio::test]
async fn nul_in_the_envelope_is_quarantined_and_ingest_goes_on_postgres() {
    nul_in_the_envelope_is_quarantined_and_ingest_goes_on(TestBackend::Postgres).await;
}

#[tokio::test]
async fn nul_in_the_envelope_is_quarantined_and_ingest_goes_on_sqlite() {
    nul_in_the_envelope_is_quarantined_and_ingest_goes_on(TestBackend::Sqlite).await;
}

/// A rule the database enforces that this worker does not know about: the
/// database refuses the event row of any event whose id starts with `poison-`.
async fn refuse_poison(store: &Store) {
    let statements: &[&str] = match store.backend() {
        notifier::store::Backend::Sqlite => &[
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON events WHEN NEW.id LIKE 'poison-%' \
             BEGIN SELECT RAISE(ABORT, 'poison refused by the test trigger'); END",
        ],
        notifier::store::Backend::Postgres => {
            &["ALTER TABLE events ADD CONSTRAINT no_poison CHECK (id NOT LIKE 'poison-%')"]
        }
    };
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(*sql))
            .execute(store.pool())
            .await
            .unwrap();
    }
}

async fn a_database_refusal_quarantines_one_message_and_commits_the_rest(backend: TestBackend) {
    let mut good = Vec::new();
    let mut poison = fresh("naleving.aanleververzoek");
    poison["id"] = format!("poison-{}", uuid::Uuid::new_v4()).into();
    let poison_id = poison["id"].as_str().unwrap().to_owned();
    // All three queued before the worker starts, so they arrive as one batch.
    let app = spawn_app_prepared(
        "",
        backend,
        |_| {},
        async |store, settings| {
            refuse_poison(store).await;
            crate::support::import_directory(store, &sample_directory()).await;
            let p = Publisher::connect(settings.amqp.url.expose_secret(), &settings.amqp.exchange)
                .await
                .unwrap();
            for i in 0..3 {
                let e = if i == 1 {
                    poison.clone()
                } else {
                    let e = fresh("naleving.aanleververzoek");
                    good.push(e["id"].as_str().unwrap().to_owned());
                    e
                };
                p.publish("naleving.aanleververzoek", None, e.to_string().as_bytes())
                    .await
                    .unwrap();
            }
        },
    )
    .await;
    for id in &good {
        app.wait_deliveries(Some(id), "the good events of the batch sent", |r| {
            !r.is_empty() && r.iter().all(|d| d.status == DeliveryStatus::Sent)
        })
        .await;
    }
    let rows = wait_quarantine(&app, 1).await;
    assert_eq!(rows.len(), 1, "only the refused message: {rows:#?}");
    assert_eq!(rows[0].event_id.as_deref(), Some(poison_id.as_str()));
    assert!(
        rows[0]
            .reason
            .contains("the database refused this message's data"),
        "{}",
        rows[0].reason
    );
    // And nothing is left unacked: a later event goes through at once.
    let later = app.publish_fresh("naleving.aanleververzoek").await;
    app.wait_deliveries(Some(&later), "a later event sent", |r| {
        !r.is_empty() && r.iter().all(|d| d.status == DeliveryStatus::Sent)
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_database_refusal_quarantines_one_message_and_commits_the_rest_postgres() {
    a_database_refusal_quarantines_one_message_and_commits_the_rest(TestBackend::Postgres).await;
}

#[tokio::test]
async fn a_database_refusal_quarantines_one_message_and_commits_the_rest_sqlite() {
    a_database_refusal_quarantines_one_message_and_commits_the_rest(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn a_charset_parameter_on_the_media_type_is_accepted() {
    let app = spawn_app_with("", TestBackend::from_env(), |_| {}).await;
    app.import_directory(&sample_directory()).await;
    let mut ok = fresh("naleving.aanleververzoek");
    ok["datacontenttype"] = "Application/JSON; charset=\"UTF-8\"".into();
    app.publish(&ok).await;
    let mut latin = fresh("naleving.aanleververzoek");
    latin["datacontenttype"] = "application/json; charset=iso-8859-1".into();
    app.publish(&latin).await;
    let mut other = fresh("naleving.aanleververzoek");
    other["datacontenttype"] = "application/json; profile=x".into();
    app.publish(&other).await;

    app.wait_deliveries(ok["id"].as_str(), "the utf-8 event sent", |r| {
        !r.is_empty() && r.iter().all(|d| d.status == DeliveryStatus::Sent)
    })
    .await;
    let rows = wait_quarantine(&app, 2).await;
    let reason = |id: &serde_json::Value| {
        rows.iter()
            .find(|r| r.event_id.as_deref() == id.as_str())
            .map(|r| r.reason.clone())
            .expect("quarantined")
    };
    assert!(
        reason(&latin["id"]).contains("charset=utf-8"),
        "{}",
        reason(&latin["id"])
    );
    assert!(
        reason(&other["id"]).contains("only a charset parameter"),
        "{}",
        reason(&other["id"])
    );
    app.stop().await;
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Three 40 MB messages cost the worker about their size while lapin holds
/// them, not several copies: peak RSS stays within 140 MB of the idle RSS,
/// and the event behind them is delivered.
#[tokio::test]
async fn oversized_messages_cost_their_size_once_and_do_not_block() {
    let deployment = Deployment::new(TestBackend::Sqlite).await;
    let (smtp, settings) = (&deployment.smtp, &deployment.settings);
    let store = deployment.store().await;
    crate::support::import_directory(&store, &sample_directory()).await;
    let mut run = deployment.spawn("big", &[]);
    run.wait_consuming().await;
    let pid = run.child.id();
    let idle = rss_kib(pid, "VmRSS:");

    let publisher = Publisher::connect(AMQP_URL, &settings.amqp.exchange)
        .await
        .unwrap();
    // The envelope first and the huge `data` last, as a portal would write
    // it; 40 MB of small array items, which cost many times their size once
    // parsed into a JSON value.
    let mut envelope = fresh("naleving.aanleververzoek");
    envelope.as_object_mut().unwrap().remove("data");
    let head = envelope.to_string();
    let items = "0,".repeat(20 * 1024 * 1024);
    let big = format!(
        "{},\"data\":{{\"filler\":[{items}0]}}}}",
        &head[..head.len() - 1]
    )
    .into_bytes();
    for _ in 0..3 {
        publisher
            .publish("naleving.aanleververzoek", None, &big)
            .await
            .unwrap();
    }
    drop(big);
    let good = fresh("naleving.aanleververzoek");
    publisher
        .publish(
            "naleving.aanleververzoek",
            None,
            good.to_string().as_bytes(),
        )
        .await
        .unwrap();
    smtp.wait_for_count(1, crate::support::WAIT)
        .await
        .expect("the event behind the big ones is delivered");
    let mut c = store.pool().acquire().await.unwrap();
    let rows = notifier::store::events::list_quarantine(&mut c, false, 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3, "{rows:#?}");
    for r in &rows {
        assert!(r.reason.contains("more than the 64 KiB"), "{}", r.reason);
        assert!(r.size > 40 * 1024 * 1024, "the full size is recorded");
        assert!(r.raw.len() <= 64 * 1024, "only a bounded prefix is kept");
        assert!(r.event_id.is_some(), "the id is read from the prefix");
    }
    let peak = rss_kib(pid, "VmHWM:");
    let above = (peak.saturating_sub(idle)) / 1024;
    eprintln!(
        "idle RSS {} MiB, peak {} MiB, {above} MiB above idle",
        idle / 1024,
        peak / 1024
    );
    assert!(
        above <= 140,
        "peak RSS {} MiB is {above} MiB above the idle {} MiB (at most 140 expected)",
        peak / 1024,
        idle / 1024
    );
    assert!(run.terminate(), "{}", run.log_text());
}
