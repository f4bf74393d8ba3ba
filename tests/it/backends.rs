//! What each backend promises at start: SQLite serves one `notifier run` per
//! file (a second is refused, short commands still work beside it), and a
//! database that is behind stops a command with a hint instead of running on
//! an old schema, on SQLite and on PostgreSQL.

use crate::support::{
    Deployment, RunProcess, TestBackend, TestDb, cli, event_for, many_users, stderr, stdout,
    wait_all_deliveries,
};
use notifier::domain::delivery::DeliveryStatus;
use std::time::Duration;

/// Runs the binary to its end, killing it if it is still running after
/// `within` (so a command that should have stopped cannot hang the suite).
fn run_bounded(cmd: &mut std::process::Command, within: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {within:?}: {}{}",
                stdout(&out),
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_one_sqlite_file_is_refused_and_short_commands_still_work() {
    let deployment = Deployment::new(TestBackend::Sqlite).await;
    let (dir, smtp, cfg, s) = deployment.parts();
    let out = cli(s, &["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let users = dir.path().join("users.jsonl");
    std::fs::write(&users, many_users("05555555", 300)).unwrap();
    let out = cli(s, &["directory", "import", users.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let mut first = RunProcess::spawn(cfg, "first", &[]);
    first.wait_consuming().await;

    // A second `run` on the same file stops at once with exit 2 and says why.
    let out = run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
            .args(["--config", cfg.to_str().unwrap(), "run"])
            .env("NOTIFIER_HTTP__LISTEN", "127.0.0.1:0"),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let msg = stderr(&out);
    assert!(
        msg.contains("another `notifier run` is already using") && msg.contains("PostgreSQL"),
        "{msg}"
    );

    // Short commands beside the running service, while it writes: ingest two
    // events (600 deliveries) one after the other, list while it sends.
    let events = dir.path().join("events.jsonl");
    for _ in 0..2 {
        std::fs::write(&events, event_for("05555555").to_string()).unwrap();
        let out = cli(s, &["ingest", events.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("accepted 1"), "{}", stdout(&out));
        let out = cli(s, &["deliveries", "list", "--format", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(!v.as_array().unwrap().is_empty());
    }
    let store = notifier::store::Store::connect(s.database.url.expose_secret(), 2)
        .await
        .unwrap();
    wait_all_deliveries(&store, Duration::from_secs(120), "600 sent", |r| {
        r.len() == 600 && r.iter().all(|d| d.status == DeliveryStatus::Sent)
    })
    .await;
    assert_eq!(smtp.count(), 600, "the running service sent each once");
    store.close().await;
    assert!(first.terminate(), "{}", first.log_text());

    // Once the first has stopped, the file is free again.
    let mut again = RunProcess::spawn(cfg, "again", &[]);
    again.wait_consuming().await;
    assert!(again.terminate(), "{}", again.log_text());
}

/// `run` and a read-only command on a database that was never migrated, with
/// `database.migrate_on_start = false`: exit 2 and the hint; after
/// `notifier migrate` both work.
async fn a_database_behind_is_refused_with_the_hint(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let notifier = |args: &[&str]| {
        run_bounded(
            std::process::Command::new(env!("CARGO_BIN_EXE_notifier"))
                .args(args)
                .env("NOTIFIER_DATABASE__URL", &db.url)
                .env("NOTIFIER_DATABASE__MIGRATE_ON_START", "false")
                .env("NOTIFIER_HTTP__LISTEN", "127.0.0.1:0")
                // No broker is needed: the start stops before connecting.
                .env("NOTIFIER_AMQP__URL", "amqp://guest:guest@127.0.0.1:1/%2f")
                .current_dir(dir.path()),
            Duration::from_secs(30),
        )
    };
    for args in [&["run"][..], &["deliveries", "list"][..]] {
        let out = notifier(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("run `notifier migrate`"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = notifier(&["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("database is up to date"));
    let out = notifier(&["deliveries", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("0 deliveries"), "{}", stdout(&out));

    // A database that has a later migration but not an earlier one (made
    // by a build from a branch) is behind too, not current.
    let store = notifier::store::Store::connect(&db.url, 1).await.unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 6")
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
    let out = notifier(&["deliveries", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("database at migration 5, this version needs 7"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_behind_is_refused_with_the_hint() {
    a_database_behind_is_refused_with_the_hint(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_behind_is_refused_with_the_hint() {
    a_database_behind_is_refused_with_the_hint(TestBackend::Postgres).await;
}

/// A commit on SQLite is on disk before it returns (`synchronous = FULL` on
/// every connection of the pool): ingest acks RabbitMQ right after its
/// commit, so with `NORMAL` a power cut could lose an acked event.
#[tokio::test]
async fn sqlite_commits_are_durable_before_they_return() {
    let db = TestDb::new(TestBackend::Sqlite).await;
    let store = db.store().await;
    // Several connections at once, so more than one pooled connection is checked.
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(store.pool().acquire().await.unwrap());
    }
    for c in &mut conns {
        let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut **c)
            .await
            .unwrap();
        assert_eq!(level, 2, "PRAGMA synchronous is FULL (2)");
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut **c)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
