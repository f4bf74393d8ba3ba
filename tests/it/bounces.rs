//! Bounces through the real path: mail sent over SMTP to the test server,
//! then a delivery status notification for it piped into
//! `notifier bounces ingest -` as an MTA's pipe transport would.

use crate::support::free_port;
use crate::support::{
    TestApp, TestConfig, cli_env, json, ok, sample_directory, spawn_app, stderr, stdout,
};
use notifier::config::Settings;
use notifier::domain::bounce::{BounceKey, tag};
use notifier::domain::delivery::DeliveryStatus;
use notifier::store::deliveries::DeliveryRow;
use std::io::Write;
use std::process::{Output, Stdio};

pub(crate) const BOUNCE_ADDRESS: &str = "bounces@zip.example";
const BOUNCE_KEY: &str = "test-bounce-key-0123456789abcdef-0123";
pub(crate) const SETTINGS: &str = "[smtp]\nbounce_address = \"bounces@zip.example\"\nbounce_key = \"test-bounce-key-0123456789abcdef-0123\"";
pub(crate) const JANSEN: &str = "p.jansen@fysio-noord.example";
const DE_VRIES: &str = "j.devries@fysio-noord.example";
pub(crate) const EVENT: &str = "uitvraag.vragenlijst_klaargezet";

fn key() -> BounceKey {
    BounceKey::parse(BOUNCE_KEY).unwrap()
}

fn env() -> [(&'static str, &'static str); 2] {
    [
        ("NOTIFIER_SMTP__BOUNCE_ADDRESS", BOUNCE_ADDRESS),
        ("NOTIFIER_SMTP__BOUNCE_KEY", BOUNCE_KEY),
    ]
}

/// `notifier bounces ingest ARGS` with `raw` on standard input. It runs
/// off the test's runtime: the service shares that runtime, and a claim it
/// began must be able to commit while the command waits for the database.
async fn ingest(settings: &Settings, raw: &str, args: &[&str]) -> Output {
    let url = settings.database.url.clone();
    let raw = raw.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
            .args(["bounces", "ingest"])
            .args(&args)
            .env("NOTIFIER_DATABASE__URL", url.expose_secret())
            .envs(env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run notifier");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(raw.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

/// [`cli_env`] with the bounce settings, off the test's runtime (see [`ingest`]).
async fn notifier(settings: &Settings, args: &[&str]) -> Output {
    let settings = settings.clone();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli_env(&settings, &args, &env())
    })
    .await
    .unwrap()
}

/// The envelope recipient for `delivery_id`: `bounces+TAG@zip.example`.
pub(crate) fn verp(delivery_id: &str) -> String {
    format!("bounces+{}@zip.example", tag(delivery_id, &key()))
}

/// The header block of the mail the relay received for `address`.
fn sent_headers(app: &TestApp, address: &str) -> String {
    let mail = app
        .smtp
        .messages()
        .into_iter()
        .find(|m| m.rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(address)))
        .expect("the mail was sent");
    let text = mail.data_str();
    text.split("\r\n\r\n").next().unwrap().to_owned()
}

/// A Postfix `bounce(8)` report: multipart/report with the notification,
/// message/delivery-status and text/rfc822-headers.
pub(crate) fn postfix_dsn(
    final_recipient: &str,
    action: &str,
    status: &str,
    returned: &str,
) -> String {
    format!(
        "Return-Path: <>\r\n\
         From: MAILER-DAEMON@mx.fysio-noord.example (Mail Delivery System)\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         To: {BOUNCE_ADDRESS}\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"3F2A1.1760000000/mx.fysio-noord.example\"\r\n\
         Message-Id: <20261012080000.3F2A1@mx.fysio-noord.example>\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --3F2A1.1760000000/mx.fysio-noord.example\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is the mail system at host mx.fysio-noord.example.\r\n\
         \r\n\
         I'm sorry to have to inform you that your message could not\r\n\
         be delivered to one or more recipients.\r\n\
         \r\n\
         <{final_recipient}>: host mx.fysio-noord.example said: {status} no such user\r\n\
         \r\n\
         --3F2A1.1760000000/mx.fysio-noord.example\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; mx.fysio-noord.example\r\n\
         X-Postfix-Queue-ID: 3F2A1\r\n\
         Arrival-Date: Mon, 12 Oct 2026 08:00:00 +0200 (CEST)\r\n\
         \r\n\
         Final-Recipient: rfc822; {final_recipient}\r\n\
         Original-Recipient: rfc822;{final_recipient}\r\n\
         Action: {action}\r\n\
         Status: {status}\r\n\
         Remote-MTA: dns; mx.fysio-noord.example\r\n\
         Diagnostic-Code: smtp; 550 {status} <{final_recipient}>: Recipient address\r\n\
         \x20   rejected: User unknown in local recipient table\r\n\
         \r\n\
         --3F2A1.1760000000/mx.fysio-noord.example\r\n\
         Content-Description: Undelivered Message Headers\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n\
         {returned}\r\n\
         \r\n\
         --3F2A1.1760000000/mx.fysio-noord.example--\r\n"
    )
}

