//! End to end: portal events published to RabbitMQ become the right mails.

use crate::support::{fresh, parse_mail, sample_directory, spawn_app};
use notifier::domain::delivery::DeliveryStatus;
use std::collections::BTreeSet;

fn recipients(mails: &[crate::support::smtp_server::ReceivedMail]) -> BTreeSet<String> {
    mails.iter().flat_map(|m| m.rcpt_to.clone()).collect()
}

#[tokio::test]
async fn voorstel_aangeboden_mails_each_active_address_with_contracteren_once() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    let id = app.publish_fresh("contract.voorstel_aangeboden").await;

    let rows = app
        .wait_deliveries(Some(&id), "both deliveries sent", |r| {
            r.len() == 2 && r.iter().all(|d| d.status == DeliveryStatus::Sent)
        })
        .await;
    let mails = app.wait_mails(2).await;
    // J. de Vries and P. Jansen have contracteren; K. Smit (also contracteren) is revoked;
    // A. Bakker and S. Visser do not have the right.
    assert_eq!(
        recipients(&mails),
        BTreeSet::from([
            "j.devries@fysio-noord.example".to_string(),
            "p.jansen@fysio-noord.example".to_string()
        ])
    );
    assert_eq!(app.smtp.count(), 2, "exactly one mail per address");
    for m in &mails {
        let p = parse_mail(m);
        assert_eq!(
            p.subject,
            // No organisatie.bijgewerkt here: the AGB code names the practice.
            "Contractvoorstel van Zorgverzekeraar Noord voor 04123456: Overeenkomst fysiotherapie 2027"
        );
        assert!(
            p.text.contains("Alleen een tekenbevoegde"),
            "text part says only a signer can accept"
        );
        assert!(p.html.contains("Alleen een tekenbevoegde"));
        assert!(
            p.text
                .contains("https://zip.example.nl/contract/C-2027-118734")
        );
        assert!(
            p.html
                .contains("href=\"https://zip.example.nl/contract/C-2027-118734\"")
        );
        assert!(p.text.contains("12 november 2026"), "dates in Dutch");
        assert!(
            p.text.contains("niet afmelden") || p.text.to_lowercase().contains("afmelden"),
            "footer: no opt-out"
        );
        assert!(p.raw.contains("Auto-Submitted: auto-generated"));
        assert!(p.raw.contains("X-Auto-Response-Suppress: All"));
        let d = rows
            .iter()
            .find(|d| d.recipient == m.rcpt_to[0])
            .expect("a delivery per mail");
        assert_eq!(
            p.message_id, d.message_id,
            "Message-ID derived from the delivery id"
        );
        assert!(d.message_id.starts_with(&d.id));
        assert_eq!(d.rule.label(), "U(contracteren)");
        assert_eq!(d.attempts, 1);
    }
    app.stop().await;
}

/// With polling made useless (`dispatch.idle_poll` an hour), a published
/// event's mails still go out: ingest wakes the dispatcher when it commits.
#[tokio::test]
async fn ingest_wakes_the_dispatcher_instead_of_waiting_for_the_poll() {
    let app = spawn_app("[dispatch]\nidle_poll = \"1h\"").await;
    app.import_directory(&sample_directory()).await;
    for _ in 0..3 {
        let id = app.publish_fresh("contract.voorstel_aangeboden").await;
        app.wait_deliveries(Some(&id), "both deliveries sent", |r| {
            r.len() == 2 && r.iter().all(|d| d.status == DeliveryStatus::Sent)
        })
        .await;
    }
    assert_eq!(app.smtp.count(), 6);
}

/// A stop that arrives while the dispatcher is in the middle of a round that
/// then finds nothing stops the service at once; it does not wait out
/// `dispatch.idle_poll` (a hang seen in CI). The round is held in its claim
/// by a table lock, so that the stop lands inside it every time.
#[tokio::test]
async fn a_stop_during_an_empty_round_stops_the_service() {
    use std::time::Duration;
    let app = crate::support::spawn_app_with(
        "[dispatch]\nidle_poll = \"1h\"",
        crate::support::TestBackend::Postgres,
        |_| {},
    )
    .await;
    let pool = app.store.pool().clone();
    let waiting = async |what: &str, sql: &str| {
        let deadline = tokio::time::Instant::now() + crate::support::WAIT;
        while sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&pool)
            .await
            .unwrap()
            == 0
        {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    waiting(
        "the service listens for due deliveries",
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    sqlx::query("NOTIFY notifier_due")
        .execute(&pool)
        .await
        .unwrap();
    waiting(
        "the woken dispatcher's claim waits for the lock",
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock' AND query LIKE '%picked%'",
    )
    .await;
    app.request_stop();
    lock.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), app.stop())
        .await
        .expect("the service stops within 30 s of the stop, not after dispatch.idle_poll");
}

