//! The recipient rules end to end: notices, revocations, address changes,
//! escalation of undeliverable mail, several AGB codes, late directory data.

use crate::support::{
    Role, active_user, fresh, fresh_for, sample_directory, spawn_app, user, user_event,
};
use notifier::domain::delivery::DeliveryStatus;

const ALL: &[&str] = &["uitvragen", "contracteren", "onderhandelen", "naleving"];

fn kinds(rows: &[notifier::store::deliveries::DeliveryRow]) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = rows
        .iter()
        .map(|d| (d.kind.clone(), d.recipient.clone(), d.status.to_string()))
        .collect();
    v.sort();
    v
}

fn row(kind: &str, to: &str, status: &str) -> (String, String, String) {
    (kind.into(), to.into(), status.into())
}

#[tokio::test]
async fn an_address_change_confirms_to_the_new_and_warns_the_old_address() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    let mut e = fresh("gebruiker.emailadres_gewijzigd");
    // The directory holds p.jansen@...; the event's oud_email differs: the notice goes to what the directory held.
    e["data"]["gebruikersnummer"] = "10000000000002".into();
    e["data"]["oud_email"] = "iets.anders@fysio-noord.example".into();
    e["data"]["nieuw_email"] = "Piet.Jansen@Elders.example".into();
    e["data"]["versie"] = 4.into();
    let rows = app.publish_and_settle(&e).await;
    assert_eq!(
        kinds(&rows),
        vec![
            row(
                "gebruiker.emailadres_gewijzigd",
                "piet.jansen@elders.example",
                "sent"
            ),
            row(
                "gebruiker.emailadres_gewijzigd.oud_adres",
                "p.jansen@fysio-noord.example",
                "sent"
            ),
        ]
    );
    let mails = app.parsed_mails();
    let old = mails
        .iter()
        .find(|m| m.raw.contains("To: p.jansen@fysio-noord.example"))
        .unwrap();
    assert!(
        !old.text.contains("elders.example"),
        "the security notice never shows the new address"
    );
    assert!(old.text.to_lowercase().contains("contactpersoon"));
    // Module mail now goes to the new address.
    let rows = app.publish_and_settle(&fresh("uitvraag.beoordeeld")).await;
    assert!(
        rows.iter().any(
            |d| d.recipient == "piet.jansen@elders.example" && d.status == DeliveryStatus::Sent
        )
    );
    // A change for an unknown user sends nothing and is recorded.
    let mut unknown = fresh("gebruiker.emailadres_gewijzigd");
    unknown["data"]["gebruikersnummer"] = "19999999999999".into();
    app.publish(&unknown).await;
    let ev = app.wait_event(unknown["id"].as_str().unwrap()).await;
    assert_eq!(ev.state, notifier::domain::event::EventState::Ignored);
    assert!(
        app.deliveries(Some(unknown["id"].as_str().unwrap()))
            .await
            .is_empty()
    );
    app.stop().await;
}

