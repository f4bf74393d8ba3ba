//! Least privilege, tried for real with the deploy files as written: the
//! PostgreSQL roles of `deploy/postgres/roles.sql` (`migrate` as the
//! migration role, `run` and the operator commands as the runtime role) and
//! the RabbitMQ users of `deploy/rabbitmq/definitions.json` (exactly its
//! permission regexes, in a vhost of the test's own). The rights must be
//! enough for the whole pipeline, and no more than documented.

use crate::bounces::{
    BOUNCE_ADDRESS, EVENT, JANSEN, SETTINGS as BOUNCE_SETTINGS, postfix_dsn, verp,
};
use crate::support::roles::{
    BrokerAccounts, PgRoles, documented_amqp_names, documented_permissions, repo_file,
};
use crate::support::smtp_server::TestSmtpServer;
use crate::support::{RunProcess, TestConfig, WAIT, cli, json, ok, sample_directory, stderr};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use notifier::broker::publisher::Publisher;
use notifier::config::AmqpSettings;
use notifier::domain::delivery::DeliveryStatus;
use notifier::store::Store;
use std::time::Duration;

/// `sql` as `url`'s role fails with insufficient_privilege (42501).
async fn refused_sql(url: &str, sql: &str) {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    match sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut c)
        .await
    {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {}
        other => panic!("{sql}: expected permission denied (42501), got {other:?}"),
    }
    let _ = c.close().await;
}

