//! Retention end to end: a purged name is gone from the SQLite files (not
//! only from query results), and `notifier run` purges by itself.

use crate::support::{
    Installation, TestBackend, WAIT, cli, events_file, migrated_store, ok, sample_directory,
    spawn_app_with,
};
use notifier::store::events as ev;
use std::time::Duration;

const NAME: &[u8] = b"Pieternella Zeldzaamnaam";

fn holds_name(bytes: &[u8]) -> bool {
    bytes.windows(NAME.len()).any(|w| w == NAME)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_name_is_gone_from_the_sqlite_file_and_its_wal() {
    // Several events, so that pages hold more than one of them: a row
    // rewritten shorter leaves its old bytes in the page's free space
    // unless `secure_delete` zeroes them.
    let events: Vec<serde_json::Value> = (0..8)
        .map(|_| {
            let mut e = crate::support::fresh("uitvraag.aanvulling_gevraagd");
            e["data"]["toelichting"] = String::from_utf8(NAME.to_vec()).unwrap().into();
            e
        })
        .collect();
    let Installation {
        dir,
        smtp,
        settings: s,
    } = Installation::new().await;
    // A running service keeps connections open, so no process exiting
    // checkpoints and removes the WAL for the purge: hold one from before
    // the events arrive, and their pages stay in the WAL.
    let store = migrated_store(s.database.url.expose_secret()).await;
    let held = store.pool().acquire().await.unwrap();
    smtp.reply_for_rcpt("p.jansen@", "550 5.1.1 No such user");
    let file = events_file(
        dir.path(),
        "events.jsonl",
        &events.iter().collect::<Vec<_>>(),
    );
    ok(&cli(&s, &["ingest", &file]));
    ok(&cli(&s, &["dispatch", "--until-idle"]));
    let db = dir.path().join("notifier.db");
    let wal = dir.path().join("notifier.db-wal");
    let files = || -> Vec<Vec<u8>> {
        [&db, &wal]
            .iter()
            .map(|p| std::fs::read(p).unwrap_or_default())
            .collect()
    };
    assert!(
        holds_name(&files()[1]),
        "the name is in the WAL before the purge (else this test proves nothing)"
    );

    ok(&cli(
        &s,
        &[
            "purge",
            "--older-than",
            "0s",
            "--execute",
            "--operator",
            "ops-test",
            "--reason",
            "test",
        ],
    ));
    let after = files();
    assert!(!holds_name(&after[0]), "the name is left in notifier.db");
    assert!(
        !holds_name(&after[1]),
        "the name is left in notifier.db-wal"
    );
    assert!(
        after[1].is_empty(),
        "the WAL is truncated ({} bytes)",
        after[1].len()
    );
    drop(held);
    store.close().await;
}

async fn the_service_purges_old_finished_events_by_itself(backend: TestBackend) {
    let app = spawn_app_with(
        "[retention]\nkeep = \"1s\"\ninterval = \"100ms\"",
        backend,
        |_| {},
    )
    .await;
    app.import_directory(&sample_directory()).await;
    let mut e = crate::support::fresh("uitvraag.aanvulling_gevraagd");
    e["data"]["toelichting"] = String::from_utf8(NAME.to_vec()).unwrap().into();
    let id = e["id"].as_str().unwrap().to_owned();
    app.publish(&e).await;
    app.wait_deliveries(Some(&id), "every mail sent", |r| {
        !r.is_empty() && r.iter().all(|d| d.status.is_final())
    })
    .await;

    // A second after its last mail, the service purges it: wait for that.
    let deadline = tokio::time::Instant::now() + WAIT;
    let purged = loop {
        let mut c = app.store.pool().acquire().await.unwrap();
        let row = ev::get_event(&mut c, &id).await.unwrap().unwrap();
        if row.purged_at.is_some() {
            break row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event was not purged within {WAIT:?}"
        );
        drop(c);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!holds_name(purged.payload.as_bytes()), "{}", purged.payload);
    assert!(purged.payload.contains("uitvraag.aanvulling_gevraagd"));
    let deliveries = app.deliveries(Some(&id)).await;
    assert!(!deliveries.is_empty());
    assert!(
        deliveries
            .iter()
            .all(|d| d.purged && d.recipient == "(purged)")
    );
    let history = notifier::pipeline::recovery::history(&app.store)
        .await
        .unwrap();
    let purge = history
        .iter()
        .find(|h| h.command == "purge")
        .expect("the purge is recorded");
    assert_eq!(purge.operator, "notifier run");
    assert_eq!(purge.reason, "retention.keep = 1s");
    assert!(purge.counts["events"].as_u64().unwrap() >= 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_purges_by_itself_on_sqlite() {
    the_service_purges_old_finished_events_by_itself(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_purges_by_itself_on_postgres() {
    the_service_purges_old_finished_events_by_itself(TestBackend::Postgres).await;
}