#[tokio::test]
async fn revoking_the_last_signer_tells_the_contact_persons() {
    let app = spawn_app("").await;
    let agb = "05111111";
    app.import_users(&[
        active_user(
            "30000000000001",
            "cp@praktijk5.example",
            agb,
            &["uitvragen"],
            Role::Contactpersoon,
        ),
        active_user(
            "30000000000002",
            "signer@praktijk5.example",
            agb,
            &["contracteren"],
            Role::Tekenbevoegd,
        ),
        active_user(
            "30000000000003",
            "colleague@praktijk5.example",
            agb,
            &["contracteren"],
            Role::Member,
        ),
    ])
    .await;
    let mut revoke = fresh("certificaat.ingetrokken");
    revoke["data"]["gebruikersnummer"] = "30000000000002".into();
    revoke["data"]["versie"] = 2.into();
    let rows = app.publish_and_settle(&revoke).await;
    assert_eq!(
        kinds(&rows),
        vec![
            row(
                "beheer.laatste_tekenbevoegde_ingetrokken",
                "cp@praktijk5.example",
                "sent"
            ),
            row("certificaat.ingetrokken", "cp@praktijk5.example", "sent"),
        ]
    );
    let mails = app.parsed_mails();
    let warning = mails
        .iter()
        .find(|m| m.subject.to_lowercase().contains("tekenbevoeg"))
        .expect("the last-signer warning");
    assert!(warning.text.contains("Gebruiker 0002") && warning.text.contains("30000000000002"));
    assert!(warning.text.contains("geen contracten") && warning.text.contains("webformulier"));
    // A repeated revocation says nothing new.
    let mut again = fresh("certificaat.ingetrokken");
    again["data"]["gebruikersnummer"] = "30000000000002".into();
    again["data"]["versie"] = 3.into();
    let rows = app.publish_and_settle(&again).await;
    assert!(rows.is_empty(), "{rows:?}");
    // Contract events now find no signer.
    let rows = app
        .publish_and_settle(&fresh_for("contract.voorstel_aangeboden", agb))
        .await;
    assert_eq!(
        kinds(&rows),
        vec![
            row("beheer.geen_tekenbevoegde", "cp@praktijk5.example", "sent"),
            row(
                "contract.voorstel_aangeboden",
                "colleague@praktijk5.example",
                "sent"
            ),
        ]
    );
    let rows = app
        .publish_and_settle(&fresh_for("contract.herinnering_acceptatie", agb))
        .await;
    assert_eq!(
        kinds(&rows),
        vec![
            row(
                "beheer.geen_tekenbevoegde",
                "colleague@praktijk5.example",
                "sent"
            ),
            row("beheer.geen_tekenbevoegde", "cp@praktijk5.example", "sent"),
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn nobody_with_the_right_tells_the_contact_persons_and_nobody_at_all_is_unroutable() {
    let app = spawn_app("").await;
    app.import_users(&[
        active_user(
            "31000000000001",
            "cp@praktijk6.example",
            "06111111",
            &["naleving"],
            Role::Contactpersoon,
        ),
        user(
            "31000000000002",
            "gone@praktijk7.example",
            false,
            &[("07111111", ALL, true, true)],
            1,
        ),
    ])
    .await;
    let rows = app
        .publish_and_settle(&fresh_for("uitvraag.vragenlijst_klaargezet", "06111111"))
        .await;
    assert_eq!(
        kinds(&rows),
        vec![row("beheer.geen_ontvanger", "cp@praktijk6.example", "sent")]
    );
    let notice = app
        .parsed_mails()
        .into_iter()
        .find(|m| m.raw.contains("To: cp@praktijk6.example"))
        .unwrap();
    assert!(notice.text.contains("Uitvraagmodule"), "{}", notice.text);

    let e = fresh_for("onderhandeling.afgerond", "07111111");
    let id = e["id"].as_str().unwrap().to_owned();
    let rows = app.publish_and_settle(&e).await;
    assert!(rows.is_empty());
    let ev = app.wait_event(&id).await;
    assert_eq!(ev.state, notifier::domain::event::EventState::Unroutable);
    assert!(ev.detail.unwrap().contains("no active contact person"));
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("notifier_unroutable_events_total 1"),
        "{metrics}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
        .args([
            "events",
            "list",
            "--state",
            "unroutable",
            "--format",
            "json",
        ])
        .env(
            "NOTIFIER_DATABASE__URL",
            app.settings.database.url.expose_secret(),
        )
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["id"], id.as_str());
    app.stop().await;
}

#[tokio::test]
async fn an_undeliverable_module_mail_is_escalated_once_a_day_without_the_address() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    app.smtp
        .reply_for_rcpt("p.jansen", "550 5.1.1 No such user");
    let rows = app.publish_and_settle(&fresh("uitvraag.beoordeeld")).await;
    let failed = rows
        .iter()
        .find(|d| d.recipient == "p.jansen@fysio-noord.example")
        .unwrap();
    assert_eq!(failed.status, DeliveryStatus::Failed);
    let n = app.wait_sent(&failed.event_id, "beheer.onbestelbaar").await;
    assert_eq!(
        n.recipient, "j.devries@fysio-noord.example",
        "the contact person"
    );
    let mail = app
        .parsed_mails()
        .into_iter()
        .find(|m| m.message_id == n.message_id)
        .unwrap();
    assert!(mail.text.contains("P. Jansen") && mail.text.contains("10000000000002"));
    assert!(
        !mail.text.contains("p.jansen@"),
        "names the user, never the address"
    );
    // A second failure for the same user the same day: no second notice.
    let second = fresh("uitvraag.vragenlijst_klaargezet");
    let second_id = second["id"].as_str().unwrap().to_owned();
    let rows = app.publish_and_settle(&second).await;
    assert!(rows.iter().any(|d| d.status == DeliveryStatus::Failed));
    // A graceful stop finishes the dispatch round, escalation included: only
    // then is the absence of a notice a fact.
    let store = app.store.clone();
    let _kept = app.stop().await;
    let mut c = store.pool().acquire().await.unwrap();
    let all = notifier::store::deliveries::list(&mut c, &Default::default())
        .await
        .unwrap();
    let notices: Vec<_> = all
        .iter()
        .filter(|d| d.kind == "beheer.onbestelbaar")
        .collect();
    assert_eq!(notices.len(), 1, "one notice per user per day: {notices:?}");
    assert_ne!(notices[0].event_id, second_id);
}

#[tokio::test]
async fn a_user_in_two_agb_codes_gets_mail_only_where_it_has_the_right() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    // A. Bakker (Praktijk@...): uitvragen (and contact person) at 04765432; onderhandelen, naleving at 04123456.
    let rows = app
        .publish_and_settle(&fresh_for("uitvraag.beoordeeld", "04765432"))
        .await;
    assert_eq!(
        kinds(&rows),
        vec![row(
            "uitvraag.beoordeeld",
            "praktijk@fysio-noord.example",
            "sent"
        )]
    );
    let rows = app
        .publish_and_settle(&fresh_for("uitvraag.beoordeeld", "04123456"))
        .await;
    assert!(
        rows.iter()
            .all(|d| d.recipient != "praktijk@fysio-noord.example"),
        "{rows:?}"
    );
    let rows = app
        .publish_and_settle(&fresh_for("naleving.aanleververzoek", "04765432"))
        .await;
    assert_eq!(
        kinds(&rows),
        vec![row(
            "beheer.geen_ontvanger",
            "praktijk@fysio-noord.example",
            "sent"
        )]
    );
    app.stop().await;
}