/// Waits until the process exits; its exit code.
async fn exit_code(p: &mut RunProcess) -> Option<i32> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return status.code();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still running: {}",
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_as_the_owner_run_as_the_runtime_role_with_the_documented_broker_rights() {
    let broker = BrokerAccounts::new();
    let pg = PgRoles::new();
    let migrate_url = pg.url(&pg.migrate_role);
    let runtime_url = pg.url(&pg.runtime_role);
    let dir = tempfile::tempdir().unwrap();
    let smtp = TestSmtpServer::start().await;
    let maildir = dir.path().join("bounces");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    // The runtime role's configuration, as an operator would write it.
    let (config, settings) = TestConfig::new(dir.path())
        .smtp(&smtp.url())
        .with(&documented_amqp_names())
        .amqp(&broker.url(&broker.notifier))
        .database(&runtime_url)
        .with(BOUNCE_SETTINGS)
        .with(&format!(
            "[database]\nmigrate_on_start = false\n[bounces]\nmaildir = {}\npoll_interval = \"100ms\"\n[log]\nlevel = \"warn,notifier=debug\"",
            toml::Value::from(maildir.to_str().unwrap())
        ))
        .config_file();
    let cfg = config.to_str().unwrap();
    let notifier = |args: &[&str]| {
        let mut all = vec!["--config", cfg];
        all.extend_from_slice(args);
        cli(&settings, &all)
    };

    // The runtime role cannot migrate, and says what to do instead.
    let out = notifier(&["migrate"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let hint = "may not change the schema";
    assert!(
        stderr(&out).contains(hint)
            && stderr(&out).contains("migration role")
            && stderr(&out).contains("migrate_on_start = false"),
        "{}",
        stderr(&out)
    );

    // The migration role migrates; then the optional hardening of the
    // migration bookkeeping.
    let out = crate::support::cli_env(
        &settings,
        &["--config", cfg, "migrate"],
        &[("NOTIFIER_DATABASE__URL", &migrate_url)],
    );
    ok(&out);
    pg.run_file_as(&pg.migrate_role, "deploy/postgres/after-first-migrate.sql");

    // Nor can `run` with migrate_on_start at its default, even with nothing
    // pending (sqlx's first statement is a CREATE TABLE IF NOT EXISTS).
    let mut run = RunProcess::spawn(
        &config,
        "migrate-on-start",
        &[("NOTIFIER_DATABASE__MIGRATE_ON_START", "true")],
    );
    assert_eq!(exit_code(&mut run).await, Some(2), "{}", run.log_text());
    assert!(run.log_text().contains(hint), "{}", run.log_text());

    // No DDL, no TRUNCATE, nothing new, no writes to the bookkeeping.
    for sql in [
        "CREATE TABLE probe (a INT)",
        "CREATE TEMP TABLE probe (a INT)",
        "CREATE SCHEMA probe",
        "ALTER TABLE deliveries ADD COLUMN probe INT",
        "CREATE INDEX probe ON events (type)",
        "DROP TABLE events",
        "TRUNCATE attempts",
        "DELETE FROM _sqlx_migrations",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (999, 'x', TRUE, '\\x00', 0)",
    ] {
        refused_sql(&runtime_url, sql).await;
    }

    // Operator commands as the runtime role: the directory import (its
    // statistics refresh is the owner's; it must not warn or fail).
    let users = dir.path().join("directory.jsonl");
    std::fs::write(&users, sample_directory()).unwrap();
    let out = notifier(&["directory", "import", users.to_str().unwrap()]);
    ok(&out);
    assert!(
        !stderr(&out).to_lowercase().contains("skipping"),
        "{}",
        stderr(&out)
    );

    // `run` as the runtime role on the notifier's broker user; the event
    // comes from the portal's user.
    let mut run = RunProcess::spawn(&config, "run", &[]);
    run.wait_consuming().await;
    let portal = Publisher::connect(&broker.url(&broker.portal), &settings.amqp.exchange)
        .await
        .unwrap();
    let event = crate::support::fresh(EVENT);
    let event_id = event["id"].as_str().unwrap().to_owned();
    portal
        .publish(EVENT, Some(&event_id), event.to_string().as_bytes())
        .await
        .expect("the portal's rights let it publish");
    let mails = smtp.wait_for_count(2, WAIT).await.unwrap();
    assert_eq!(mails.len(), 2);

    let store = Store::connect(&runtime_url, 2).await.unwrap();
    let rows =
        crate::support::wait_for_deliveries(&store, Some(&event_id), WAIT, "both sent", |r| {
            r.len() == 2 && r.iter().all(|d| d.status == DeliveryStatus::Sent)
        })
        .await;
    let out = notifier(&[
        "deliveries",
        "list",
        "--event",
        &event_id,
        "--format",
        "json",
    ]);
    ok(&out);
    let listed = json(&out);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "sent"),
        "{listed}"
    );

    // Over time: a bounce read from the maildir by `run` is recorded, ends
    // the delivery bounced and tells the contact persons.
    let jansen = rows.iter().find(|d| d.recipient == JANSEN).unwrap();
    let sent = mails
        .iter()
        .find(|m| m.rcpt_to.iter().any(|r| r == JANSEN))
        .unwrap()
        .data_str();
    let headers = sent.split("\r\n\r\n").next().unwrap();
    let dsn = postfix_dsn(JANSEN, "failed", "5.1.1", headers).replace(
        &format!("To: {BOUNCE_ADDRESS}\r\n"),
        &format!(
            "X-Original-To: {}\r\nTo: {BOUNCE_ADDRESS}\r\n",
            verp(&jansen.id)
        ),
    );
    let tmp = maildir.join("tmp/1760000000.M1P1.mx");
    std::fs::write(&tmp, &dsn).unwrap();
    std::fs::rename(&tmp, maildir.join("new/1760000000.M1P1.mx")).unwrap();
    crate::support::wait_for_deliveries(
        &store,
        Some(&event_id),
        WAIT,
        "bounced and the contact persons told",
        |r| {
            r.iter()
                .any(|d| d.id == jansen.id && d.status == DeliveryStatus::Bounced)
                && r.iter()
                    .any(|d| d.kind == "beheer.onbestelbaar" && d.status == DeliveryStatus::Sent)
        },
    )
    .await;
    let out = notifier(&["bounces", "list", "--format", "json"]);
    ok(&out);
    assert_eq!(json(&out)[0]["outcome"], "hard", "{}", json(&out));
    store.close().await;

    assert!(run.terminate(), "{}", run.log_text());
    let log = run.log_text().to_lowercase();
    for refusal in [
        "permission denied",
        "must be owner",
        "access_refused",
        "skipping",
    ] {
        assert!(!log.contains(refusal), "{refusal}: {log}");
    }
}

/// A fresh channel on `conn`, for one operation that may close it.
async fn try_op<F, Fut>(conn: &Connection, op: F) -> Result<(), lapin::Error>
where
    F: FnOnce(lapin::Channel) -> Fut,
    Fut: std::future::Future<Output = Result<(), lapin::Error>>,
{
    let ch = conn.create_channel().await?;
    op(ch).await
}

#[track_caller]
fn assert_refused(what: &str, r: Result<(), lapin::Error>) {
    match r {
        Err(e) if e.to_string().contains("ACCESS_REFUSED") => {}
        other => panic!("{what}: expected ACCESS_REFUSED, got {other:?}"),
    }
}

