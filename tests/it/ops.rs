//! The recovery commands (`replay`, `quarantine`, `check`, `stats`) run as
//! the real binary against a SQLite file and the test SMTP server over TCP;
//! RabbitMQ where the consumer matters.
//!
//! Every test that runs the CLI while the in-process SMTP server must answer
//! uses the multi-threaded runtime: the blocking `Command::output()` holds
//! one worker, the server runs on the other.

use crate::support::smtp_server::{ReceivedMail, TestSmtpServer};
use crate::support::{
    Installation, TestConfig, WAIT, cli, cli_env, events_file, fresh, json, ok, parse_mail,
    replay_executed, sample_directory, spawn_app, stderr, stdout,
};
use notifier::config::Settings;
use notifier::domain::delivery::DeliveryStatus;
use notifier::store::Store;
use notifier::store::deliveries::{self as dl, DeliveryRow};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const ALLOW_OTHER: (&str, &str) = (
    "NOTIFIER_MAIL__ALLOWED_LINK_HOSTS",
    r#"["zip.example.nl","other.example"]"#,
);

/// `notifier replay deliveries --status failed` and `more`.
fn replay_failed(s: &Settings, more: &[&str]) -> std::process::Output {
    let mut args = vec!["replay", "deliveries", "--status", "failed"];
    args.extend_from_slice(more);
    cli(s, &args)
}

fn id_of(e: &Value) -> String {
    e["id"].as_str().unwrap().to_owned()
}

async fn store(s: &Settings) -> Store {
    Store::connect(s.database.url.expose_secret(), 2)
        .await
        .unwrap()
}

async fn deliveries(s: &Settings, event_id: Option<&str>) -> Vec<DeliveryRow> {
    let st = store(s).await;
    let rows = crate::support::deliveries(&st, event_id).await;
    st.close().await;
    rows
}

async fn exec(s: &Settings, sql: &str) {
    let st = store(s).await;
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(st.pool())
        .await
        .unwrap();
    st.close().await;
}

async fn scalar(s: &Settings, sql: &str) -> i64 {
    let st = store(s).await;
    let v: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(st.pool())
        .await
        .unwrap();
    st.close().await;
    v
}

/// Every column an operator could see change, for "nothing changed" checks.
async fn snapshot(s: &Settings) -> Vec<Value> {
    let st = store(s).await;
    let rows: Vec<(String, String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT id, status, due_at, retry_step, deadline, attempts FROM deliveries ORDER BY id",
    )
    .fetch_all(st.pool())
    .await
    .unwrap();
    st.close().await;
    rows.into_iter()
        .map(|r| serde_json::json!([r.0, r.1, r.2, r.3, r.4, r.5]))
        .collect()
}

fn message_ids(mails: &[ReceivedMail]) -> Vec<String> {
    mails
        .iter()
        .map(|m| parse_mail(m).message_id.trim_matches(['<', '>']).to_owned())
        .collect()
}

/// Asserts no mail went out twice, and that every sent delivery's mail
/// arrived exactly once (the Message-ID is the delivery's).
async fn assert_each_sent_delivery_mailed_once(s: &Settings, smtp: &TestSmtpServer) {
    let ids = message_ids(&smtp.messages());
    let mut seen = BTreeMap::new();
    for id in &ids {
        *seen.entry(id.clone()).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "mailed more than once: {twice:?}");
    let sent: BTreeSet<String> = deliveries(s, None)
        .await
        .into_iter()
        .filter(|d| d.status == DeliveryStatus::Sent)
        .map(|d| d.message_id)
        .collect();
    let got: BTreeSet<String> = seen.into_keys().collect();
    assert_eq!(
        got, sent,
        "the mails received are exactly the sent deliveries"
    );
}