#[tokio::test]
async fn bad_input_is_quarantined_and_the_next_good_message_still_delivered() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    app.publish_raw("contract.voorstel_aangeboden", b"{ this is not json")
        .await;
    let mut unknown = fresh("contract.voorstel_aangeboden");
    unknown["type"] = "contract.iets_nieuws".into();
    app.publish(&unknown).await;
    let mut bad_link = fresh("uitvraag.beoordeeld");
    bad_link["data"]["url"] = "https://phishing.example/login".into();
    app.publish(&bad_link).await;
    app.publish_raw("x", &vec![b' '; 70 * 1024]).await;

    let good = fresh("naleving.aanleververzoek");
    let id = good["id"].as_str().unwrap().to_owned();
    app.publish(&good).await;
    app.wait_deliveries(Some(&id), "the good event sent", |r| {
        r.len() == 1 && r[0].status == DeliveryStatus::Sent
    })
    .await;

    let q = app.quarantine().await;
    assert_eq!(q.len(), 4, "{q:#?}");
    let reasons: Vec<&str> = q.iter().map(|r| r.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("not valid JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("unknown event type")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("data.url") && r.contains("allowed_link_hosts")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("64 KiB")), "{reasons:?}");
    let unknown_row = q
        .iter()
        .find(|r| r.reason.contains("unknown event type"))
        .unwrap();
    assert_eq!(
        unknown_row.event_type.as_deref(),
        Some("contract.iets_nieuws")
    );
    assert!(!unknown_row.raw.is_empty(), "raw bytes kept for operators");
    // Nothing from bad input was mailed: only the good event's one mail.
    let mails = app.wait_mails(1).await;
    assert_eq!(mails.len(), 1);
    // A. Bakker, as registered.
    assert_eq!(mails[0].rcpt_to, vec!["Praktijk@Fysio-Noord.example"]);
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_event_id_causes_nothing_new() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    let event = fresh("uitvraag.beoordeeld");
    let id = event["id"].as_str().unwrap().to_owned();
    app.publish(&event).await;
    app.publish(&event).await;
    let marker = fresh("naleving.aanleververzoek");
    let marker_id = marker["id"].as_str().unwrap().to_owned();
    app.publish(&marker).await;
    // Messages are consumed in order: once the marker is done, the repeat was handled.
    app.wait_deliveries(Some(&marker_id), "marker sent", |r| {
        r.iter().all(|d| d.status == DeliveryStatus::Sent) && !r.is_empty()
    })
    .await;
    let rows = app
        .wait_deliveries(Some(&id), "first copy sent", |r| {
            r.iter().all(|d| d.status == DeliveryStatus::Sent)
        })
        .await;
    assert_eq!(rows.len(), 2, "U(uitvragen): J. de Vries and P. Jansen");
    assert_eq!(app.smtp.count(), 3);
    app.stop().await;
}

#[tokio::test]
async fn a_shared_address_gets_one_mail_and_the_actor_is_not_doubled() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    // Actor 10000000000003 (A. Bakker, Praktijk@... in upper case) also has onderhandelen,
    // and shares the address with S. Visser.
    let id = app.publish_fresh("onderhandeling.voorstel_gedaan").await;
    let rows = app
        .wait_deliveries(Some(&id), "all sent", |r| {
            !r.is_empty() && r.iter().all(|d| d.status == DeliveryStatus::Sent)
        })
        .await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let shared = rows
        .iter()
        .find(|d| d.recipient == "praktijk@fysio-noord.example")
        .expect("shared address");
    assert_eq!(shared.rule.label(), "U(onderhandelen)+ACTOR");
    let mails = app.wait_mails(2).await;
    assert_eq!(
        recipients(&mails),
        BTreeSet::from([
            "j.devries@fysio-noord.example".to_string(),
            // As the lower gebruikersnummer (A. Bakker) registered it.
            "Praktijk@Fysio-Noord.example".to_string()
        ])
    );
    app.stop().await;
}

