//! What a relay says (or does not say) must never crash the worker, pause
//! everyone for one recipient, or make a mail go out twice: against the
//! scriptable SMTP server over TCP, the real RabbitMQ and the database.

use crate::support::{event_for, many_users, sample_directory, spawn_app};
use notifier::domain::delivery::DeliveryStatus;

fn all_final(rows: &[notifier::store::deliveries::DeliveryRow]) -> bool {
    !rows.is_empty() && rows.iter().all(|d| d.status.is_final())
}

#[tokio::test]
async fn an_absurd_retry_hint_means_one_more_try_at_the_deadline_and_crashes_nothing() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    app.smtp.reply_for_rcpt_times(
        "praktijk@",
        "451 4.7.1 Service busy, try again in 9000000000000 seconds",
        1,
    );
    let id = app.publish_fresh("naleving.aanleververzoek").await;
    let rows = app
        .wait_deliveries(Some(&id), "the retry planned", |r| {
            r.len() == 1 && r[0].status == DeliveryStatus::Pending && r[0].attempts == 1
        })
        .await;
    assert_eq!(
        rows[0].due_at, rows[0].deadline,
        "a hint past the deadline means one more try at the deadline"
    );
    let attempts = app.attempts(&rows[0].id).await;
    assert_eq!(attempts[0].outcome.as_str(), "transient");

    // The worker is still there: the next event's mails go out.
    let next = app.publish_fresh("uitvraag.vragenlijst_klaargezet").await;
    let sent = app
        .wait_deliveries(Some(&next), "the next event sent", all_final)
        .await;
    assert!(
        sent.iter().all(|d| d.status == DeliveryStatus::Sent),
        "{sent:#?}"
    );
    // And it stops cleanly (a panic in a task would fail this).
    app.stop().await;
}

#[tokio::test]
async fn one_recipients_policy_refusal_is_retried_twice_then_escalated_without_pausing_others() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    app.smtp.reply_for_rcpt(
        "praktijk@",
        "550 5.7.1 <praktijk@fysio-noord.example>: Recipient address rejected: Access denied",
    );
    let id = app.publish_fresh("naleving.aanleververzoek").await;
    // Others are not held back while that recipient is refused.
    let other = app.publish_fresh("uitvraag.vragenlijst_klaargezet").await;
    let others = app
        .wait_deliveries(Some(&other), "the other event sent", all_final)
        .await;
    assert!(
        others.iter().all(|d| d.status == DeliveryStatus::Sent),
        "{others:#?}"
    );

    let rows = app
        .wait_deliveries(Some(&id), "the refused mail failed and escalated", |r| {
            r.iter()
                .any(|d| d.kind == "naleving.aanleververzoek" && d.status == DeliveryStatus::Failed)
                && r.iter()
                    .any(|d| d.kind == "beheer.onbestelbaar" && d.status == DeliveryStatus::Sent)
        })
        .await;
    let refused = rows
        .iter()
        .find(|d| d.kind == "naleving.aanleververzoek")
        .unwrap();
    let attempts = app.attempts(&refused.id).await;
    assert_eq!(
        attempts
            .iter()
            .map(|a| a.outcome.as_str())
            .collect::<Vec<_>>(),
        ["permanent", "permanent", "permanent"],
        "the first try and two retries"
    );
    let ready = app.readyz().await;
    assert!(
        ready.starts_with("HTTP/1.0 200"),
        "one recipient's refusal never opens the circuit: {ready}"
    );
    app.stop().await;
}

#[tokio::test]
async fn distinct_recipients_refused_in_a_row_are_the_relay_refusing_us() {
    let app = spawn_app("[breaker]\nfailure_threshold = 3\nopen_for = \"1s\"").await;
    let agb = "04999001";
    app.import_directory(&many_users(agb, 4)).await;
    app.smtp.reply_for_rcpt(
        "@praktijk",
        "554 5.7.1 <x@praktijk.example>: Relay access denied",
    );
    let event = event_for(agb);
    app.publish(&event).await;
    let id = event["id"].as_str().unwrap();
    // The circuit opens; wait until every mail has been tried once and is
    // waiting for the probe.
    let rows = app
        .wait_deliveries(Some(id), "every mail tried and waiting", |r| {
            r.len() == 4
                && r.iter()
                    .all(|d| d.status == DeliveryStatus::Pending && d.attempts >= 1)
        })
        .await;
    // The relay works again: every mail goes out, no notice is raised.
    app.smtp.reset_script();
    let rows_after = app
        .wait_deliveries(Some(id), "all sent after the relay accepts again", |r| {
            r.len() == 4 && r.iter().all(|d| d.status == DeliveryStatus::Sent)
        })
        .await;
    assert_eq!(rows_after.len(), rows.len());
    for d in &rows_after {
        let attempts = app.attempts(&d.id).await;
        let (last, before) = attempts.split_last().unwrap();
        assert_eq!(last.outcome.as_str(), "sent");
        assert!(
            before.iter().all(|a| a.outcome.as_str() == "relay_fault"),
            "refusals of the run count as a relay fault, not against {}: {attempts:#?}",
            d.id
        );
    }
    let all = app.deliveries(None).await;
    assert!(
        all.iter().all(|d| d.kind != "beheer.onbestelbaar"),
        "no notice for a relay that refused us: {all:#?}"
    );
    let ready = app.readyz().await;
    assert!(ready.starts_with("HTTP/1.0 200"), "{ready}");
    app.stop().await;
}

/// Two instances on one PostgreSQL database; the relay takes longer to
/// answer the data than `dispatch.lease`. The instance sending a mail keeps
/// its lease, so the other never claims it again: each mail arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_slower_than_the_lease_is_sent_once_by_two_instances() {
    use crate::support::{Deployment, TestBackend, wait_all_deliveries};
    let deployment = Deployment::new(TestBackend::Postgres).await;
    let (smtp, s) = (&deployment.smtp, &deployment.settings);
    smtp.stall_after_data(Some(std::time::Duration::from_millis(4500)));
    let store = deployment.store().await;
    crate::support::import_directory(&store, &many_users("04555555", 3)).await;
    let env = [
        ("NOTIFIER_DISPATCH__LEASE", "3s"),
        ("NOTIFIER_SMTP__TIMEOUT", "20s"),
    ];
    let mut a = deployment.spawn("a", &env);
    let mut b = deployment.spawn("b", &env);
    a.wait_consuming().await;
    b.wait_consuming().await;
    let publisher =
        notifier::broker::publisher::Publisher::connect(crate::support::AMQP_URL, &s.amqp.exchange)
            .await
            .unwrap();
    let e = event_for("04555555");
    publisher
        .publish(e["type"].as_str().unwrap(), None, e.to_string().as_bytes())
        .await
        .unwrap();
    wait_all_deliveries(&store, std::time::Duration::from_secs(60), "3 sent", |r| {
        r.len() == 3 && r.iter().all(|d| d.status == DeliveryStatus::Sent)
    })
    .await;
    let mut per_rcpt: std::collections::BTreeMap<String, usize> = Default::default();
    for m in smtp.messages() {
        *per_rcpt.entry(m.rcpt_to[0].clone()).or_default() += 1;
    }
    assert_eq!(per_rcpt.len(), 3, "{per_rcpt:?}");
    assert!(
        per_rcpt.values().all(|n| *n == 1),
        "each mail arrives once although the relay is slower than the lease: {per_rcpt:?}"
    );
    assert!(a.terminate(), "{}", a.log_text());
    assert!(b.terminate(), "{}", b.log_text());
}
