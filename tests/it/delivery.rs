//! The delivery engine against a scriptable SMTP server over TCP.

use crate::support::{fresh, sample_directory, spawn_app};

#[tokio::test]
async fn a_rejected_address_fails_at_once_and_others_still_get_their_mail() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    app.smtp
        .reply_for_rcpt("p.jansen", "550 5.1.1 No such user");
    let event = fresh("contract.voorstel_aangeboden");
    let id = event["id"].as_str().unwrap().to_owned();
    app.publish(&event).await;
    let rows = app
        .wait_deliveries(Some(&id), "final", |r| {
            r.len() >= 2
                && r.iter()
                    .filter(|d| d.kind == "contract.voorstel_aangeboden")
                    .all(|d| d.status == "sent" || d.status == "failed")
        })
        .await;
    let failed = rows
        .iter()
        .find(|d| d.recipient == "p.jansen@fysio-noord.example")
        .unwrap();
    assert_eq!(failed.status, "failed");
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
    assert_eq!(ok.status, "sent");
    app.stop().await;
}

#[tokio::test]
async fn a_transient_reply_is_retried_and_delivered() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    app.smtp.reply_for_rcpt_times(
        "praktijk@",
        "450 4.2.0 Greylisted, try again in 1 seconds",
        1,
    );
    let event = fresh("naleving.aanleververzoek");
    let id = event["id"].as_str().unwrap().to_owned();
    app.publish(&event).await;
    let rows = app
        .wait_deliveries(Some(&id), "sent after a retry", |r| {
            r.len() == 1 && r[0].status == "sent"
        })
        .await;
    assert_eq!(rows[0].attempts, 2);
    let mut c = app.store.pool().acquire().await.unwrap();
    let attempts = notifier::store::deliveries::attempts(&mut c, &rows[0].id)
        .await
        .unwrap();
    assert_eq!(attempts[0].outcome, "transient");
    assert_eq!(attempts[0].smtp_code, Some(450));
    assert_eq!(attempts[1].outcome, "sent");
    assert_eq!(app.smtp.count(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_drop_after_the_data_is_unknown_and_resent_with_the_same_message_id() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    app.smtp.drop_after_data_times(1);
    let event = fresh("naleving.aanleververzoek");
    let id = event["id"].as_str().unwrap().to_owned();
    app.publish(&event).await;
    let rows = app
        .wait_deliveries(Some(&id), "sent", |r| r.len() == 1 && r[0].status == "sent")
        .await;
    let mut c = app.store.pool().acquire().await.unwrap();
    let attempts = notifier::store::deliveries::attempts(&mut c, &rows[0].id)
        .await
        .unwrap();
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
    let event = fresh("naleving.aanleververzoek");
    let id = event["id"].as_str().unwrap().to_owned();
    app.publish(&event).await;
    let rows = app
        .wait_deliveries(Some(&id), "sent once the relay works", |r| {
            r.len() == 1 && r[0].status == "sent"
        })
        .await;
    let mut c = app.store.pool().acquire().await.unwrap();
    let attempts = notifier::store::deliveries::attempts(&mut c, &rows[0].id)
        .await
        .unwrap();
    assert_eq!(attempts[0].outcome, "relay_fault");
    assert_eq!(attempts.last().unwrap().outcome, "sent");
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_user_gets_nothing_even_for_events_already_accepted() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    // Hold sending: the relay refuses connections until the revocation is in.
    app.smtp.stop_listening().await;
    let event = fresh("contract.voorstel_aangeboden");
    let id = event["id"].as_str().unwrap().to_owned();
    app.publish(&event).await;
    app.wait_deliveries(Some(&id), "two deliveries", |r| r.len() == 2)
        .await;
    let mut revoke = fresh("certificaat.ingetrokken");
    revoke["data"]["gebruikersnummer"] = "10000000000002".into();
    app.publish(&revoke).await;
    let e = app.wait_event(revoke["id"].as_str().unwrap()).await;
    assert_eq!(e.state, "applied");
    app.smtp.start_listening().await;
    let rows = app
        .wait_deliveries(Some(&id), "final", |r| {
            r.iter()
                .all(|d| d.status == "sent" || d.status == "cancelled")
        })
        .await;
    let jansen = rows
        .iter()
        .find(|d| d.recipient == "p.jansen@fysio-noord.example")
        .unwrap();
    assert_eq!(jansen.status, "cancelled");
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