/// An Exchange-style report: the whole original as message/rfc822, and
/// only a `To` naming the bounce address with the tag.
fn exchange_dsn(to: &str, final_recipient: &str, original: &str) -> String {
    format!(
        "From: postmaster@fysio-noord.example\r\n\
         To: <{to}>\r\n\
         Subject: Undeliverable: Nieuwe vragenlijst\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"_000_EXCH_\"\r\n\
         \r\n\
         --_000_EXCH_\r\n\
         Content-Type: text/plain; charset=\"us-ascii\"\r\n\
         \r\n\
         Delivery has failed to these recipients or groups:\r\n\
         \r\n\
         {final_recipient}\r\n\
         The email address you entered couldn't be found.\r\n\
         \r\n\
         --_000_EXCH_\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns;EXCH01.fysio-noord.example\r\n\
         \r\n\
         Final-recipient: RFC822; {final_recipient}\r\n\
         Action: failed\r\n\
         Status: 5.1.10\r\n\
         Diagnostic-code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup\r\n\
         \r\n\
         --_000_EXCH_\r\n\
         Content-Type: message/rfc822\r\n\
         \r\n\
         {original}\r\n\
         --_000_EXCH_--\r\n"
    )
}

/// A plain-text bounce (qmail style) that only quotes the original headers.
fn plain_text_bounce(final_recipient: &str, returned: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.fysio-noord.example\r\n\
         To: {BOUNCE_ADDRESS}\r\n\
         Subject: failure notice\r\n\
         \r\n\
         Hi. This is the qmail-send program at mx.fysio-noord.example.\r\n\
         I'm afraid I wasn't able to deliver your message to the following addresses.\r\n\
         This is a permanent error; I've given up. Sorry it didn't work out.\r\n\
         \r\n\
         <{final_recipient}>:\r\n\
         Sorry, no mailbox here by that name. (#5.1.1)\r\n\
         \r\n\
         --- Below this line is a copy of the message.\r\n\
         \r\n\
         {returned}\r\n"
    )
}

/// An out-of-office answer sent to the tagged address.
fn auto_reply(to: &str) -> String {
    format!(
        "From: {JANSEN}\r\n\
         To: {to}\r\n\
         Subject: Automatisch antwoord: Nieuwe vragenlijst\r\n\
         Auto-Submitted: auto-replied\r\n\
         X-Autoreply: yes\r\n\
         \r\n\
         Ik ben afwezig tot maandag 5.1.1 <{JANSEN}>.\r\n"
    )
}

/// The service with the sample directory, one module event sent; returns
/// the app, the event id and the delivery to P. Jansen.
async fn sent_to_jansen() -> (TestApp, String, DeliveryRow) {
    let app = spawn_app(SETTINGS).await;
    app.import_directory(&sample_directory()).await;
    let id = app.publish_fresh(EVENT).await;
    let rows = app
        .wait_deliveries(Some(&id), "both mails sent", |r| {
            r.len() == 2 && r.iter().all(|d| d.status == DeliveryStatus::Sent)
        })
        .await;
    let d = rows.into_iter().find(|d| d.recipient == JANSEN).unwrap();
    (app, id, d)
}

async fn delivery(app: &TestApp, id: &str) -> DeliveryRow {
    app.deliveries(None)
        .await
        .into_iter()
        .find(|d| d.id == id)
        .unwrap()
}