/// A confirmed, persistent publish of `body` to `exchange`.
async fn publish(ch: lapin::Channel, exchange: &str, key: &str) -> Result<(), lapin::Error> {
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        b"{}",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await?
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_documented_broker_rights_allow_the_topology_and_nothing_more() {
    let broker = BrokerAccounts::new();
    let dir = tempfile::tempdir().unwrap();
    let a: AmqpSettings = TestConfig::new(dir.path())
        .with(&documented_amqp_names())
        .settings()
        .amqp;
    let (ex, qn) = (a.exchange.as_str(), a.queue.as_str());
    let props = ConnectionProperties::default;
    let worker = Connection::connect(&broker.url(&broker.notifier), props())
        .await
        .unwrap();
    let portal = Connection::connect(&broker.url(&broker.portal), props())
        .await
        .unwrap();

    // What the worker does on every connect: declare, bind, consume both queues.
    let ch = worker.create_channel().await.unwrap();
    notifier::broker::topology::declare(&ch, &a)
        .await
        .expect("the documented rights let the worker declare its topology");
    for q in [&a.queue, &a.dead_letter_queue] {
        try_op(&worker, |ch| async move {
            ch.basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map(drop)
        })
        .await
        .unwrap_or_else(|e| panic!("consume {q}: {e}"));
    }

    // The portal: a passive check of the exchange, and a confirmed publish
    // that reaches the worker's queue.
    try_op(&portal, |ch| async move {
        ch.exchange_declare(
            ex.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    })
    .await
    .expect("a passive declare needs no rights");
    try_op(&portal, |ch| publish(ch, ex, EVENT))
        .await
        .expect("the portal publishes events");
    let got = ch
        .basic_get(qn.into(), BasicGetOptions::default())
        .await
        .unwrap();
    assert!(got.is_some(), "the portal's event reached {}", a.queue);

    // The worker cannot inject events, into the portal's exchange or
    // straight into its own queue (the default exchange), and cannot make
    // or delete other queues.
    assert_refused(
        "worker publishes to the portal's exchange",
        try_op(&worker, |ch| publish(ch, ex, EVENT)).await,
    );
    assert_refused(
        "worker publishes to its queue through the default exchange",
        try_op(&worker, |ch| publish(ch, "", qn)).await,
    );
    for name in ["other.queue", ""] {
        assert_refused(
            &format!("worker declares queue {name:?}"),
            try_op(&worker, |ch| async move {
                ch.queue_declare(
                    name.into(),
                    QueueDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map(drop)
            })
            .await,
        );
    }

    // The portal cannot declare, bind or read anything.
    assert_refused(
        "portal declares the exchange",
        try_op(&portal, |ch| async move {
            ch.exchange_declare(
                ex.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
        })
        .await,
    );
    assert_refused(
        "portal consumes the worker's queue",
        try_op(&portal, |ch| async move {
            ch.basic_consume(
                qn.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map(drop)
        })
        .await,
    );
    assert_refused(
        "portal binds the worker's queue",
        try_op(&portal, |ch| async move {
            ch.queue_bind(
                qn.into(),
                ex.into(),
                "extra".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        })
        .await,
    );
    let _ = worker.close(200, "done".into()).await;
    let _ = portal.close(200, "done".into()).await;
}

/// The regexes in deploy/rabbitmq/README.md's tables are the ones in
/// definitions.json (which the tests above apply), so what an auditor reads
/// is what was tested.
#[test]
fn the_readme_shows_the_permissions_of_definitions_json() {
    let readme = std::fs::read_to_string(repo_file("deploy/rabbitmq/README.md")).unwrap();
    for user in ["notifier", "portal"] {
        let section = readme
            .split(&format!("### `{user}`"))
            .nth(1)
            .unwrap_or_else(|| panic!("README has a section for {user}"));
        let shown = ["configure", "write", "read"].map(|right| {
            let row = section
                .lines()
                .find(|l| l.starts_with(&format!("| {right} |")))
                .unwrap_or_else(|| panic!("{user}: no {right} row"));
            // `| right | `regex` | why |`, with `|` escaped as `\|` in the regex.
            let regex = row.split('`').nth(1).unwrap();
            regex.replace("\\|", "|")
        });
        assert_eq!(shown, documented_permissions(user), "{user}");
    }
}
