//! The delivery engine against a scriptable SMTP server over TCP.

use crate::support::{Deployment, TestBackend, fresh, sample_directory, spawn_app};
use notifier::domain::delivery::DeliveryStatus;

#[tokio::test]
async fn a_rejected_address_fails_at_once_and_others_still_get_their_mail() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    app.smtp
        .reply_for_rcpt("p.jansen", "550 5.1.1 No such user");
    let id = app.publish_fresh("contract.voorstel_aangeboden").await;
    let rows = app
        .wait_deliveries(Some(&id), "final", |r| {
            r.len() >= 2
                && r.iter()
                    .filter(|d| d.kind == "contract.voorstel_aangeboden")
                    .all(|d| d.status == DeliveryStatus::Sent || d.status == DeliveryStatus::Failed)
        })
        .await;
    let failed = rows
        .iter()
        .find(|d| d.recipient == "p.jansen@fysio-noord.example")
        .unwrap();
    assert_eq!(failed.status, DeliveryStatus::Failed);
    assert_eq!(failed.attempts, 1);
    assert!(
        failed.last_error.as_deref().unwrap().contains("550"),
        "{failed:?}"
    );
    let ok = rows
        .iter()
        .find(|d| {
            d.recipient == "j.devries@fysio-noord.example"
                && d.kind == "contract.voorstel_aangeboden"
        })
        .unwrap();
    assert_eq!(ok.status, DeliveryStatus::Sent);
    app.stop().await;
}