#[tokio::test]
async fn an_event_that_arrives_before_the_users_record_still_reaches_the_user() {
    let app = spawn_app("").await;
    let agb = "08111111";
    let e = fresh_for("contract.administratief_vastgelegd", agb);
    let id = e["id"].as_str().unwrap().to_owned();
    app.publish(&e).await;
    assert_eq!(
        app.wait_event(&id).await.state,
        notifier::domain::event::EventState::Unroutable
    );
    // The user's record follows a moment later.
    let u = active_user(
        "32000000000001",
        "nieuw@praktijk8.example",
        agb,
        &["contracteren"],
        Role::Both,
    );
    app.publish(&user_event(u)).await;
    let rows = app
        .wait_deliveries(Some(&id), "late recipient sent", |r| {
            r.len() == 1 && r[0].status == DeliveryStatus::Sent
        })
        .await;
    assert_eq!(rows[0].recipient, "nieuw@praktijk8.example");
    assert_eq!(
        app.wait_event(&id).await.state,
        notifier::domain::event::EventState::Accepted
    );
    // A later update of the same user adds nothing: it already got the mail.
    let u = user(
        "32000000000001",
        "nieuw@praktijk8.example",
        true,
        &[(agb, ALL, true, true)],
        2,
    );
    let update = user_event(u);
    app.publish(&update).await;
    app.wait_event(update["id"].as_str().unwrap()).await;
    assert_eq!(app.deliveries(Some(&id)).await.len(), 1);
    assert_eq!(app.smtp.count(), 1);
    app.stop().await;
}