#[tokio::test]
async fn directory_events_follow_the_versie_rule() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    // P. Jansen is at versie 3: a versie-2 update that would grant naleving is stale.
    let mut stale = fresh("gebruiker.bijgewerkt");
    stale["data"]["gebruikersnummer"] = "10000000000002".into();
    stale["data"]["email"] = "oud@fysio-noord.example".into();
    stale["data"]["versie"] = 2.into();
    app.publish(&stale).await;
    let mut org = fresh("organisatie.bijgewerkt");
    org["data"]["naam"] = "Fysio & Co <Noord>".into();
    app.publish(&org).await;
    let e = app.wait_event(stale["id"].as_str().unwrap()).await;
    assert_eq!(e.state, notifier::domain::event::EventState::Stale);
    let e = app.wait_event(org["id"].as_str().unwrap()).await;
    assert_eq!(e.state, notifier::domain::event::EventState::Applied);

    let id = app.publish_fresh("naleving.aanleververzoek").await;
    app.wait_deliveries(Some(&id), "sent", |r| {
        r.len() == 1 && r[0].status == DeliveryStatus::Sent
    })
    .await;
    let mails = app.wait_mails(1).await;
    let p = crate::support::parse_mail(&mails[0]);
    assert_eq!(
        mails[0].rcpt_to,
        vec!["Praktijk@Fysio-Noord.example"],
        "the stale address was not applied"
    );
    assert!(
        p.html.contains("Fysio &amp; Co &lt;Noord&gt;"),
        "practice name from organisatie.bijgewerkt, escaped"
    );
    assert!(p.text.contains("Fysio & Co <Noord>"));
    app.stop().await;
}

/// Also the proof for RUSTSEC-2026-0561 (lettre before 0.11.24 does not
/// dot-stuff a "." after a bare LF or CR) named in deny.toml: a lone "."
/// after a bare LF, a CRLF and a bare CR arrives as text, the SMTP data is
/// not cut short, and no bare LF or CR reaches the wire, because
/// `mail::message::crlf` normalises every line ending before lettre sees the body.
#[tokio::test]
async fn event_data_is_escaped_and_cannot_end_the_smtp_data() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    let mut event = fresh("uitvraag.aanvulling_gevraagd");
    event["data"]["toelichting"] =
        "Regel een <script>alert(1)</script>\n.\nRegel drie\r\n.\r\nRegel vier\r.\rSlot".into();
    event["data"]["vragenlijst_naam"] = "Lijst\r\nBcc: kwaad@evil.example".into();
    let id = event["id"].as_str().unwrap().to_owned();
    app.publish(&event).await;
    app.wait_deliveries(Some(&id), "sent", |r| {
        !r.is_empty() && r.iter().all(|d| d.status == DeliveryStatus::Sent)
    })
    .await;
    let mails = app.wait_mails(2).await;
    for m in &mails {
        assert_eq!(m.rcpt_to.len(), 1);
        let p = parse_mail(m);
        assert!(
            p.text.contains("Slot"),
            "the whole body arrived: the lone dots did not end the data"
        );
        assert!(
            p.text
                .replace("\r\n", "\n")
                .contains("alert(1)</script>\n.\nRegel drie\n.\nRegel vier\n.\nSlot"),
            "each lone dot arrived as a line of text: {:?}",
            p.text
        );
        let bare = m.wire.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n')
            || m.wire.windows(2).any(|w| w[0] != b'\r' && w[1] == b'\n')
            || m.wire.first() == Some(&b'\n');
        assert!(!bare, "a bare LF or CR went over the wire");
        assert!(!p.html.contains("<script>"));
        assert!(p.html.contains("&lt;script&gt;"));
        let headers = p.raw.split("\r\n\r\n").next().unwrap().to_lowercase();
        assert!(
            !headers.contains("\r\nbcc:"),
            "no header injected: {headers}"
        );
        assert!(p.subject.contains("Lijst"));
    }
    app.stop().await;
}