#[tokio::test]
async fn a_transient_reply_is_retried_and_delivered() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    app.smtp.reply_for_rcpt_times(
        "praktijk@",
        // The schedule says 1 s; the relay's own wait is longer and wins.
        "450 4.2.0 Greylisted, try again in 2 seconds",
        1,
    );
    let id = app.publish_fresh("naleving.aanleververzoek").await;
    let rows = app
        .wait_deliveries(Some(&id), "sent after a retry", |r| {
            r.len() == 1 && r[0].status == DeliveryStatus::Sent
        })
        .await;
    assert_eq!(rows[0].attempts, 2);
    let attempts = app.attempts(&rows[0].id).await;
    assert_eq!(attempts[0].outcome.as_str(), "transient");
    assert_eq!(attempts[0].smtp_code, Some(450));
    assert_eq!(attempts[1].outcome.as_str(), "sent");
    let waited = attempts[1].started_at - (attempts[0].started_at + attempts[0].duration_ms);
    assert!(
        waited >= 2000,
        "the relay's 'try again in 2 seconds' was honoured: waited {waited} ms"
    );
    assert_eq!(app.smtp.count(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_drop_after_the_data_is_unknown_and_resent_with_the_same_message_id() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    app.smtp.drop_after_data_times(1);
    let id = app.publish_fresh("naleving.aanleververzoek").await;
    let rows = app
        .wait_deliveries(Some(&id), "sent", |r| {
            r.len() == 1 && r[0].status == DeliveryStatus::Sent
        })
        .await;
    let attempts = app.attempts(&rows[0].id).await;
    assert_eq!(
        attempts
            .iter()
            .map(|a| a.outcome.as_str())
            .collect::<Vec<_>>(),
        vec!["unknown", "sent"]
    );
    let dropped = app.smtp.dropped_after_data();
    let got = app.wait_mails(1).await;
    let id1 = crate::support::parse_mail(&dropped[0]).message_id;
    let id2 = crate::support::parse_mail(&got[0]).message_id;
    assert_eq!(
        id1, id2,
        "the possible duplicate carries the same Message-ID"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_relay_fault_opens_the_circuit_without_failing_deliveries() {
    let app = spawn_app("[breaker]\nopen_for = \"1s\"").await;
    app.import_directory(&sample_directory()).await;
    app.smtp
        .reply_for_command_times("MAIL", "530 5.7.0 Authentication required", 2);
    let id = app.publish_fresh("naleving.aanleververzoek").await;
    let rows = app
        .wait_deliveries(Some(&id), "sent once the relay works", |r| {
            r.len() == 1 && r[0].status == DeliveryStatus::Sent
        })
        .await;
    let attempts = app.attempts(&rows[0].id).await;
    assert_eq!(attempts[0].outcome.as_str(), "relay_fault");
    assert_eq!(attempts.last().unwrap().outcome.as_str(), "sent");
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_user_gets_nothing_even_for_events_already_accepted() {
    let app = crate::support::spawn_app_holding_sending().await;
    let id = app.publish_held("contract.voorstel_aangeboden", 2).await;
    let mut revoke = fresh("certificaat.ingetrokken");
    revoke["data"]["gebruikersnummer"] = "10000000000002".into();
    app.publish_applied(&revoke).await;
    app.release_sending().await;
    let rows = app
        .wait_deliveries(Some(&id), "final", |r| {
            r.iter()
                .all(|d| d.status == DeliveryStatus::Sent || d.status == DeliveryStatus::Cancelled)
        })
        .await;
    let jansen = rows
        .iter()
        .find(|d| d.recipient == "p.jansen@fysio-noord.example")
        .unwrap();
    assert_eq!(jansen.status, DeliveryStatus::Cancelled);
    assert!(jansen.last_error.as_deref().unwrap().contains("revoked"));
    // The contact person (J. de Vries) got the module mail and the revocation confirmation.
    let mails = app.wait_mails(2).await;
    assert!(
        mails
            .iter()
            .all(|m| m.rcpt_to != vec!["p.jansen@fysio-noord.example"])
    );
    app.stop().await;
}

#[tokio::test]
async fn other_transient_replies_are_retried() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    // Mailbox full at RCPT (452 and 552), and the relay closing the session at MAIL (421).
    app.smtp
        .reply_for_rcpt_times("p.jansen", "452 4.2.2 Mailbox full", 1);
    app.smtp
        .reply_for_rcpt_times("j.devries", "552 5.2.2 Mailbox full", 1);
    let id = app.publish_fresh("uitvraag.beoordeeld").await;
    let rows = app
        .wait_deliveries(Some(&id), "both sent", |r| {
            r.len() == 2 && r.iter().all(|d| d.status == DeliveryStatus::Sent)
        })
        .await;
    for d in &rows {
        let a = app.attempts(&d.id).await;
        assert_eq!(a[0].outcome.as_str(), "transient", "{d:?}");
        assert!(matches!(a[0].smtp_code, Some(452) | Some(552)));
        assert_eq!(a.last().unwrap().outcome.as_str(), "sent");
    }
    // A 421 on a pooled connection is retried once at once on a fresh one (the relay
    // may just have closed an idle session); a second 421 is a recorded transient attempt.
    app.smtp
        .reply_for_command_times("MAIL", "421 4.3.0 closing, try later", 2);
    let id = app.publish_fresh("naleving.aanleververzoek").await;
    let rows = app
        .wait_deliveries(Some(&id), "sent", |r| {
            r.len() == 1 && r[0].status == DeliveryStatus::Sent
        })
        .await;
    let a = app.attempts(&rows[0].id).await;
    assert_eq!(a[0].outcome.as_str(), "transient");
    assert_eq!(a[0].smtp_code, Some(421));
    app.stop().await;
}

#[tokio::test]
async fn content_rejected_after_the_data_fails_permanently() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    app.smtp
        .reply_for_command("DATA_END", "552 5.3.4 Message too big");
    let id = app.publish_fresh("naleving.aanleververzoek").await;
    let rows = app
        .wait_deliveries(Some(&id), "failed", |r| {
            r.iter().any(|d| d.status == DeliveryStatus::Failed)
        })
        .await;
    let d = rows
        .iter()
        .find(|d| d.kind == "naleving.aanleververzoek")
        .unwrap();
    assert_eq!(d.attempts, 1);
    assert!(d.last_error.as_deref().unwrap().contains("5.3.4"));
    app.stop().await;
}

#[tokio::test]
async fn a_stalled_reply_to_the_data_is_bounded_and_counted_as_unknown() {
    let app = spawn_app("[smtp]\ntimeout = \"1s\"").await;
    app.import_directory(&sample_directory()).await;
    app.smtp
        .stall_after_data(Some(std::time::Duration::from_secs(3)));
    let id = app.publish_fresh("naleving.aanleververzoek").await;
    let rows = app
        .wait_deliveries(Some(&id), "a first attempt", |r| {
            r.len() == 1 && r[0].attempts >= 1
        })
        .await;
    app.smtp.stall_after_data(None);
    let rows = app
        .wait_deliveries(Some(&id), "sent", |r| {
            r.len() == 1 && r[0].status == DeliveryStatus::Sent
        })
        .await
        .into_iter()
        .chain(rows)
        .collect::<Vec<_>>();
    let a = app.attempts(&rows[0].id).await;
    assert_eq!(a[0].outcome.as_str(), "unknown");
    assert!(
        a[0].detail.as_deref().unwrap().contains("smtp.timeout"),
        "{a:?}"
    );
    assert!(a[0].duration_ms < 2900, "bounded by smtp.timeout: {a:?}");
    app.stop().await;
}

#[tokio::test]
async fn tls_required_but_not_offered_is_a_relay_fault_and_nothing_fails() {
    let app = spawn_app("").await;
    let dir = tempfile::tempdir().unwrap();
    // Same service, but the relay URL demands STARTTLS, which the test server does not offer.
    let s = crate::support::TestConfig::new(dir.path())
        .smtp(&format!("{}?tls=required", app.smtp.url()))
        .settings();
    let (_store, d, summary) = crate::support::ingest_and_dispatch_one(&s).await;
    assert_eq!(summary.failed, 0);
    assert_eq!(summary.retried, 1);
    assert_eq!(
        d.breaker().state(),
        notifier::mail::relay::CircuitState::Open
    );
    assert!(d.breaker().last_reason().unwrap().contains("STARTTLS"));
    assert_eq!(app.smtp.count(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_relay_outage_with_a_backlog_drains_at_the_configured_rate() {
    let app = spawn_app("[smtp]\nmax_rate = 100\nconcurrency = 8\n[breaker]\nfailure_threshold = 3\nopen_for = \"500ms\"").await;
    app.import_directory(&crate::support::many_users("01999999", 1000))
        .await;
    app.smtp.stop_listening().await;
    let event = crate::support::event_for("01999999");
    let id = event["id"].as_str().unwrap().to_owned();
    app.publish(&event).await;
    app.wait_deliveries(Some(&id), "1000 deliveries", |r| r.len() == 1000)
        .await;
    // The relay is down: the breaker opens and nothing fails.
    let ready = app
        .wait_readyz("the circuit to open", |b| b.contains("\"open\""))
        .await;
    assert!(
        ready.starts_with("HTTP/1.1 503") || ready.starts_with("HTTP/1.0 503"),
        "{ready}"
    );
    app.smtp.start_listening().await;
    let mails = app
        .smtp
        .wait_for_count(1000, std::time::Duration::from_secs(120))
        .await
        .unwrap();
    let rows = app
        .wait_deliveries(Some(&id), "all sent", |r| {
            r.iter().all(|d| d.status == DeliveryStatus::Sent)
        })
        .await;
    assert_eq!(rows.len(), 1000);
    let distinct: std::collections::BTreeSet<_> =
        mails.iter().map(|m| m.rcpt_to[0].clone()).collect();
    assert_eq!(distinct.len(), 1000, "every address exactly once");
    assert_eq!(mails.len(), 1000);
    let peak = app
        .smtp
        .max_accepted_in_any_window(std::time::Duration::from_secs(1));
    assert!(
        peak <= 100,
        "{peak} mails accepted within one second, more than smtp.max_rate"
    );
    app.stop().await;
}

/// Waits until `pred` holds for the deliveries of event `id`, which a
/// worker process sends (so twice [`crate::support::WAIT`]).
async fn wait_for_event(
    store: &notifier::store::Store,
    id: &str,
    what: &str,
    pred: impl Fn(&[notifier::store::deliveries::DeliveryRow]) -> bool,
) {
    crate::support::wait_for_deliveries(store, Some(id), crate::support::WAIT * 2, what, pred)
        .await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_send_finish_within_the_grace() {
    let app = spawn_app("[shutdown]\ngrace = \"10s\"").await;
    app.import_directory(&sample_directory()).await;
    app.smtp
        .stall_after_data(Some(std::time::Duration::from_millis(700)));
    let id = app.publish_fresh("naleving.aanleververzoek").await;
    app.wait_deliveries(Some(&id), "the send in flight", |r| {
        r.len() == 1 && r[0].status == DeliveryStatus::Sending
    })
    .await;
    // `sending` is set at the claim, before the re-check and rendering: a
    // stop in between hands the delivery back unsent. Stop only once the
    // relay has the data, so the send really is in flight.
    app.smtp
        .wait_for_data(1, crate::support::WAIT)
        .await
        .unwrap();
    let store = app.store.clone();
    let _db = app.stop().await; // asserts a clean exit; the database is kept for the check below
    wait_for_event(&store, &id, "sent", |r| {
        r[0].status == DeliveryStatus::Sent && r[0].attempts == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_batch_loses_nothing_and_duplicates_only_in_flight_mails() {
    let deployment = Deployment::new(TestBackend::Sqlite).await;
    let (smtp, s) = (&deployment.smtp, &deployment.settings);
    let store = deployment.store().await;
    crate::support::import_directory(&store, &crate::support::many_users("02888888", 300)).await;
    let publisher =
        notifier::broker::publisher::Publisher::connect(crate::support::AMQP_URL, &s.amqp.exchange)
            .await
            .unwrap();
    let event = crate::support::event_for("02888888");
    let id = event["id"].as_str().unwrap().to_owned();
    publisher
        .publish(
            "uitvraag.vragenlijst_klaargezet",
            Some(&id),
            event.to_string().as_bytes(),
        )
        .await
        .unwrap();

    let env = [
        ("NOTIFIER_SMTP__MAX_RATE", "100"),
        ("NOTIFIER_SMTP__CONCURRENCY", "4"),
        ("NOTIFIER_DISPATCH__LEASE", "3s"),
    ];
    let mut first = deployment.spawn("first", &env);
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    while smtp.count() < 60 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first worker never got going"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    first.kill9();
    let at_kill = smtp.count();
    assert!(at_kill < 300, "killed mid-batch");

    let mut second = deployment.spawn("second", &env);
    wait_for_event(&store, &id, "every delivery sent", |r| {
        r.len() == 300 && r.iter().all(|d| d.status == DeliveryStatus::Sent)
    })
    .await;
    assert!(second.terminate(), "SIGTERM ends the worker with exit 0");

    let mails = smtp.messages();
    let mut per_address: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for m in &mails {
        per_address
            .entry(m.rcpt_to[0].clone())
            .or_default()
            .push(crate::support::parse_mail(m).message_id);
    }
    assert_eq!(per_address.len(), 300, "nothing lost");
    let duplicated: Vec<_> = per_address
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .collect();
    // Only a delivery in flight at the kill (sending, or sent and waiting
    // for its group's commit) can repeat, with the same Message-ID.
    let bound = notifier::pipeline::dispatch::max_in_flight(4, 100);
    assert!(
        duplicated.len() <= bound,
        "{} addresses got the mail twice",
        duplicated.len()
    );
    for (_, ids) in &duplicated {
        assert_eq!(ids.len(), 2);
        assert_eq!(
            ids[0], ids[1],
            "a repeated mail carries the same Message-ID"
        );
    }
}

#[tokio::test]
async fn an_address_change_before_the_send_is_used_and_a_shared_address_is_split() {
    let app = crate::support::spawn_app_holding_sending().await;
    // A. Bakker (03) and S. Visser (04) share praktijk@ for onderhandelen.
    let id = app.publish_held("onderhandeling.geaccordeerd", 2).await;
    let mut change = fresh("gebruiker.emailadres_gewijzigd");
    change["data"]["gebruikersnummer"] = "10000000000004".into();
    change["data"]["oud_email"] = "praktijk@fysio-noord.example".into();
    change["data"]["nieuw_email"] = "S.Visser@Fysio-Noord.example".into();
    change["data"]["versie"] = 3.into();
    app.publish_applied(&change).await;
    app.release_sending().await;
    let rows = app
        .wait_deliveries(Some(&id), "all sent", |r| {
            r.len() == 3 && r.iter().all(|d| d.status == DeliveryStatus::Sent)
        })
        .await;
    let mut to: Vec<_> = rows.iter().map(|d| d.recipient.as_str()).collect();
    to.sort();
    assert_eq!(
        to,
        vec![
            "j.devries@fysio-noord.example",
            "praktijk@fysio-noord.example",
            "s.visser@fysio-noord.example"
        ]
    );
    let mails = app.smtp.messages();
    let module_mails = mails
        .iter()
        .filter(|m| {
            crate::support::parse_mail(m)
                .subject
                .to_lowercase()
                .contains("onderhandeling")
        })
        .count();
    assert_eq!(module_mails, 3, "one module mail per current address");
    app.stop().await;
}

#[tokio::test]
async fn a_shared_address_still_serving_an_active_user_is_still_sent_after_a_revocation() {
    let app = crate::support::spawn_app_holding_sending().await;
    let id = app.publish_held("onderhandeling.geaccordeerd", 2).await;
    // S. Visser (04) is revoked; A. Bakker (03) still uses praktijk@.
    let mut revoke = fresh("certificaat.ingetrokken");
    revoke["data"]["gebruikersnummer"] = "10000000000004".into();
    revoke["data"]["versie"] = 3.into();
    app.publish_applied(&revoke).await;
    app.release_sending().await;
    let rows = app
        .wait_deliveries(Some(&id), "all sent", |r| {
            r.iter().all(|d| d.status == DeliveryStatus::Sent)
        })
        .await;
    assert!(
        rows.iter()
            .any(|d| d.recipient == "praktijk@fysio-noord.example")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_name_ids_never_addresses() {
    let deployment = Deployment::new(TestBackend::Sqlite).await;
    let (smtp, s) = (&deployment.smtp, &deployment.settings);
    // The relay quotes the address in its rejection, as real relays do.
    smtp.reply_for_rcpt(
        "p.jansen",
        "550 5.1.1 <p.jansen@fysio-noord.example>: Recipient address rejected",
    );
    let store = deployment.store().await;
    crate::support::import_directory(&store, &sample_directory()).await;
    let env = [
        ("NOTIFIER_LOG__FORMAT", "json"),
        ("NOTIFIER_LOG__LEVEL", "debug"),
    ];
    let mut worker = deployment.spawn("notifier", &env);
    worker.wait_consuming().await;
    let publisher =
        notifier::broker::publisher::Publisher::connect(crate::support::AMQP_URL, &s.amqp.exchange)
            .await
            .unwrap();
    let publish = |e: serde_json::Value| {
        let p = &publisher;
        async move {
            p.publish(e["type"].as_str().unwrap(), None, e.to_string().as_bytes())
                .await
                .unwrap()
        }
    };
    let final_ = |r: &[notifier::store::deliveries::DeliveryRow]| {
        r.iter()
            .all(|d| d.status == DeliveryStatus::Sent || d.status == DeliveryStatus::Failed)
    };
    // A rejected mail (and its escalation), an actor copy, and bad input naming an address.
    let first = fresh("contract.voorstel_aangeboden");
    let first_id = first["id"].as_str().unwrap().to_owned();
    publish(first).await;
    publish(fresh("onderhandeling.voorstel_gedaan")).await;
    publish(serde_json::json!({"specversion": "1.0", "id": "bad-1", "type": "contract.voorstel_aangeboden",
        "source": "/x", "time": "2026-10-14T08:05:00Z", "data": {"agb_code": "04123456", "email": "x.y@geheim.example"}}))
    .await;
    wait_for_event(&store, &first_id, "the rejection escalated", |r| {
        r.len() == 3 && final_(r)
    })
    .await;
    // Then an address change: a confirmation and a security notice.
    let mut change = fresh("gebruiker.emailadres_gewijzigd");
    change["data"]["versie"] = 4.into();
    let change_id = change["id"].as_str().unwrap().to_owned();
    publish(change).await;
    wait_for_event(&store, &change_id, "final", |r| r.len() == 2 && final_(r)).await;
    let first = first_id;
    assert!(worker.terminate());
    let text = worker.log_text();
    assert!(
        text.contains("consuming portal events"),
        "the log is the worker's"
    );
    assert!(text.contains(&first), "logs carry event ids");
    assert!(text.contains("delivery_id"), "logs carry delivery ids");
    for line in text.lines() {
        assert!(!line.contains('@'), "an address in the log: {line}");
        assert!(
            !line.contains("Jansen") && !line.contains("de Vries"),
            "a name in the log: {line}"
        );
    }
}

/// Ingests one event and dispatches it to the relay at `url`; when nothing
/// was sent, the relay circuit must have opened for a TLS reason.
async fn send_once_over(
    url: String,
    accept_invalid: bool,
) -> notifier::pipeline::dispatch::DispatchSummary {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[smtp]\ndanger_accept_invalid_certs = {accept_invalid}");
    let s = crate::support::TestConfig::new(dir.path())
        .smtp(&url)
        .with(&extra)
        .settings();
    let (store, d, summary) = crate::support::ingest_and_dispatch_one(&s).await;
    if summary.sent == 0 {
        let mut c = store.pool().acquire().await.unwrap();
        let rows = notifier::store::deliveries::list(&mut c, &Default::default())
            .await
            .unwrap();
        let a = notifier::store::deliveries::attempts(&mut c, &rows[0].id)
            .await
            .unwrap();
        assert!(
            d.breaker()
                .last_reason()
                .unwrap_or_default()
                .contains("TLS"),
            "{:?} {a:?}",
            d.breaker().last_reason()
        );
    }
    summary
}

#[tokio::test]
async fn starttls_and_implicit_tls_carry_the_mail_and_a_bad_certificate_is_a_relay_fault() {
    use crate::support::smtp_server::TestSmtpServer;
    let starttls = TestSmtpServer::start_starttls().await;
    let url = format!("{}?tls=required", starttls.url());
    assert_eq!(send_once_over(url.clone(), true).await.sent, 1);
    assert_eq!(starttls.count(), 1, "delivered over STARTTLS");
    // A certificate that fails verification: relay fault, nothing sent, nothing failed.
    let s = send_once_over(url, false).await;
    assert_eq!((s.sent, s.failed, s.retried), (0, 0, 1));
    assert_eq!(starttls.count(), 1);

    let implicit = TestSmtpServer::start_implicit_tls().await;
    let url = implicit.url().replace("smtp://", "smtps://");
    assert_eq!(send_once_over(url.clone(), true).await.sent, 1);
    assert_eq!(implicit.count(), 1, "delivered over smtps");
    let s = send_once_over(url, false).await;
    assert_eq!((s.sent, s.failed), (0, 0));
}

#[tokio::test]
async fn a_delivery_this_version_cannot_send_ends_failed_instead_of_looping() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    let id = app.publish_fresh("naleving.aanleververzoek").await;
    app.wait_deliveries(Some(&id), "sent", |r| {
        r.len() == 1 && r[0].status == DeliveryStatus::Sent
    })
    .await;
    // A row as a newer version might write it: a mail kind this one does not know.
    sqlx::query(
        "INSERT INTO deliveries (id, event_id, kind, about, address, rule, status, due_at, deadline, message_id, created_at) \
         SELECT 'future-1', event_id, 'beheer.iets_nieuws', '', address, rule, 'pending', due_at, deadline, 'future-1@x', created_at \
         FROM deliveries WHERE event_id = $1",
    )
    .bind(&id)
    .execute(app.store.pool())
    .await
    .unwrap();
    let rows = app
        .wait_deliveries(Some(&id), "the unknown kind failed", |r| {
            r.iter()
                .any(|d| d.id == "future-1" && d.status == DeliveryStatus::Failed)
        })
        .await;
    let d = rows.iter().find(|d| d.id == "future-1").unwrap();
    assert!(
        d.last_error
            .as_deref()
            .unwrap()
            .contains("unknown mail kind")
    );
    assert_eq!(app.smtp.count(), 1, "only the real mail");
    app.stop().await;
}

/// `smtp.bounce_key` of the bounce tests (and nowhere else).
const BOUNCE_KEY: &str = "test-bounce-key-0123456789abcdef-never-logged";

/// Settings that tag every mail for bounces.
fn bounce_tagging() -> String {
    format!("[smtp]\nbounce_address = \"Bounces@Zip.example.nl\"\nbounce_key = \"{BOUNCE_KEY}\"")
}

/// The `X-Notifier-Tag` header of a received mail, if any.
fn notifier_tag(m: &crate::support::smtp_server::ReceivedMail) -> Option<String> {
    let msg = mail_parser::MessageParser::default()
        .parse(&m.data)
        .expect("a MIME message");
    msg.header("X-Notifier-Tag")
        .and_then(|h| h.as_text())
        .map(str::to_owned)
}

/// The From header's address of a received mail.
fn header_from(m: &crate::support::smtp_server::ReceivedMail) -> String {
    let msg = mail_parser::MessageParser::default()
        .parse(&m.data)
        .expect("a MIME message");
    msg.from()
        .and_then(|f| f.first())
        .and_then(|a| a.address())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn with_a_bounce_address_each_mail_names_its_delivery_in_a_signed_envelope_sender() {
    use notifier::domain::bounce::{BounceKey, TagCheck, check};
    let app = spawn_app(&format!(
        "{}\n{}",
        crate::support::HOLD_SENDING,
        bounce_tagging()
    ))
    .await;
    app.import_directory(&sample_directory()).await;
    app.smtp.stop_listening().await;
    // P. Jansen's mail is prepared for his old address, then sent to his new one.
    let id = app.publish_held("contract.voorstel_aangeboden", 2).await;
    let mut change = fresh("gebruiker.emailadres_gewijzigd");
    change["data"]["nieuw_email"] = "p.jansen@nieuw.example".into();
    let change_id = change["id"].as_str().unwrap().to_owned();
    app.publish_applied(&change).await;
    app.release_sending().await;
    app.wait_deliveries(Some(&id), "both sent", |r| {
        r.len() == 2 && r.iter().all(|d| d.status == DeliveryStatus::Sent)
    })
    .await;
    app.wait_deliveries(Some(&change_id), "all sent", |r| {
        !r.is_empty() && r.iter().all(|d| d.status == DeliveryStatus::Sent)
    })
    .await;

    let key = BounceKey::parse(BOUNCE_KEY).unwrap();
    let rows = app.deliveries(None).await;
    let mails = app.smtp.messages();
    assert_eq!(mails.len(), rows.len(), "one mail per delivery: {rows:?}");
    assert!(
        mails
            .iter()
            .any(|m| m.rcpt_to == vec!["p.jansen@nieuw.example"]
                && crate::support::parse_mail(m)
                    .subject
                    .to_lowercase()
                    .contains("contract")),
        "the module mail went to the changed address"
    );
    let mut tags = std::collections::HashSet::new();
    for m in &mails {
        let message_id = crate::support::parse_mail(m).message_id;
        let row = rows
            .iter()
            .find(|d| d.message_id == message_id)
            .unwrap_or_else(|| panic!("no delivery with Message-ID {message_id}"));
        let (local, domain) = m.from.rsplit_once('@').unwrap();
        assert_eq!(domain, "zip.example.nl", "{}", m.from);
        let tag = local
            .strip_prefix("Bounces+")
            .unwrap_or_else(|| panic!("MAIL FROM {} is not the bounce address", m.from));
        assert!(local.len() <= 64, "{}", m.from);
        assert_eq!(check(tag, &key), TagCheck::Delivery(row.id.clone()));
        assert_eq!(notifier_tag(m).as_deref(), Some(tag), "{}", m.data_str());
        assert_eq!(header_from(m), "noreply@zip.example.nl");
        assert!(tags.insert(tag.to_owned()), "a tag names one delivery");
    }
    app.stop().await;
}

#[tokio::test]
async fn without_a_bounce_address_the_envelope_sender_is_the_from_address_and_there_is_no_tag() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    let id = app.publish_fresh("contract.voorstel_aangeboden").await;
    app.wait_deliveries(Some(&id), "both sent", |r| {
        r.len() == 2 && r.iter().all(|d| d.status == DeliveryStatus::Sent)
    })
    .await;
    let mails = app.wait_mails(2).await;
    for m in &mails {
        assert_eq!(m.from, "noreply@zip.example.nl");
        assert_eq!(header_from(m), "noreply@zip.example.nl");
        assert_eq!(notifier_tag(m), None);
        assert!(!m.data_str().contains("X-Notifier-Tag"));
    }
    app.stop().await;
}

/// `notifier ARGS` on `settings`' database with `env` on top, run off the
/// runtime the in-process service shares so it keeps serving meanwhile.
async fn notifier_cli(
    settings: &notifier::config::Settings,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let settings = settings.clone();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        crate::support::cli_env(&settings, &args, &env)
    })
    .await
    .unwrap()
}

/// The version `notifier templates check` prints for `kind`, with the
/// templates of `dir` (`None`: the built-in ones).
async fn checked_version(
    settings: &notifier::config::Settings,
    kind: &str,
    dir: Option<&std::path::Path>,
) -> String {
    let dir = dir.map_or(String::new(), |d| d.display().to_string());
    let out = notifier_cli(
        settings,
        &["templates", "check"],
        &[("NOTIFIER_MAIL__TEMPLATES_DIR", &dir)],
    )
    .await;
    let text = crate::support::stdout(&out);
    // `ok    KIND   VERSION` or `FAIL  KIND   VERSION  [variant] reason`.
    text.lines()
        .find_map(|l| {
            let mut words = l.split_whitespace().skip(1);
            (words.next() == Some(kind)).then(|| words.next().unwrap().to_owned())
        })
        .unwrap_or_else(|| panic!("no line for {kind}: {text}"))
}

/// The templates every SMTP attempt of event `id` recorded, as `events show
/// --format json` gives them: (kind, source, version) per attempt. Checks on
/// the way that reports read back record none, and that `deliveries list
/// --format json` gives each delivery those of its last attempt.
async fn recorded_templates(
    app: &crate::support::TestApp,
    id: &str,
) -> Vec<(String, String, String)> {
    let shown = notifier_cli(
        &app.settings,
        &["events", "show", id, "--format", "json"],
        &[],
    )
    .await;
    crate::support::ok(&shown);
    let listed = notifier_cli(
        &app.settings,
        &["deliveries", "list", "--event", id, "--format", "json"],
        &[],
    )
    .await;
    crate::support::ok(&listed);
    let listed = crate::support::json(&listed);
    let mut out = Vec::new();
    for d in crate::support::json(&shown)["deliveries"]
        .as_array()
        .unwrap()
    {
        let mut last = (serde_json::Value::Null, serde_json::Value::Null);
        for a in d["attempt_log"].as_array().unwrap() {
            let (source, version) = (&a["template_source"], &a["template_version"]);
            if a["n"].is_null() {
                assert!(
                    source.is_null() && version.is_null(),
                    "a report rendered nothing: {a}"
                );
                continue;
            }
            let v = version
                .as_str()
                .unwrap_or_else(|| panic!("no template_version: {a}"));
            assert!(
                v.len() == 12
                    && v.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "template_version is 12 hex characters: {a}"
            );
            out.push((
                d["kind"].as_str().unwrap().to_owned(),
                source
                    .as_str()
                    .unwrap_or_else(|| panic!("no template_source: {a}"))
                    .to_owned(),
                v.to_owned(),
            ));
            last = (source.clone(), version.clone());
        }
        let row = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == d["id"])
            .unwrap_or_else(|| panic!("{} not in deliveries list", d["id"]));
        assert_eq!(
            (&row["template_source"], &row["template_version"]),
            (&last.0, &last.1),
            "deliveries list gives the last attempt's templates: {row}"
        );
    }
    out
}

#[tokio::test]
async fn every_attempt_records_the_templates_that_rendered_its_mail() {
    const KIND: &str = "contract.voorstel_aangeboden";
    // The built-in templates; one address is greylisted once, so one
    // delivery has two attempts.
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    app.smtp
        .reply_for_rcpt_times("j.devries", "450 4.2.0 try again later", 1);
    let event = fresh(KIND);
    let id = event["id"].as_str().unwrap().to_owned();
    let rows = app.publish_and_settle(&event).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter().all(|d| d.status == DeliveryStatus::Sent),
        "{rows:?}"
    );
    let builtin = checked_version(&app.settings, KIND, None).await;
    let attempts = recorded_templates(&app, &id).await;
    assert_eq!(
        attempts,
        vec![(KIND.to_owned(), "builtin".to_owned(), builtin.clone()); 3],
        "the 450, the retry and the other address's mail"
    );
    let table = notifier_cli(&app.settings, &["events", "show", &id], &[]).await;
    let table = crate::support::stdout(&table);
    assert_eq!(
        table
            .matches(&format!("templates {builtin} (builtin)"))
            .count(),
        3,
        "{table}"
    );
    app.stop().await;

    // A template release in `mail.templates_dir` that changes this kind's HTML.
    let releases = tempfile::tempdir().unwrap();
    let dir = releases.path().join("templates-2");
    crate::support::copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"),
        &dir,
    );
    let html = dir.join(KIND).join("html.hbs");
    let source = std::fs::read_to_string(&html).unwrap();
    assert!(source.contains("Met vriendelijke groet,"));
    std::fs::write(
        &html,
        source.replace("Met vriendelijke groet,", "Met vriendelijke groeten,"),
    )
    .unwrap();
    let other = "uitvraag.beoordeeld";
    let s = crate::support::TestConfig::new(releases.path()).settings();
    assert_eq!(
        checked_version(&s, other, Some(&dir)).await,
        checked_version(&s, other, None).await,
        "a kind whose files did not change keeps its version"
    );

    let app = spawn_app(&format!(
        "[mail]\ntemplates_dir = {}",
        toml::Value::from(dir.display().to_string())
    ))
    .await;
    app.import_directory(&sample_directory()).await;
    let event = fresh(KIND);
    let id = event["id"].as_str().unwrap().to_owned();
    let rows = app.publish_and_settle(&event).await;
    assert!(
        rows.iter().all(|d| d.status == DeliveryStatus::Sent),
        "{rows:?}"
    );
    let mails = app.parsed_mails();
    assert_eq!(mails.len(), 2);
    assert!(
        mails
            .iter()
            .all(|m| m.html.contains("Met vriendelijke groeten,"))
    );
    let released = checked_version(&app.settings, KIND, Some(&dir)).await;
    assert_ne!(
        released, builtin,
        "the changed html.hbs changes the version"
    );
    let attempts = recorded_templates(&app, &id).await;
    assert_eq!(
        attempts,
        vec![(KIND.to_owned(), dir.display().to_string(), released); 2],
        "source is the templates_dir path"
    );
    app.stop().await;
}

/// Users at an international address, and a contact person to tell.
async fn app_with_international_addresses(offer_smtputf8: bool) -> crate::support::TestApp {
    use crate::support::{Role, active_user};
    let app = spawn_app("").await;
    // Before the service's first connection: its EHLO is what counts.
    app.smtp.offer_smtputf8(offer_smtputf8);
    let agb = "04999001";
    app.import_users(&[
        active_user(
            "70000000000001",
            "jörg@bücher.example",
            agb,
            &["uitvragen"],
            Role::Member,
        ),
        active_user(
            "70000000000002",
            "Info@Bücher.example",
            agb,
            &["uitvragen"],
            Role::Member,
        ),
        active_user(
            "70000000000003",
            "cp@praktijk.example",
            agb,
            &["contracteren"],
            Role::Contactpersoon,
        ),
    ])
    .await;
    app
}

#[tokio::test]
async fn an_international_address_is_sent_with_smtputf8_when_the_relay_offers_it() {
    let app = app_with_international_addresses(true).await;
    let rows = app
        .publish_and_settle(&crate::support::fresh_for(
            "uitvraag.vragenlijst_klaargezet",
            "04999001",
        ))
        .await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert!(
        rows.iter().all(|d| d.status == DeliveryStatus::Sent),
        "{rows:#?}"
    );
    let mails = app.smtp.messages();
    let to = |rcpt: &str| {
        mails
            .iter()
            .find(|m| m.rcpt_to == [rcpt])
            .unwrap_or_else(|| panic!("no mail to {rcpt}: {mails:#?}"))
    };
    let jorg = to("jörg@bücher.example");
    assert!(
        jorg.mail_params.iter().any(|p| p == "SMTPUTF8"),
        "{:?}",
        jorg.mail_params
    );
    assert!(jorg.data_str().contains("\r\nTo: jörg@bücher.example\r\n"));
    // An ASCII local part needs no SMTPUTF8: the domain goes as its A-label.
    let info = to("Info@xn--bcher-kva.example");
    assert!(info.mail_params.iter().all(|p| p != "SMTPUTF8"));
    assert!(info.data.is_ascii());
    assert!(
        info.data_str()
            .contains("\r\nTo: Info@xn--bcher-kva.example\r\n")
    );
    app.stop().await;
}

#[tokio::test]
async fn without_smtputf8_an_international_address_fails_for_good_and_the_contact_persons_are_told()
{
    let app = app_with_international_addresses(false).await;
    let e = crate::support::fresh_for("uitvraag.vragenlijst_klaargezet", "04999001");
    let id = e["id"].as_str().unwrap().to_owned();
    let rows = app.publish_and_settle(&e).await;
    let jorg = rows
        .iter()
        .find(|d| d.recipient == "jörg@bücher.example")
        .unwrap();
    assert_eq!(jorg.status, DeliveryStatus::Failed, "{jorg:#?}");
    assert_eq!(jorg.attempts, 1, "permanent: not retried");
    assert_eq!(
        jorg.last_error.as_deref(),
        Some(
            "the relay does not support international addresses (no SMTPUTF8); the address needs an ASCII form or a relay that offers SMTPUTF8"
        )
    );
    let info = rows
        .iter()
        .find(|d| d.recipient == "info@bücher.example")
        .unwrap();
    assert_eq!(
        info.status,
        DeliveryStatus::Sent,
        "the A-label needs no SMTPUTF8"
    );

    let notice = app.wait_sent(&id, "beheer.onbestelbaar").await;
    assert_eq!(notice.recipient, "cp@praktijk.example");
    let mail = app
        .parsed_mails()
        .into_iter()
        .find(|m| m.message_id == notice.message_id)
        .unwrap();
    assert!(
        mail.text
            .contains("de ontvangende server ondersteunt geen internationale adressen"),
        "{}",
        mail.text
    );
    assert!(mail.text.contains("70000000000001"), "{}", mail.text);
    // Nothing but ASCII reached the relay: no raw UTF-8 in any command.
    let commands = app.smtp.commands();
    assert!(
        commands.iter().all(|c| c.is_ascii()),
        "a non-ASCII command was sent: {commands:#?}"
    );
    assert!(
        commands
            .iter()
            .any(|c| c == "RCPT TO:<Info@xn--bcher-kva.example>"),
        "{commands:#?}"
    );
    app.stop().await;
}