#[tokio::test]
async fn an_undeliverable_user_of_two_practices_is_reported_to_both() {
    let app = spawn_app("").await;
    let (a, b) = ("04888001", "04888002");
    app.import_users(&[
        user(
            "60000000000001",
            "weg@praktijk.example",
            true,
            &[
                (a, &["uitvragen"], false, false),
                (b, &["uitvragen"], false, false),
            ],
            1,
        ),
        active_user(
            "60000000000002",
            "cp.a@praktijk.example",
            a,
            &["contracteren"],
            Role::Contactpersoon,
        ),
        active_user(
            "60000000000003",
            "cp.b@praktijk.example",
            b,
            &["contracteren"],
            Role::Contactpersoon,
        ),
    ])
    .await;
    app.smtp.reply_for_rcpt("weg@", "550 5.1.1 No such user");
    for (agb, cp) in [(a, "cp.a@praktijk.example"), (b, "cp.b@praktijk.example")] {
        let e = fresh_for("uitvraag.vragenlijst_klaargezet", agb);
        app.publish_and_settle(&e).await;
        let n = app
            .wait_sent(e["id"].as_str().unwrap(), "beheer.onbestelbaar")
            .await;
        assert_eq!(n.recipient, cp, "each practice's own contact person");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_actor_of_another_practice_raises_no_notice_here() {
    let app = spawn_app("").await;
    let (here, elsewhere) = ("04888003", "04888004");
    app.import_users(&[
        active_user(
            "60000000000011",
            "lid@praktijk.example",
            here,
            ALL,
            Role::Tekenbevoegd,
        ),
        active_user(
            "60000000000012",
            "cp@praktijk.example",
            here,
            &["uitvragen"],
            Role::Contactpersoon,
        ),
        // The actor works for another practice only.
        active_user(
            "60000000000013",
            "actor@elders.example",
            elsewhere,
            ALL,
            Role::Both,
        ),
    ])
    .await;
    app.smtp.reply_for_rcpt("actor@", "550 5.1.1 No such user");
    let mut e = fresh_for("contract.geaccepteerd", here);
    e["data"]["actor_gebruikersnummer"] = "60000000000013".into();
    let rows = app.publish_and_settle(&e).await;
    assert!(
        rows.iter()
            .any(|d| d.recipient == "actor@elders.example" && d.status == DeliveryStatus::Failed),
        "{rows:#?}"
    );
    let store = app.store.clone();
    let id = e["id"].as_str().unwrap().to_owned();
    let _kept = app.stop().await;
    let mut c = store.pool().acquire().await.unwrap();
    let all = notifier::store::deliveries::list(
        &mut c,
        &notifier::store::deliveries::DeliveryFilter {
            event_id: Some(id),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        all.iter().all(|d| d.kind != "beheer.onbestelbaar"),
        "this practice's contact persons are not told about another practice's user: {all:#?}"
    );
}

/// An address an earlier version let into the directory, which no mail can
/// be built for, fails as undeliverable (not as a template error) and the
/// contact person is told.
#[tokio::test]
async fn a_stored_address_the_sender_cannot_use_is_undeliverable_and_escalated() {
    let app = spawn_app("").await;
    let agb = "04888005";
    app.import_users(&[
        active_user(
            "60000000000021",
            "later.fout@praktijk.example",
            agb,
            &["uitvragen"],
            Role::Member,
        ),
        active_user(
            "60000000000022",
            "cp@praktijk.example",
            agb,
            &["contracteren"],
            Role::Contactpersoon,
        ),
    ])
    .await;
    // As written by a version whose checks were looser.
    sqlx::query("UPDATE users SET email = 'a..b@praktijk.example' WHERE gebruikersnummer = '60000000000021'")
        .execute(app.store.pool())
        .await
        .unwrap();
    let e = fresh_for("uitvraag.vragenlijst_klaargezet", agb);
    let rows = app.publish_and_settle(&e).await;
    let failed = rows
        .iter()
        .find(|d| d.kind == "uitvraag.vragenlijst_klaargezet")
        .unwrap();
    assert_eq!(failed.status, DeliveryStatus::Failed);
    assert!(
        failed
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("not one mail can be sent to"),
        "{failed:#?}"
    );
    let n = app
        .wait_sent(e["id"].as_str().unwrap(), "beheer.onbestelbaar")
        .await;
    assert_eq!(n.recipient, "cp@praktijk.example");
    app.stop().await;
}

/// The local part keeps its case (RFC 5321 §2.4): what the portal
/// registered is what RCPT TO and To: carry, whether it came from `directory
/// import`, `gebruiker.emailadres_gewijzigd` or `gebruiker.bijgewerkt`;
/// deliveries compare, group and record the lower-cased form.
#[tokio::test]
async fn addresses_are_sent_as_registered_and_compared_in_lower_case() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    let sent_to = |app: &crate::support::TestApp, message_id: &str| {
        let m = app
            .smtp
            .messages()
            .into_iter()
            .find(|m| crate::support::parse_mail(m).message_id == message_id)
            .expect("the mail of the delivery");
        (m.rcpt_to[0].clone(), m.data_str())
    };

    // A change of case only is no change of address: one confirmation, to
    // the address as now registered, and no security notice.
    let mut change = fresh("gebruiker.emailadres_gewijzigd");
    change["data"]["gebruikersnummer"] = "10000000000001".into();
    change["data"]["oud_email"] = "j.devries@fysio-noord.example".into();
    change["data"]["nieuw_email"] = "J.deVries@Fysio-Noord.example".into();
    change["data"]["versie"] = 8.into();
    let rows = app.publish_and_settle(&change).await;
    assert_eq!(
        kinds(&rows),
        vec![row(
            "gebruiker.emailadres_gewijzigd",
            "j.devries@fysio-noord.example",
            "sent"
        )]
    );
    let (rcpt, data) = sent_to(&app, &rows[0].message_id);
    assert_eq!(rcpt, "J.deVries@Fysio-Noord.example");
    assert!(data.contains("\r\nTo: J.deVries@Fysio-Noord.example\r\n"));

    // A new user through gebruiker.bijgewerkt.
    let nieuw = active_user(
        "10000000000006",
        "K.Nieuw@Fysio-Noord.example",
        "04123456",
        &["uitvragen"],
        Role::Member,
    );
    let nieuw = user_event(nieuw);
    app.publish(&nieuw).await;
    app.wait_event(nieuw["id"].as_str().unwrap()).await;
    let rows = app.publish_and_settle(&fresh("uitvraag.beoordeeld")).await;
    for (compared, registered) in [
        (
            "j.devries@fysio-noord.example",
            "J.deVries@Fysio-Noord.example",
        ),
        ("k.nieuw@fysio-noord.example", "K.Nieuw@Fysio-Noord.example"),
        (
            "p.jansen@fysio-noord.example",
            "p.jansen@fysio-noord.example",
        ),
    ] {
        let d = rows
            .iter()
            .find(|d| d.recipient == compared)
            .unwrap_or_else(|| panic!("no delivery to {compared}: {rows:#?}"));
        assert_eq!(d.status, DeliveryStatus::Sent);
        assert_eq!(sent_to(&app, &d.message_id).0, registered);
    }

    // A. Bakker (10000000000003) registered Praktijk@Fysio-Noord.example,
    // S. Visser (10000000000004) praktijk@fysio-noord.example: one mailbox,
    // one mail, written as the lower gebruikersnummer registered it.
    let before = app.smtp.count();
    let rows = app
        .publish_and_settle(&fresh("onderhandeling.voorstel_gedaan"))
        .await;
    let shared = rows
        .iter()
        .find(|d| d.recipient == "praktijk@fysio-noord.example")
        .unwrap();
    assert_eq!(shared.status, DeliveryStatus::Sent);
    assert_eq!(
        sent_to(&app, &shared.message_id).0,
        "Praktijk@Fysio-Noord.example"
    );
    let to_praktijk = app.smtp.messages()[before..]
        .iter()
        .filter(|m| m.rcpt_to[0].eq_ignore_ascii_case("praktijk@fysio-noord.example"))
        .count();
    assert_eq!(to_praktijk, 1, "one mail per address, whatever its case");

    // The security notice to an old address goes to it as it was registered.
    let mut moved = fresh("gebruiker.emailadres_gewijzigd");
    moved["data"]["gebruikersnummer"] = "10000000000003".into();
    moved["data"]["oud_email"] = "praktijk@fysio-noord.example".into();
    moved["data"]["nieuw_email"] = "A.Bakker@Elders.example".into();
    moved["data"]["versie"] = 2.into();
    let rows = app.publish_and_settle(&moved).await;
    let old = rows
        .iter()
        .find(|d| d.kind == "gebruiker.emailadres_gewijzigd.oud_adres")
        .unwrap();
    assert_eq!(old.recipient, "praktijk@fysio-noord.example");
    assert_eq!(
        sent_to(&app, &old.message_id).0,
        "Praktijk@Fysio-Noord.example"
    );
    let new = rows
        .iter()
        .find(|d| d.kind == "gebruiker.emailadres_gewijzigd")
        .unwrap();
    assert_eq!(sent_to(&app, &new.message_id).0, "A.Bakker@Elders.example");
    app.stop().await;
}