fn bounces(settings: &Settings) -> Vec<serde_json::Value> {
    let out = cli_env(settings, &["bounces", "list", "--format", "json"], &env());
    ok(&out);
    json(&out).as_array().unwrap().clone()
}

#[tokio::test]
async fn a_hard_bounce_ends_the_delivery_bounced_and_tells_the_contact_persons() {
    let (app, event, d) = sent_to_jansen().await;
    let dsn = postfix_dsn(JANSEN, "failed", "5.1.1", &sent_headers(&app, JANSEN));
    let out = ingest(&app.settings, &dsn, &["-", "--recipient", &verp(&d.id)]).await;
    ok(&out);
    assert!(stdout(&out).starts_with("hard"), "{}", stdout(&out));

    let bounced = delivery(&app, &d.id).await;
    assert_eq!(bounced.status, DeliveryStatus::Bounced);
    assert_eq!(bounced.attempts, 1, "a bounce is not an attempt");
    let log = app.attempts(&d.id).await;
    assert_eq!(
        log.iter()
            .map(|a| (a.n, a.outcome.as_str(), a.enhanced_code.as_deref()))
            .collect::<Vec<_>>(),
        [
            (Some(1), "sent", Some("2.0.0")),
            (None, "bounced", Some("5.1.1"))
        ]
    );
    assert!(log[1].detail.as_deref().unwrap().contains("User unknown"));

    // The contact person hears of it over SMTP, about P. Jansen.
    let notice = app.wait_sent(&event, "beheer.onbestelbaar").await;
    assert_eq!(notice.recipient, DE_VRIES);
    let mails = app.wait_mails(3).await;
    let to_cp = mails
        .iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r == DE_VRIES))
        .map(|m| m.data_str())
        .find(|t| t.contains("P. Jansen"))
        .expect("the notice names the user");
    assert!(!to_cp.contains(JANSEN), "never the address");

    // The same message again is recorded once and changes nothing.
    let again = ingest(&app.settings, &dsn, &["-", "--recipient", &verp(&d.id)]).await;
    ok(&again);
    assert!(stdout(&again).contains("read before"), "{}", stdout(&again));
    let list = bounces(&app.settings);
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0]["outcome"], "hard");
    assert_eq!(list[0]["delivery_id"], d.id.as_str());
    assert_eq!(app.attempts(&d.id).await.len(), 2);

    // Operators find it by status, and can send again once the address is fixed.
    let listed = notifier(
        &app.settings,
        &[
            "deliveries",
            "list",
            "--status",
            "bounced",
            "--format",
            "json",
        ],
    )
    .await;
    ok(&listed);
    assert_eq!(json(&listed).as_array().unwrap().len(), 1);
    let shown = notifier(&app.settings, &["events", "show", &event]).await;
    ok(&shown);
    assert!(
        stdout(&shown).contains("status bounced"),
        "{}",
        stdout(&shown)
    );
    assert!(stdout(&shown).contains("report at"), "{}", stdout(&shown));
    assert!(
        stdout(&shown).contains("(done with failures)"),
        "{}",
        stdout(&shown)
    );
    assert!(
        stdout(&shown).contains("bounce 1 at") && stdout(&shown).contains("hard 5.1.1"),
        "{}",
        stdout(&shown)
    );
    let stats = notifier(&app.settings, &["stats"]).await;
    ok(&stats);
    assert!(
        stdout(&stats).contains("bounces read in the window: hard 1, delayed 0"),
        "{}",
        stdout(&stats)
    );
    app.stop().await;
}

