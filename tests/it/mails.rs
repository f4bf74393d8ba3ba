//! What the practices read: each mail says why it came, counts its deadline
//! from the day it is sent, names the practice and the insurer, and keeps
//! hostile event text as text. Through the real pipeline and relay.

use crate::support::{Parsed, TestApp, fresh, parse_mail, sample_directory, spawn_app};
use notifier::domain::calendar::{amsterdam_date, dutch_date};
use notifier::domain::delivery::DeliveryStatus;
use notifier::templates::samples::hostile_text;

async fn app_with_practice(name: &str) -> TestApp {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    let mut org = fresh("organisatie.bijgewerkt");
    org["data"]["naam"] = name.into();
    app.publish_applied(&org).await;
    app
}

/// The mail each address got, by address.
async fn mails_of(app: &TestApp, event: &serde_json::Value) -> Vec<(String, Parsed)> {
    let rows = app.publish_and_settle(event).await;
    assert!(
        rows.iter().all(|d| d.status == DeliveryStatus::Sent),
        "{rows:?}"
    );
    let ids: Vec<&str> = rows.iter().map(|d| d.message_id.as_str()).collect();
    app.smtp
        .messages()
        .iter()
        .map(|m| (m.rcpt_to.join(","), parse_mail(m)))
        .filter(|(_, p)| ids.iter().any(|id| p.message_id == *id))
        .collect()
}

fn mail_to<'a>(mails: &'a [(String, Parsed)], address: &str) -> &'a Parsed {
    &mails
        .iter()
        .find(|(to, _)| to == address)
        .unwrap_or_else(|| panic!("no mail to {address}"))
        .1
}