fn per_recipient(mails: &[ReceivedMail]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for mail in mails {
        for r in &mail.rcpt_to {
            *m.entry(r.to_lowercase()).or_insert(0) += 1;
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_a_relay_outage_delivers_each_failed_mail_once() {
    // The relay rejects every address of the practice: all mail fails.
    let e1 = fresh("contract.voorstel_aangeboden");
    let e2 = fresh("uitvraag.beoordeeld");
    let Installation {
        dir: _dir,
        smtp,
        settings: s,
    } = Installation::with_failed_mail("fysio-noord.example", &[&e1, &e2]).await;
    assert_eq!(smtp.count(), 0);
    let failed: Vec<DeliveryRow> = deliveries(&s, None)
        .await
        .into_iter()
        .filter(|d| d.status == DeliveryStatus::Failed)
        .collect();
    // 4 module mails, and the undeliverable notice to the contact person
    // (at most one a day about the same user): all failed at the same relay.
    let n = failed.len();
    assert_eq!(
        failed
            .iter()
            .filter(|d| !d.kind.starts_with("beheer."))
            .count(),
        4,
        "{failed:#?}"
    );
    assert!(
        failed.iter().any(|d| d.kind == "beheer.onbestelbaar"),
        "{failed:#?}"
    );
    assert!(failed.iter().all(|d| d.attempts == 1));

    let out = replay_failed(&s, &["--format", "json"]);
    ok(&out);
    let v = json(&out);
    assert_eq!(v["executed"], false);
    assert_eq!(v["matched"], n);
    assert_eq!(v["sample"].as_array().unwrap().len(), n.min(10));
    assert!(v["sample"][0]["id"].is_string());
    assert!(
        v["sample"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("550")
    );

    // The relay is fixed.
    smtp.reset_script();
    let before = chrono::Utc::now().timestamp_millis();
    let out = replay_executed(
        &s,
        &["deliveries", "--status", "failed"],
        "relay rejected everything",
    );
    ok(&out);
    let v = json(&out);
    assert_eq!(v["executed"], true);
    assert_eq!(v["replayed"], n);
    assert!(v["replay_id"].is_string());
    let st = store(&s).await;
    for d in &failed {
        let (status, due, step, deadline, attempts, last_error): (
            String,
            i64,
            i64,
            i64,
            i64,
            Option<String>,
        ) = sqlx::query_as(
            "SELECT status, due_at, retry_step, deadline, attempts, last_error FROM deliveries WHERE id = $1",
        )
        .bind(&d.id)
        .fetch_one(st.pool())
        .await
        .unwrap();
        assert_eq!(status, "pending");
        assert!(due >= before && due <= chrono::Utc::now().timestamp_millis());
        assert_eq!(step, 0);
        assert!(deadline > before + 71 * 3_600_000, "a new deadline");
        assert_eq!(attempts, 1, "attempt history kept");
        assert!(last_error.unwrap().contains("550"), "last error kept");
    }
    st.close().await;

    let out = cli(&s, &["dispatch", "--until-idle"]);
    ok(&out);
    assert!(
        stdout(&out).contains(&format!("sent {n}")),
        "{}",
        stdout(&out)
    );
    let mails = smtp.messages();
    assert_eq!(mails.len(), n);
    let got = message_ids(&mails);
    for d in &failed {
        assert_eq!(
            got.iter().filter(|m| **m == d.message_id).count(),
            1,
            "{} mailed once",
            d.id
        );
    }
    // Each recipient of each module mail got exactly that one mail.
    for e in [&e1, &e2] {
        let module: Vec<_> = deliveries(&s, Some(&id_of(e)))
            .await
            .into_iter()
            .filter(|d| d.kind == e["type"].as_str().unwrap())
            .collect();
        assert_eq!(module.len(), 2);
        for d in module {
            assert_eq!(d.status, DeliveryStatus::Sent);
            let n = mails
                .iter()
                .filter(|m| {
                    m.rcpt_to == vec![d.recipient.clone()]
                        && parse_mail(m).message_id.contains(&d.id)
                })
                .count();
            assert_eq!(n, 1, "{} got {} once", d.recipient, d.kind);
        }
    }
    // Attempt numbers continue after the replay.
    let st = store(&s).await;
    let mut c = st.pool().acquire().await.unwrap();
    let attempts = dl::attempts(&mut c, &failed[0].id).await.unwrap();
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.n, a.outcome.as_str()))
            .collect::<Vec<_>>(),
        vec![(Some(1), "permanent"), (Some(2), "sent")]
    );
    // Each send read the directory first, and says when.
    for a in &attempts {
        let checked = a.checked_at.expect("a user's mail re-checks the directory");
        assert!(checked <= a.started_at, "{a:?}");
    }
    drop(c);
    st.close().await;

    // Replaying again finds nothing failed, and sends nothing.
    let out = replay_executed(&s, &["deliveries", "--status", "failed"], "again");
    ok(&out);
    assert_eq!(json(&out)["replayed"], 0);
    ok(&cli(&s, &["dispatch", "--until-idle"]));
    assert_eq!(smtp.count(), n);
    assert_each_sent_delivery_mailed_once(&s, &smtp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_does_not_resend_what_was_sent() {
    let Installation {
        dir,
        smtp,
        settings: s,
    } = Installation::new().await;
    let e1 = fresh("contract.voorstel_aangeboden");
    let e2 = fresh("uitvraag.beoordeeld");
    let f = events_file(dir.path(), "events.jsonl", &[&e1, &e2]);
    ok(&cli(&s, &["ingest", &f]));
    ok(&cli(&s, &["dispatch", "--until-idle"]));
    assert_eq!(smtp.count(), 4);
    let before = snapshot(&s).await;

    // Sent mail is only replayed on explicit request.
    for args in [
        &["replay", "deliveries", "--status", "sent"][..],
        &[
            "replay",
            "deliveries",
            "--status",
            "sent",
            "--execute",
            "--operator",
            "x",
            "--reason",
            "y",
        ][..],
    ] {
        let out = cli(&s, args);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("--include-sent"), "{}", stderr(&out));
    }
    // `sending` is not a status a replay starts from.
    let out = cli(&s, &["replay", "deliveries", "--status", "sending"]);
    assert_eq!(out.status.code(), Some(2));

    // Resolving again against the same directory adds nothing.
    let out = replay_executed(&s, &["events"], "check nothing is missing");
    ok(&out);
    let v = json(&out);
    assert_eq!(v["counts"]["events"], 2);
    assert_eq!(v["counts"]["added"], 0);
    assert_eq!(v["counts"]["skipped_existing"], 4);
    // Nothing failed or was cancelled either.
    for status in ["failed", "cancelled", "pending"] {
        let out = replay_executed(&s, &["deliveries", "--status", status], "nothing to do");
        ok(&out);
        assert_eq!(json(&out)["matched"], 0, "{status}");
    }
    assert_eq!(snapshot(&s).await, before, "nothing changed");
    let out = cli(&s, &["dispatch", "--until-idle"]);
    ok(&out);
    assert!(stdout(&out).contains("sent 0"), "{}", stdout(&out));
    assert_eq!(smtp.count(), 4);
    assert_each_sent_delivery_mailed_once(&s, &smtp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_events_mails_only_the_addresses_a_directory_fix_added() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = TestSmtpServer::start().await;
    let s = TestConfig::new(dir.path()).smtp(&smtp.url()).settings();
    ok(&cli(&s, &["migrate"]));
    // The directory error: P. Jansen lost the right `contracteren`.
    let broken = sample_directory().replace(
        r#""rechten": ["uitvragen", "contracteren"], "tekenbevoegd": false"#,
        r#""rechten": ["uitvragen"], "tekenbevoegd": false"#,
    );
    assert_ne!(broken, sample_directory());
    let f = dir.path().join("dir.jsonl");
    std::fs::write(&f, &broken).unwrap();
    ok(&cli(&s, &["directory", "import", f.to_str().unwrap()]));

    // Ten days old: its own deadline (event time + retry.deadline) has passed.
    let mut e = fresh("contract.voorstel_aangeboden");
    let event_time = chrono::Utc::now() - chrono::Duration::days(10);
    e["time"] = event_time.to_rfc3339().into();
    let id = id_of(&e);
    let ef = events_file(dir.path(), "e.jsonl", &[&e]);
    ok(&cli(&s, &["ingest", &ef]));
    ok(&cli(&s, &["dispatch", "--until-idle"]));
    assert_eq!(per_recipient(&smtp.messages()).len(), 1, "only J. de Vries");
    let span = s.retry.deadline.0.as_millis() as i64;
    let deadline_of = |address: &'static str| {
        let sql = format!("SELECT deadline FROM deliveries WHERE address = '{address}'");
        let s = s.clone();
        async move { scalar(&s, &sql).await }
    };
    assert_eq!(
        deadline_of("j.devries@fysio-noord.example").await,
        event_time.timestamp_millis() + span,
        "ingest: event time + retry.deadline"
    );

    // The fix: the right is back, with a higher versie.
    let fixed = sample_directory()
        .lines()
        .find(|l| l.contains("10000000000002"))
        .unwrap()
        .replace(r#""versie": 3"#, r#""versie": 4"#);
    std::fs::write(&f, fixed).unwrap();
    ok(&cli(&s, &["directory", "import", f.to_str().unwrap()]));

    let before = snapshot(&s).await;
    let out = cli(
        &s,
        &["replay", "events", "--event", &id, "--format", "json"],
    );
    ok(&out);
    let v = json(&out);
    assert_eq!(v["executed"], false);
    assert_eq!(v["counts"]["added"], 1);
    assert_eq!(v["sample"][0]["recipient"], "p.jansen@fysio-noord.example");
    assert_eq!(v["sample"][0]["rule"], "U(contracteren)");
    assert_eq!(snapshot(&s).await, before, "a dry run adds nothing");
    let out = cli(&s, &["replay", "events", "--event", &id]);
    ok(&out);
    assert!(stdout(&out).contains("dry run"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("p.jansen@fysio-noord.example"),
        "{}",
        stdout(&out)
    );

    let replayed_at = chrono::Utc::now().timestamp_millis();
    let out = replay_executed(&s, &["events", "--event", &id], "directory fixed");
    ok(&out);
    assert_eq!(json(&out)["counts"]["added"], 1);
    assert!(
        deadline_of("p.jansen@fysio-noord.example").await >= replayed_at + span,
        "replay: now + retry.deadline"
    );
    ok(&cli(&s, &["dispatch", "--until-idle"]));
    let got = per_recipient(&smtp.messages());
    assert_eq!(got.get("p.jansen@fysio-noord.example"), Some(&1));
    assert_eq!(got.get("j.devries@fysio-noord.example"), Some(&1));

    // Once more: everyone has the mail now.
    let out = replay_executed(&s, &["events"], "again");
    ok(&out);
    assert_eq!(json(&out)["counts"]["added"], 0);
    ok(&cli(&s, &["dispatch", "--until-idle"]));
    assert_eq!(smtp.count(), 2);
    let out = cli(&s, &["events", "show", &id, "--format", "json"]);
    assert!(
        json(&out)["detail"]
            .as_str()
            .unwrap()
            .contains("replay events"),
        "{}",
        stdout(&out)
    );

    let out = cli(&s, &["replay", "events", "--resolve", "original"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not versioned"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_change_nothing_and_executed_replays_are_audited() {
    let e = fresh("contract.voorstel_aangeboden");
    let Installation {
        dir: _dir,
        smtp: _smtp,
        settings: s,
    } = Installation::with_failed_mail("p.jansen", &[&e]).await;
    let before = snapshot(&s).await;

    let out = replay_failed(&s, &[]);
    ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains("dry run: 1 failed deliveries match"),
        "{text}"
    );
    assert!(text.contains("contract.voorstel_aangeboden"), "{text}");
    assert!(text.contains("p.jansen@fysio-noord.example"), "{text}");
    assert!(text.contains("--execute --operator"), "{text}");
    ok(&cli(&s, &["replay", "events"]));
    for missing in [
        &["--execute"][..],
        &["--execute", "--operator", "alice"][..],
        &["--execute", "--reason", "INC-42"][..],
        &["--execute", "--operator", " ", "--reason", "INC-42"][..],
    ] {
        let out = replay_failed(&s, missing);
        assert_eq!(out.status.code(), Some(2), "{missing:?}");
        assert!(stderr(&out).contains("--operator"), "{}", stderr(&out));
    }
    let out = replay_failed(&s, &["--since", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("RFC 3339"), "{}", stderr(&out));
    assert_eq!(
        snapshot(&s).await,
        before,
        "dry runs and refusals change nothing"
    );
    let out = cli(&s, &["replay", "history", "--format", "json"]);
    ok(&out);
    assert_eq!(json(&out), serde_json::json!([]));

    let out = replay_failed(
        &s,
        &[
            "--since",
            "1h",
            "--agb",
            "04123456",
            "--type",
            "contract.voorstel_aangeboden",
            "--execute",
            "--operator",
            "alice",
            "--reason",
            "INC-42 mailbox restored",
        ],
    );
    ok(&out);
    assert!(stdout(&out).contains("replayed 1 of 1"), "{}", stdout(&out));
    let out = cli(&s, &["replay", "history", "--format", "json"]);
    ok(&out);
    let v = json(&out);
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert!(r["id"].is_string());
    assert!(r["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(r["operator"], "alice");
    assert_eq!(r["reason"], "INC-42 mailbox restored");
    assert_eq!(r["command"], "replay deliveries");
    assert_eq!(r["filters"]["status"], "failed");
    assert_eq!(r["filters"]["agb"], "04123456");
    assert_eq!(r["filters"]["type"], "contract.voorstel_aangeboden");
    assert!(r["filters"]["since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(r["filters"]["include_sent"], false);
    assert_eq!(r["counts"]["matched"], 1);
    assert_eq!(r["counts"]["replayed"], 1);
    assert_eq!(r["counts"]["by_type_and_status"][0]["status"], "failed");
    let out = cli(&s, &["replay", "history"]);
    ok(&out);
    assert!(stdout(&out).contains("alice"), "{}", stdout(&out));
    assert!(stdout(&out).contains("1 replays"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_list_show_and_redrive_after_the_cause_is_fixed() {
    let Installation {
        dir,
        smtp,
        settings: s,
    } = Installation::new().await;
    let mut e = fresh("uitvraag.beoordeeld");
    e["data"]["url"] = "https://other.example/uitvraag/VL-1".into();
    let f = dir.path().join("in.jsonl");
    std::fs::write(&f, format!("{e}\n{{ this is not json\n")).unwrap();
    let out = cli(&s, &["ingest", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));

    let out = cli(&s, &["quarantine", "list", "--format", "json"]);
    ok(&out);
    let v = json(&out);
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let link = rows
        .iter()
        .find(|r| r["event_id"] == e["id"])
        .expect("the link row");
    for key in [
        "id",
        "received_at",
        "source",
        "routing_key",
        "event_id",
        "event_type",
        "reason",
        "size",
        "state",
        "redrives",
    ] {
        assert!(link.get(key).is_some(), "{key} missing in {link}");
    }
    assert!(link["id"].is_string());
    assert!(link["received_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(link["source"], "file");
    assert_eq!(link["event_type"], "uitvraag.beoordeeld");
    assert_eq!(link["state"], "open");
    assert!(
        link["reason"]
            .as_str()
            .unwrap()
            .contains("allowed_link_hosts")
    );
    let link_id = link["id"].as_str().unwrap().to_owned();
    let garbage_id = rows.iter().find(|r| r["event_id"].is_null()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = cli(&s, &["quarantine", "list"]);
    ok(&out);
    assert!(stdout(&out).contains("2 open in total"), "{}", stdout(&out));

    let out = cli(&s, &["quarantine", "show", &link_id]);
    ok(&out);
    assert!(
        stdout(&out).contains("https://other.example/uitvraag/VL-1"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("allowed_link_hosts"),
        "{}",
        stdout(&out)
    );
    let out = cli(&s, &["quarantine", "show", &garbage_id, "--format", "json"]);
    ok(&out);
    assert_eq!(json(&out)["body"], "{ this is not json");
    let out = cli(&s, &["quarantine", "show", "999999"]);
    assert_eq!(out.status.code(), Some(1));

    // Not fixed yet: still invalid, the same row, no new one.
    let out = cli(&s, &["quarantine", "redrive", &link_id]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("still invalid"), "{}", stdout(&out));
    assert_eq!(scalar(&s, "SELECT COUNT(*) FROM quarantine").await, 2);
    let out = cli(&s, &["quarantine", "show", &link_id, "--format", "json"]);
    let v = json(&out);
    assert_eq!(v["state"], "open");
    assert_eq!(v["redrives"], 1);
    assert!(v["last_redrive_at"].as_str().unwrap().ends_with('Z'));

    // A still-invalid redrive keeps the row with the *new* reason.
    exec(
        &s,
        &format!("UPDATE quarantine SET reason = 'old reason' WHERE id = {link_id}"),
    )
    .await;
    let out = cli(&s, &["quarantine", "redrive", &link_id]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&cli(
        &s,
        &["quarantine", "show", &link_id, "--format", "json"],
    ));
    assert!(
        v["reason"].as_str().unwrap().contains("allowed_link_hosts"),
        "{v}"
    );
    assert_eq!(v["redrives"], 2);

    // The fix: other.example is an allowed link host now.
    let out = cli_env(
        &s,
        &["quarantine", "redrive", &link_id, "--operator", "bob"],
        &[ALLOW_OTHER],
    );
    ok(&out);
    assert!(
        stdout(&out).contains(&format!(
            "quarantine {link_id}: redriven: accepted event {}",
            id_of(&e)
        )),
        "{}",
        stdout(&out)
    );
    assert_eq!(scalar(&s, "SELECT COUNT(*) FROM quarantine").await, 2);
    let v = json(&cli(
        &s,
        &["quarantine", "show", &link_id, "--format", "json"],
    ));
    assert_eq!(v["state"], "redriven");
    let out = cli(&s, &["quarantine", "list", "--format", "json"]);
    assert_eq!(
        json(&out).as_array().unwrap().len(),
        1,
        "only the garbage is open"
    );
    let out = cli(&s, &["quarantine", "list", "--all", "--format", "json"]);
    assert_eq!(json(&out).as_array().unwrap().len(), 2);

    // Again: nothing to do. --all: the garbage is still garbage.
    let out = cli_env(&s, &["quarantine", "redrive", &link_id], &[ALLOW_OTHER]);
    ok(&out);
    assert!(
        stdout(&out).contains("already redriven"),
        "{}",
        stdout(&out)
    );
    let out = cli_env(&s, &["quarantine", "redrive", "--all"], &[ALLOW_OTHER]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(&format!(
            "quarantine {garbage_id}: still invalid: body is not valid JSON"
        )),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("redriven 0, still invalid 1"),
        "{}",
        stdout(&out)
    );
    assert_eq!(scalar(&s, "SELECT COUNT(*) FROM quarantine").await, 2);
    let out = cli(&s, &["quarantine", "redrive"]);
    assert_eq!(out.status.code(), Some(2), "an id or --all is required");

    // The redriven event is mailed like any other (dispatch needs the fix too).
    let out = cli_env(&s, &["dispatch", "--until-idle"], &[ALLOW_OTHER]);
    ok(&out);
    assert!(stdout(&out).contains("sent 2"), "{}", stdout(&out));
    assert_each_sent_delivery_mailed_once(&s, &smtp).await;
    let v = json(&cli(&s, &["replay", "history", "--format", "json"]));
    let commands: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["command"].as_str().unwrap())
        .collect();
    assert!(
        commands.iter().all(|c| *c == "quarantine redrive"),
        "{commands:?}"
    );
    assert!(v.as_array().unwrap().iter().any(|r| r["operator"] == "bob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_message_shows_up_in_quarantine_and_redrives() {
    let app = spawn_app("").await;
    app.import_directory(&sample_directory()).await;
    // RabbitMQ dead-letters after the delivery limit; the worker moves the
    // message from the dead-letter queue into quarantine.
    let dlx = notifier::broker::publisher::Publisher::connect(
        crate::support::AMQP_URL,
        &app.settings.amqp.dead_letter_exchange,
    )
    .await
    .unwrap();
    let e = fresh("naleving.aanleververzoek");
    dlx.publish("naleving.aanleververzoek", None, e.to_string().as_bytes())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let row = loop {
        if let Some(r) = app.quarantine().await.into_iter().next() {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "never quarantined");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(row.source, "dead-letter");
    assert!(
        row.reason.contains("delivery limit exceeded"),
        "{}",
        row.reason
    );

    let s = app.settings.clone();
    let out = tokio::task::spawn_blocking(move || cli(&s, &["quarantine", "list"]))
        .await
        .unwrap();
    ok(&out);
    assert!(stdout(&out).contains("dead-letter"), "{}", stdout(&out));
    let s = app.settings.clone();
    let id = row.id.to_string();
    let out = tokio::task::spawn_blocking(move || cli(&s, &["quarantine", "redrive", &id]))
        .await
        .unwrap();
    ok(&out);
    assert!(
        stdout(&out).contains("redriven: accepted event"),
        "{}",
        stdout(&out)
    );
    // The running service sends it.
    let mails = app.wait_mails(1).await;
    // A. Bakker, as registered.
    assert_eq!(mails[0].rcpt_to, vec!["Praktijk@Fysio-Noord.example"]);
    app.wait_deliveries(Some(&id_of(&e)), "sent", |r| {
        r.len() == 1 && r[0].status == DeliveryStatus::Sent
    })
    .await;
    assert_eq!(app.smtp.count(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_stuck_events_and_exits_1() {
    let Installation {
        dir,
        smtp,
        settings: s,
    } = Installation::new().await;
    let e = fresh("contract.voorstel_aangeboden");
    let id = id_of(&e);
    let f = events_file(dir.path(), "e.jsonl", &[&e]);
    ok(&cli(&s, &["ingest", &f]));
    // Pending and due now: not stuck.
    let out = cli(&s, &["check"]);
    ok(&out);
    assert!(stdout(&out).starts_with("ok:"), "{}", stdout(&out));

    // Due two hours ago and nobody sent it (no dispatcher ran).
    let two_hours_ago = chrono::Utc::now().timestamp_millis() - 2 * 3_600_000;
    exec(
        &s,
        &format!("UPDATE deliveries SET due_at = {two_hours_ago} WHERE event_id = '{id}'"),
    )
    .await;
    let out = cli(&s, &["check"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains(&id), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("2 deliveries overdue"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("1 events stuck"), "{}", stderr(&out));
    let out = cli(&s, &["check", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(v["stuck"][0]["event_id"], id.as_str());
    assert_eq!(v["stuck"][0]["overdue_deliveries"], 2);
    assert!(
        v["stuck"][0]["overdue_since"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    ok(&cli(&s, &["check", "--older-than", "3h"]));
    assert_eq!(
        cli(&s, &["check", "--older-than", "soon"]).status.code(),
        Some(2)
    );

    // A sending delivery whose lease ran out long ago is stuck too.
    exec(
        &s,
        &format!(
            "UPDATE deliveries SET status = 'sending', lease_until = {two_hours_ago}, lease_owner = 'gone' \
             WHERE event_id = '{id}'"
        ),
    )
    .await;
    assert_eq!(cli(&s, &["check"]).status.code(), Some(1));

    // A dispatcher claims the expired leases and sends: not stuck any more.
    ok(&cli(&s, &["dispatch", "--until-idle"]));
    assert_eq!(smtp.count(), 2);
    ok(&cli(&s, &["check"]));

    // An accepted module event without any delivery is reported too.
    let lost = uuid::Uuid::new_v4().to_string();
    exec(
        &s,
        &format!(
            "INSERT INTO events (id, type, agb_code, occurred_at, received_at, payload, state) \
             VALUES ('{lost}', 'uitvraag.beoordeeld', '04123456', 0, 0, '{{}}', 'accepted')"
        ),
    )
    .await;
    let out = cli(&s, &["check", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["stuck"].as_array().unwrap().len(), 1);
    assert_eq!(v["stuck"][0]["event_id"], lost.as_str());
    assert_eq!(v["stuck"][0]["problem"], "accepted, but has no deliveries");
}

/// The default `smtp.url` is empty: mail goes to `.eml` files and counts as
/// sent. `run` says so at start, and `/readyz` says where mail goes.
#[tokio::test]
async fn run_without_a_relay_says_so_at_start_and_in_readyz() {
    let dir = tempfile::tempdir().unwrap();
    let (config, s) = TestConfig::new(dir.path()).config_file();
    let _topology = crate::support::TopologyGuard(s.amqp.clone());
    let mut run = crate::support::RunProcess::spawn(&config, "outbox", &[]);
    run.wait_consuming().await;
    let ready = crate::support::http_get(&format!("http://{}/readyz", run.http))
        .await
        .unwrap();
    assert!(ready.contains(r#""relay":"outbox""#), "{ready}");
    assert!(ready.contains(r#""relay_circuit":"closed""#), "{ready}");
    let log = run.log_text();
    let warning = log
        .lines()
        .find(|l| l.contains("no smtp.url"))
        .unwrap_or_else(|| panic!("no warning at start:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&format!("mails are written to {}", s.smtp.outbox_dir)),
        "{warning}"
    );
    assert!(warning.contains("nothing reaches a mailbox"), "{warning}");
    assert!(run.terminate());

    // With a relay: no warning, and readyz names it.
    let app = spawn_app("").await;
    let ready = app.readyz().await;
    assert!(ready.contains(r#""relay":"smtp""#), "{ready}");
    app.stop().await;
}

#[tokio::test]
async fn the_run_loop_exports_stuck_events() {
    let app = spawn_app("[dispatch]\nstuck_after = \"1h\"").await;
    let lost = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO events (id, type, agb_code, occurred_at, received_at, payload, state) \
         VALUES ($1, 'uitvraag.beoordeeld', '04123456', 0, 0, '{}', 'accepted')",
    )
    .bind(&lost)
    .execute(app.store.pool())
    .await
    .unwrap();
    // The gauges are sampled every 5 seconds.
    app.wait_metrics("notifier_stuck_events 1", |b| {
        b.lines().any(|l| l == "notifier_stuck_events 1")
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_prints_the_counts() {
    let Installation {
        dir,
        smtp,
        settings: s,
    } = Installation::new().await;
    // The same directory again: 5 stale updates.
    let file = dir.path().join("directory.jsonl");
    ok(&cli(&s, &["directory", "import", file.to_str().unwrap()]));
    smtp.reply_for_rcpt("p.jansen", "550 5.1.1 No such user");
    let e = fresh("contract.voorstel_aangeboden");
    let f = dir.path().join("in.jsonl");
    std::fs::write(&f, format!("{e}\nnot json\n")).unwrap();
    assert_eq!(
        cli(&s, &["ingest", f.to_str().unwrap()]).status.code(),
        Some(1)
    );
    ok(&cli(&s, &["dispatch", "--until-idle"]));

    let out = cli(&s, &["stats", "--format", "json"]);
    ok(&out);
    let v = json(&out);
    let count = |kind: &str, status: &str| {
        v["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == kind && r["status"] == status)
            .map(|r| r["count"].as_i64().unwrap())
            .unwrap_or(0)
    };
    assert_eq!(count("contract.voorstel_aangeboden", "sent"), 1, "{v}");
    assert_eq!(count("contract.voorstel_aangeboden", "failed"), 1, "{v}");
    assert_eq!(count("beheer.onbestelbaar", "sent"), 1, "{v}");
    assert_eq!(v["pending"]["count"], 0);
    assert!(v["pending"]["oldest_created_at"].is_null());
    assert_eq!(v["attempts"]["sent"], 2);
    assert_eq!(v["attempts"]["permanent"], 1);
    assert_eq!(v["attempts"]["relay_fault"], 0);
    assert_eq!(v["quarantine_open"], 1);
    assert_eq!(v["unroutable_events"], 0);
    assert_eq!(v["directory_skipped"]["stale"], 5);
    assert_eq!(v["relay"]["last_outcome"], "sent");
    assert!(v["relay"]["last_sent_at"].as_str().unwrap().ends_with('Z'));
    assert!(v["relay"]["note"].as_str().unwrap().contains("/readyz"));
    assert!(v["since"].as_str().unwrap().ends_with('Z'));
    assert!(
        !stdout(&out).contains("fysio-noord"),
        "no addresses in stats"
    );

    let out = cli(&s, &["stats"]);
    ok(&out);
    let text = stdout(&out);
    for needle in [
        "deliveries created in the window",
        "contract.voorstel_aangeboden",
        "attempts in the window: sent 2, transient 0, permanent 1",
        "quarantine: 1 open",
        "unroutable events in the window: 0",
        "directory updates skipped in the window: stale 5, unknown_user 0",
        "/readyz",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in\n{text}");
    }
    // A window that starts after everything: no deliveries or attempts.
    let out = cli(
        &s,
        &[
            "stats",
            "--since",
            "2999-01-01T00:00:00Z",
            "--format",
            "json",
        ],
    );
    ok(&out);
    let v = json(&out);
    assert_eq!(v["deliveries"], serde_json::json!([]));
    assert_eq!(v["attempts"]["sent"], 0);
    assert_eq!(v["quarantine_open"], 1, "the quarantine is not windowed");
    assert_eq!(
        cli(&s, &["stats", "--since", "yesterday"]).status.code(),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_ingest_and_redrive_together_never_mail_twice() {
    let Installation {
        dir,
        smtp,
        settings: s,
    } = Installation::new().await;
    smtp.reply_for_rcpt("p.jansen", "550 5.1.1 No such user");
    let e1 = fresh("contract.voorstel_aangeboden");
    let mut e2 = fresh("uitvraag.beoordeeld");
    e2["data"]["url"] = "https://other.example/uitvraag/VL-1".into();
    let f = events_file(dir.path(), "events.jsonl", &[&e1, &e2]);
    assert_eq!(
        cli(&s, &["ingest", &f]).status.code(),
        Some(1),
        "e2 quarantined"
    );
    ok(&cli(&s, &["dispatch", "--until-idle"]));
    // J. de Vries got e1's mail and the notice that P. Jansen could not be reached.
    assert_eq!(smtp.count(), 2);
    smtp.reset_script();

    // Every recovery command at once, twice over, with the fix in place.
    for round in 0..2 {
        let commands: Vec<Vec<String>> = vec![
            vec![
                "replay".into(),
                "deliveries".into(),
                "--status".into(),
                "failed".into(),
                "--execute".into(),
                "--operator".into(),
                "ops-test".into(),
                "--reason".into(),
                format!("round {round}"),
            ],
            vec!["ingest".into(), f.clone()],
            vec!["quarantine".into(), "redrive".into(), "--all".into()],
            vec![
                "replay".into(),
                "events".into(),
                "--execute".into(),
                "--operator".into(),
                "ops-test".into(),
                "--reason".into(),
                format!("round {round}"),
            ],
            vec!["dispatch".into(), "--until-idle".into()],
        ];
        let handles: Vec<_> = commands
            .into_iter()
            .map(|args| {
                let s = s.clone();
                tokio::task::spawn_blocking(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    (args.join(" "), cli_env(&s, &args, &[ALLOW_OTHER]))
                })
            })
            .collect();
        for h in handles {
            let (what, out) = h.await.unwrap();
            assert!(
                out.status.success(),
                "round {round}: `{what}` exit {:?}\n{}{}",
                out.status.code(),
                stdout(&out),
                stderr(&out)
            );
        }
    }
    ok(&cli_env(&s, &["dispatch", "--until-idle"], &[ALLOW_OTHER]));

    let all = deliveries(&s, None).await;
    assert!(
        all.iter().all(|d| d.status == DeliveryStatus::Sent),
        "{all:#?}"
    );
    assert_each_sent_delivery_mailed_once(&s, &smtp).await;
    // e1 to both, e2 to both, and the one undeliverable notice.
    let got = per_recipient(&smtp.messages());
    assert_eq!(
        got.get("j.devries@fysio-noord.example"),
        Some(&3),
        "{got:?}"
    );
    assert_eq!(got.get("p.jansen@fysio-noord.example"), Some(&2), "{got:?}");
    assert_eq!(smtp.count(), 5);
    assert_eq!(
        scalar(&s, "SELECT COUNT(*) FROM quarantine").await,
        1,
        "redrive and ingest added no quarantine rows"
    );
    assert_eq!(
        scalar(&s, "SELECT COUNT(*) FROM events").await,
        2,
        "each event once"
    );
}