#[tokio::test]
async fn forged_tags_other_recipients_and_auto_replies_change_nothing() {
    let (app, event, d) = sent_to_jansen().await;
    let headers = sent_headers(&app, JANSEN);
    let good = tag(&d.id, &key());
    let forged = format!("bounces+{}.0123456789abcdef@zip.example", &good[..32]);
    let cases = [
        (
            postfix_dsn(JANSEN, "failed", "5.1.1", &headers),
            forged,
            "forged",
        ),
        (
            postfix_dsn(
                "someone.else@fysio-noord.example",
                "failed",
                "5.1.1",
                &headers,
            ),
            verp(&d.id),
            "unmatched",
        ),
        (auto_reply(&verp(&d.id)), verp(&d.id), "auto_reply"),
        ("not a mail at all".to_owned(), verp(&d.id), "unparseable"),
    ];
    for (raw, recipient, outcome) in &cases {
        let out = ingest(&app.settings, raw, &["-", "--recipient", recipient]).await;
        ok(&out);
        assert!(
            stdout(&out).starts_with(outcome),
            "{outcome}: {}",
            stdout(&out)
        );
    }
    let list = bounces(&app.settings);
    assert_eq!(
        list.iter()
            .map(|b| b["outcome"].as_str().unwrap())
            .collect::<Vec<_>>(),
        cases.iter().map(|c| c.2).collect::<Vec<_>>()
    );
    assert_eq!(delivery(&app, &d.id).await.status, DeliveryStatus::Sent);
    assert_eq!(app.attempts(&d.id).await.len(), 1);
    assert!(
        app.deliveries(Some(&event))
            .await
            .iter()
            .all(|d| d.kind != "beheer.onbestelbaar")
    );
    // A delay adds a log entry only.
    let delay = postfix_dsn(JANSEN, "delayed", "4.2.2", &headers);
    ok(&ingest(&app.settings, &delay, &["-", "--recipient", &verp(&d.id)]).await);
    assert_eq!(delivery(&app, &d.id).await.status, DeliveryStatus::Sent);
    let log = app.attempts(&d.id).await;
    assert_eq!(
        log.iter()
            .map(|a| (a.n, a.outcome.as_str()))
            .collect::<Vec<_>>(),
        [(Some(1), "sent"), (None, "delayed")]
    );
    app.stop().await;
}

