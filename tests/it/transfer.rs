//! Moving up: the documented procedure from SQLite to PostgreSQL, run with the
//! real binary. Stop `run`, `notifier export` from SQLite, `notifier migrate`
//! and `notifier import` into PostgreSQL, start `run` there: pending mail is
//! sent, sent mail is not sent again, and the history is intact.

use crate::support::{
    Deployment, RunProcess, TestBackend, TestDb, cli, fresh, install_sample_directory, parse_mail,
    stderr, stdout, wait_all_deliveries,
};
use notifier::domain::delivery::DeliveryStatus;
use notifier::store::Store;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// The binary with `config` and the database at `db_url`.
fn notifier(config: &Path, db_url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("NOTIFIER_DATABASE__URL", db_url)
        .output()
        .unwrap()
}

/// The row lines of an export (the header, with its time, left out).
fn rows(file: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_from_sqlite_to_postgres_keeps_every_delivery_and_its_history() {
    let deployment = Deployment::new(TestBackend::Sqlite).await;
    let (dir, smtp, cfg, s) = deployment.parts();
    let sqlite = s.database.url.clone();

    // A SQLite installation with history: one mail sent, a quarantined line,
    // and two mails being sent when the service was killed (one of them a
    // retry after a 450).
    install_sample_directory(s, dir.path());
    let a = fresh("contract.voorstel_aangeboden");
    let a_id = a["id"].as_str().unwrap().to_owned();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, format!("{a}\n{{ not json\n")).unwrap();
    let out = cli(s, &["ingest", events.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    smtp.reply_for_rcpt_times("j.devries", "450 4.2.0 try again later", 1);
    let out = notifier(cfg, &sqlite, &["dispatch", "--until-idle"]); // retry.schedule = 1s
    assert!(
        stdout(&out).contains("sent 1, retry scheduled 1"),
        "{}",
        stdout(&out)
    );

    let b = fresh("naleving.aanleververzoek");
    let b_id = b["id"].as_str().unwrap().to_owned();
    std::fs::write(&events, b.to_string()).unwrap();
    assert!(
        cli(s, &["ingest", events.to_str().unwrap()])
            .status
            .success()
    );
    // The retry is due in a second. The relay holds both sends (it has the
    // data, no reply yet) while the service is killed.
    smtp.stall_after_data(Some(Duration::from_secs(600)));
    let sqlite_store = Store::connect(&sqlite, 2).await.unwrap();
    // Both due before `run` starts, so its first round claims both.
    wait_all_deliveries(
        &sqlite_store,
        Duration::from_secs(30),
        "the retry due",
        |r| {
            let now = chrono::Utc::now().timestamp_millis();
            r.iter()
                .all(|d| d.status == DeliveryStatus::Sent || d.due_at <= now)
        },
    )
    .await;
    let mut old = RunProcess::spawn(cfg, "sqlite-run", &[]);
    wait_all_deliveries(
        &sqlite_store,
        Duration::from_secs(30),
        "two sends in flight",
        |r| {
            r.iter()
                .filter(|d| d.status == DeliveryStatus::Sending)
                .count()
                == 2
                && r.iter()
                    .any(|d| d.event_id == b_id && d.status == DeliveryStatus::Sending)
        },
    )
    .await;
    old.kill9();
    sqlite_store.close().await;
    smtp.stall_after_data(None);
    let mails_before = smtp.count();
    assert_eq!(mails_before, 1, "only the first mail went out on SQLite");

    // 1. Export from SQLite.
    let file = dir.path().join("move.jsonl");
    let out = notifier(
        cfg,
        &sqlite,
        &["export", "--output", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("deliveries 3"), "{}", stdout(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    let header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["schema_version"], 6, "the latest migration");
    assert_eq!(header["tables"]["deliveries"], 3);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().all(|v| v["table"].is_string()));
    // Each attempt names the templates that rendered it (compared below,
    // with every other column, after the move).
    let attempts: Vec<_> = lines.iter().filter(|v| v["table"] == "attempts").collect();
    assert_eq!(attempts.len(), 2, "the 450 and the sent attempt");
    for a in attempts {
        assert_eq!(a["template_source"], "builtin", "{a}");
        assert_eq!(
            a["template_version"].as_str().map(str::len),
            Some(12),
            "{a}"
        );
    }

    // 2. Migrate and import into PostgreSQL.
    let pg = TestDb::postgres().await;
    let out = notifier(cfg, &pg.url, &["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = notifier(cfg, &pg.url, &["import", "--input", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("2 deliveries that were being sent are pending again"),
        "{}",
        stdout(&out)
    );
    // A second import is refused: the target is not empty any more.
    let out = notifier(cfg, &pg.url, &["import", "--input", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));

    // What PostgreSQL now holds is what SQLite held, leases aside.
    let back = dir.path().join("back.jsonl");
    let out = notifier(
        cfg,
        &pg.url,
        &["export", "--output", back.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (from, to) = (rows(&file), rows(&back));
    let differ: Vec<_> = from.symmetric_difference(&to).collect();
    assert_eq!(
        differ.len(),
        4,
        "only the deliveries being sent changed: {differ:#?}"
    );
    assert!(differ.iter().any(|l| l.contains("\"status\":\"sending\"")));
    assert!(
        differ
            .iter()
            .any(|l| l.contains("\"status\":\"pending\"") && l.contains("\"lease_owner\":null"))
    );

    // 3. Start `run` on PostgreSQL.
    let pg_store = Store::connect(&pg.url, 2).await.unwrap();
    let mut new = RunProcess::spawn(
        cfg,
        "pg-run",
        &[("NOTIFIER_DATABASE__URL", pg.url.as_str())],
    );
    new.wait_consuming().await;
    let done = wait_all_deliveries(
        &pg_store,
        Duration::from_secs(30),
        "all sent on PostgreSQL",
        |r| r.len() == 3 && r.iter().all(|d| d.status == DeliveryStatus::Sent),
    )
    .await;
    assert!(new.terminate(), "{}", new.log_text());
    let mails = smtp.messages();
    assert_eq!(
        mails.len(),
        3,
        "the two pending mails, and nothing sent again"
    );
    let ids: BTreeSet<String> = mails.iter().map(|m| parse_mail(m).message_id).collect();
    assert_eq!(
        ids,
        done.iter().map(|d| d.message_id.clone()).collect(),
        "Message-IDs kept"
    );

    // History: `events show` on PostgreSQL tells the whole story.
    let out = notifier(cfg, &pg.url, &["events", "show", &a_id, "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["final_state"], "done");
    let retried = v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["recipient"] == "j.devries@fysio-noord.example")
        .unwrap();
    let outcomes: Vec<_> = retried["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["n"].as_i64().unwrap(),
                a["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(outcomes, vec![(1, "transient".into()), (2, "sent".into())]);
    assert_eq!(retried["attempt_log"][0]["smtp_code"], 450);

    // New rows get new ids: the quarantine sequence moved past the imported id.
    std::fs::write(&events, "still { not json\n").unwrap();
    let out = notifier(cfg, &pg.url, &["ingest", events.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("quarantined as 2"),
        "{}",
        stderr(&out)
    );
    let raw: Vec<u8> = sqlx::query_scalar("SELECT raw FROM quarantine WHERE id = 1")
        .fetch_one(pg_store.pool())
        .await
        .unwrap();
    assert_eq!(raw, b"{ not json", "quarantined bytes moved as they were");
    pg_store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_refuses_a_file_that_is_not_a_whole_export_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, s) = crate::support::TestConfig::new(dir.path())
        .smtp("")
        .config_file();
    install_sample_directory(&s, dir.path());
    let file = dir.path().join("export.jsonl");
    let out = cli(&s, &["export", "--output", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("users 5"), "{}", stdout(&out));

    let target = TestDb::postgres().await;
    assert!(notifier(&cfg, &target.url, &["migrate"]).status.success());
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let truncated = dir.path().join("truncated.jsonl");
    std::fs::write(&truncated, lines[..lines.len() - 1].join("\n")).unwrap();
    let not_export = dir.path().join("events.jsonl");
    std::fs::write(&not_export, fresh("uitvraag.beoordeeld").to_string()).unwrap();
    for (f, says) in [
        (&truncated, "incomplete"),
        (&not_export, "not a notifier export"),
    ] {
        let out = notifier(
            &cfg,
            &target.url,
            &["import", "--input", f.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
    // Nothing was written: the whole file still imports.
    let out = notifier(
        &cfg,
        &target.url,
        &["import", "--input", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("users 5"), "{}", stdout(&out));
}