#[tokio::test]
async fn each_mail_says_why_it_came_and_a_shared_address_names_no_one() {
    let app = app_with_practice("Fysiotherapie Noord").await;
    // U(onderhandelen): J. de Vries on his own address; A. Bakker (the
    // actor) and S. Visser share praktijk@.
    let mails = mails_of(&app, &fresh("onderhandeling.voorstel_gedaan")).await;
    assert_eq!(mails.len(), 2);

    let own = mail_to(&mails, "j.devries@fysio-noord.example");
    for part in [&own.text, &own.html] {
        assert!(
            part.contains("U ontvangt dit bericht omdat u voor AGB-code 04123456 (Fysiotherapie Noord) rechten hebt voor de module Onderhandelen."),
            "{part}"
        );
        assert!(!part.contains("gebruikers van het Zorginkoopportaal"));
        assert!(
            part.contains("Werkt u niet meer bij deze organisatie?"),
            "{part}"
        );
    }

    // Sent as A. Bakker (the lower gebruikersnummer) registered it.
    let shared = mail_to(&mails, "Praktijk@Fysio-Noord.example");
    for part in [&shared.text, &shared.html] {
        assert!(
            part.contains("U ontvangt dit bericht omdat u deze actie hebt uitgevoerd."),
            "{part}"
        );
        assert!(
            part.contains(
                "Dit e-mailadres is geregistreerd voor 2 gebruikers van het Zorginkoopportaal."
            ),
            "{part}"
        );
        for name in ["A. Bakker", "S. Visser", "J. de Vries"] {
            assert!(!part.contains(name), "a shared mail names {name}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn signers_and_contact_persons_are_told_so() {
    let app = app_with_practice("Fysiotherapie Noord").await;
    // The reminder goes to T: J. de Vries is the one tekenbevoegde.
    let mails = mails_of(&app, &fresh("contract.herinnering_acceptatie")).await;
    let signer = mail_to(&mails, "j.devries@fysio-noord.example");
    assert!(
        signer
            .text
            .contains("omdat u voor AGB-code 04123456 (Fysiotherapie Noord) tekenbevoegd bent."),
        "{}",
        signer.text
    );
    // A revocation's confirmation goes to the contact persons.
    let mut revoke = fresh("certificaat.ingetrokken");
    revoke["data"]["gebruikersnummer"] = "10000000000002".into();
    revoke["data"]["versie"] = 9.into();
    let mails = mails_of(&app, &revoke).await;
    let cp = mail_to(&mails, "j.devries@fysio-noord.example");
    assert!(
        cp.text
            .contains("omdat u contactpersoon bent voor AGB-code 04123456 (Fysiotherapie Noord)."),
        "{}",
        cp.text
    );
    app.stop().await;
}

#[tokio::test]
async fn subjects_name_the_practice_and_the_insurer_or_else_the_agb_code() {
    let app = app_with_practice("Fysiotherapie Noord").await;
    let mails = mails_of(&app, &fresh("contract.voorstel_aangeboden")).await;
    let (_, m) = &mails[0];
    assert!(m.subject.contains("Fysiotherapie Noord"), "{}", m.subject);
    assert!(m.subject.contains("Zorgverzekeraar Noord"), "{}", m.subject);
    assert!(
        m.subject.contains("Overeenkomst fysiotherapie 2027"),
        "{}",
        m.subject
    );

    // A practice without organisatie.bijgewerkt: the AGB code in its place.
    let mut other = fresh("uitvraag.vragenlijst_klaargezet");
    other["data"]["agb_code"] = "04765432".into();
    let mails = mails_of(&app, &other).await;
    let (_, m) = &mails[0];
    assert!(m.subject.contains("04765432"), "{}", m.subject);
    assert!(m.subject.contains("Zorgverzekeraar Noord"), "{}", m.subject);
    app.stop().await;
}

#[tokio::test]
async fn deadlines_count_from_the_day_the_mail_is_sent_not_from_the_event() {
    let app = app_with_practice("Fysiotherapie Noord").await;
    let today = amsterdam_date(chrono::Utc::now());
    let cases = [
        (5, "over 5 dagen"),
        (1, "morgen"),
        (0, "vandaag"),
        (-1, "de termijn is verlopen"),
    ];
    for (days, words) in cases {
        let date = (today + chrono::Duration::days(days))
            .format("%Y-%m-%d")
            .to_string();
        let mut e = fresh("uitvraag.herinnering_sluitingsdatum");
        e["data"]["sluitingsdatum"] = date.clone().into();
        // The portal's own count, as it was when it published: replaced.
        e["data"]["dagen_resterend"] = 99.into();
        let mails = mails_of(&app, &e).await;
        let expected = format!("{}, {words}", dutch_date(&date).unwrap());
        for (_, m) in &mails {
            assert!(
                m.text.contains(&expected),
                "{days} days: want {expected:?} in\n{}",
                m.text
            );
            assert!(
                m.html.contains(&expected),
                "{days} days: {expected:?} missing in the HTML"
            );
            assert!(
                !m.text.contains("99"),
                "the event's dagen_resterend leaked: {}",
                m.text
            );
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn hostile_text_stays_text_and_adds_no_header_or_recipient() {
    let hostile = hostile_text();
    let app = app_with_practice(&hostile).await;
    let mut e = fresh("contract.voorstel_aangeboden");
    e["data"]["contract_naam"] = hostile.clone().into();
    e["data"]["zorgverzekeraar"]["naam"] = hostile.clone().into();
    let rows = app.publish_and_settle(&e).await;
    assert!(
        rows.iter().all(|d| d.status == DeliveryStatus::Sent),
        "{rows:?}"
    );
    let received = app.smtp.messages();
    assert_eq!(received.len(), rows.len());
    for m in &received {
        assert_eq!(m.rcpt_to.len(), 1, "one recipient per mail");
        assert!(!m.rcpt_to[0].contains("slachtoffer"));
        let msg = mail_parser::MessageParser::default()
            .parse(&m.data)
            .unwrap();
        let mut names: Vec<String> = msg
            .headers()
            .iter()
            .map(|h| h.name().to_ascii_lowercase())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "auto-submitted",
                "content-type",
                "date",
                "from",
                "message-id",
                "mime-version",
                "subject",
                "to",
                "x-auto-response-suppress"
            ]
        );
        let p = parse_mail(m);
        // One line, nothing invisible, every name cut at 80 characters.
        assert!(
            !p.subject
                .contains(['\r', '\n', '\u{202E}', '\u{200B}', '\u{FEFF}', '\u{2066}']),
            "{:?}",
            p.subject
        );
        assert!(
            p.subject.chars().count() < 3 * 80 + 60,
            "{} characters",
            p.subject.chars().count()
        );
        assert!(p.subject.contains('…'));
        // The HTML shows markup as text; no value can reorder what follows it.
        assert!(!p.html.contains("<script"), "unescaped markup in the HTML");
        assert!(!p.html.contains("<b>vet</b>"));
        assert!(p.html.contains("&lt;script&gt;"));
        for part in [&p.html, &p.text] {
            assert!(!part.contains(['\u{202E}', '\u{200B}', '\u{FEFF}', '\u{2066}']));
        }
        // The whole 2,000-character word is there to read, not cut.
        assert!(p.text.contains(&"W".repeat(1800)));
    }
    app.stop().await;
}

#[tokio::test]
async fn a_shared_address_split_before_the_send_no_longer_says_it_is_shared() {
    let app = crate::support::spawn_app_holding_sending().await;
    // A. Bakker (03) and S. Visser (04) share praktijk@ for onderhandelen;
    // the mail was rendered for both when sending was held.
    let id = app.publish_held("onderhandeling.geaccordeerd", 2).await;
    let mut change = fresh("gebruiker.emailadres_gewijzigd");
    change["data"]["gebruikersnummer"] = "10000000000004".into();
    change["data"]["oud_email"] = "praktijk@fysio-noord.example".into();
    change["data"]["nieuw_email"] = "s.visser@fysio-noord.example".into();
    change["data"]["versie"] = 3.into();
    app.publish_applied(&change).await;
    app.release_sending().await;
    app.wait_deliveries(Some(&id), "all sent", |r| {
        r.len() == 3 && r.iter().all(|d| d.status == DeliveryStatus::Sent)
    })
    .await;
    let mails: Vec<(String, Parsed)> = app
        .smtp
        .messages()
        .iter()
        .map(|m| (m.rcpt_to.join(","), parse_mail(m)))
        .filter(|(_, p)| p.subject.contains("geaccordeerd"))
        .collect();
    for address in [
        "Praktijk@Fysio-Noord.example",
        "s.visser@fysio-noord.example",
    ] {
        let m = mail_to(&mails, address);
        assert!(
            !m.text.contains("gebruikers van het Zorginkoopportaal"),
            "{address} serves one user now: {}",
            m.text
        );
        assert!(
            m.text.contains("rechten hebt voor de module Onderhandelen"),
            "{}",
            m.text
        );
    }
    app.stop().await;
}