#[tokio::test]
async fn exchange_and_plain_text_bounces_match_by_to_or_the_returned_tag() {
    let (app, _event, d) = sent_to_jansen().await;
    // What the other half of this feature adds at send time, here by hand:
    // the tag in the returned headers.
    let returned = format!(
        "{}\r\nX-Notifier-Tag: {}",
        sent_headers(&app, JANSEN),
        tag(&d.id, &key())
    );

    // Exchange: no envelope recipient given, only `To` with the tag.
    let original = format!("{returned}\r\n\r\nDe vragenlijst staat klaar.\r\n");
    let exchange = exchange_dsn(&verp(&d.id), &JANSEN.to_uppercase(), &original);
    ok(&ingest(&app.settings, &exchange, &["-"]).await);
    assert_eq!(delivery(&app, &d.id).await.status, DeliveryStatus::Bounced);

    // Plain text, to the untagged address: the quoted X-Notifier-Tag matches.
    let other = app
        .deliveries(None)
        .await
        .into_iter()
        .find(|r| r.recipient == DE_VRIES)
        .unwrap();
    let quoted = format!(
        "{}\r\nX-Notifier-Tag: {}",
        sent_headers(&app, DE_VRIES),
        tag(&other.id, &key())
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bounce.eml");
    std::fs::write(&file, plain_text_bounce(DE_VRIES, &quoted)).unwrap();
    ok(&notifier(
        &app.settings,
        &["bounces", "ingest", file.to_str().unwrap()],
    )
    .await);
    assert_eq!(
        delivery(&app, &other.id).await.status,
        DeliveryStatus::Bounced
    );
    let list = bounces(&app.settings);
    assert_eq!(
        list.iter()
            .map(|b| b["outcome"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["hard", "hard"]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_database_it_cannot_reach_gives_75_and_a_wrong_command_line_64() {
    let dir = tempfile::tempdir().unwrap();
    let raw = auto_reply(BOUNCE_ADDRESS);
    let missing = TestConfig::new(dir.path()).settings();
    let out = ingest(&missing, &raw, &["-"]).await;
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    let closed = TestConfig::new(dir.path())
        .database(&format!(
            "postgres://notifier@127.0.0.1:{}/notifier",
            free_port()
        ))
        .settings();
    let out = ingest(&closed, &raw, &["-"]).await;
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    // Without the bounce settings it cannot match anything: kept for later.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
        .args(["bounces", "ingest", "/dev/null"])
        .env(
            "NOTIFIER_DATABASE__URL",
            missing.database.url.expose_secret(),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    for args in [
        &["--no-such-flag", "-"][..],
        &[][..],
        &["-", "--maildir", "x"][..],
    ] {
        let out = ingest(&missing, &raw, args).await;
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
    }
    // Once the database is there, the message the MTA kept is recorded.
    let store = crate::support::migrated_store(missing.database.url.expose_secret()).await;
    store.close().await;
    ok(&ingest(&missing, &raw, &["-"]).await);
    assert_eq!(bounces(&missing)[0]["outcome"], "auto_reply");
}

#[tokio::test]
async fn a_maildir_is_read_once_and_each_message_moved_to_cur() {
    let (app, _event, d) = sent_to_jansen().await;
    let maildir = tempfile::tempdir().unwrap();
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir(maildir.path().join(sub)).unwrap();
    }
    let dsn = postfix_dsn(JANSEN, "failed", "5.1.1", &sent_headers(&app, JANSEN)).replace(
        &format!("To: {BOUNCE_ADDRESS}\r\n"),
        &format!("Delivered-To: {}\r\nTo: {BOUNCE_ADDRESS}\r\n", verp(&d.id)),
    );
    std::fs::write(maildir.path().join("new/1760000000.M1P1.mx"), &dsn).unwrap();
    std::fs::write(
        maildir.path().join("new/1760000001.M2P1.mx"),
        auto_reply(BOUNCE_ADDRESS),
    )
    .unwrap();
    let dir = maildir.path().to_str().unwrap();
    ok(&notifier(&app.settings, &["bounces", "ingest", "--maildir", dir]).await);
    assert_eq!(
        std::fs::read_dir(maildir.path().join("new"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(maildir.path().join("cur"))
            .unwrap()
            .count(),
        2
    );
    assert_eq!(delivery(&app, &d.id).await.status, DeliveryStatus::Bounced);
    // Read again: nothing new, nothing recorded twice.
    ok(&notifier(&app.settings, &["bounces", "ingest", "--maildir", dir]).await);
    assert_eq!(bounces(&app.settings).len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn run_polls_the_bounce_maildir() {
    let maildir = tempfile::tempdir().unwrap();
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir(maildir.path().join(sub)).unwrap();
    }
    let settings = format!(
        "{SETTINGS}\n[bounces]\nmaildir = {}\npoll_interval = \"100ms\"",
        toml::Value::from(maildir.path().to_str().unwrap())
    );
    let app = spawn_app(&settings).await;
    app.import_directory(&sample_directory()).await;
    let event = app.publish_fresh(EVENT).await;
    let rows = app
        .wait_deliveries(Some(&event), "both mails sent", |r| {
            r.len() == 2 && r.iter().all(|d| d.status == DeliveryStatus::Sent)
        })
        .await;
    let d = rows.into_iter().find(|d| d.recipient == JANSEN).unwrap();
    let dsn = postfix_dsn(JANSEN, "failed", "5.1.1", &sent_headers(&app, JANSEN)).replace(
        &format!("To: {BOUNCE_ADDRESS}\r\n"),
        &format!("X-Original-To: {}\r\nTo: {BOUNCE_ADDRESS}\r\n", verp(&d.id)),
    );
    // Written to tmp/ and renamed into new/, as a delivery agent does.
    let tmp = maildir.path().join("tmp/1760000000.M1P1.mx");
    std::fs::write(&tmp, &dsn).unwrap();
    std::fs::rename(&tmp, maildir.path().join("new/1760000000.M1P1.mx")).unwrap();

    app.wait_deliveries(Some(&event), "the bounce read and escalated", |r| {
        r.iter()
            .any(|x| x.id == d.id && x.status == DeliveryStatus::Bounced)
            && r.iter().any(|x| x.kind == "beheer.onbestelbaar")
    })
    .await;
    app.wait_sent(&event, "beheer.onbestelbaar").await;
    app.wait_metrics("the bounce counted", |m| {
        m.contains("notifier_bounces_total{outcome=\"hard\"} 1")
    })
    .await;
    assert_eq!(
        std::fs::read_dir(maildir.path().join("cur"))
            .unwrap()
            .count(),
        1
    );
    app.stop().await;
}
