//! Per-test databases ([`TestDb`] on a [`TestBackend`]) and what tests read
//! and load through the store directly.

use super::WAIT;
use notifier::store::Store;
use notifier::store::deliveries::{self as dl, DeliveryFilter, DeliveryRow};
use std::time::Duration;

/// The PostgreSQL server the tests use (trust auth), without a database name.
/// `TEST_PG_SERVER` overrides it, e.g. `postgres://postgres@db:5432`. (Not a
/// `NOTIFIER_` variable: the binary refuses unknown `NOTIFIER_*` settings, and
/// subprocesses inherit the environment.)
pub fn pg_server() -> String {
    std::env::var("TEST_PG_SERVER")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    Sqlite,
    Postgres,
}

impl TestBackend {
    /// The backend `spawn_app` uses: PostgreSQL when
    /// `TEST_BACKEND=postgres`, else SQLite.
    pub fn from_env() -> Self {
        match std::env::var("TEST_BACKEND").as_deref() {
            Ok("postgres") | Ok("pg") => Self::Postgres,
            _ => Self::Sqlite,
        }
    }
}

/// A fresh, empty database for one test. SQLite: a file in a temp directory.
/// PostgreSQL: a new database `notifier_test_<uuid>`, dropped (`WITH (FORCE)`,
/// so open pools do not keep it alive) when this value is dropped.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A new database on `backend`.
    pub async fn new(backend: TestBackend) -> Self {
        match backend {
            TestBackend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                Self {
                    url: format!("sqlite://{}", dir.path().join("notifier.db").display()),
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
            TestBackend::Postgres => Self::postgres().await,
        }
    }

    /// A new PostgreSQL database, created through the `postgres` database.
    pub async fn postgres() -> Self {
        use sqlx::Connection;
        let name = format!("notifier_test_{}", uuid::Uuid::new_v4().simple());
        let admin = format!("{}/postgres", pg_server());
        let mut c = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL at {admin} (trust auth, user postgres) is needed: {e}")
            });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .unwrap();
        let _ = c.close().await;
        Self {
            url: format!("{}/{name}", pg_server()),
            pg_name: Some(name),
            _dir: None,
        }
    }

    /// A migrated store on this database.
    pub async fn store(&self) -> Store {
        migrated_store(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let admin = format!("{}/postgres", pg_server());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

/// A store on `url`, migrated (a missing SQLite file is created).
pub async fn migrated_store(url: &str) -> Store {
    let store = Store::connect(url, 4).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// Loads directory lines (JSON, one user a line) into `store`, as
/// `notifier directory import` does; a line it refuses fails the test.
pub async fn import_directory(store: &Store, jsonl: &str) {
    notifier::pipeline::recovery::import_users(store, jsonl, &mut |n, r| panic!("line {n}: {r}"))
        .await
        .unwrap();
}

/// Every delivery in `store`, or those of one event.
pub async fn deliveries(store: &Store, event_id: Option<&str>) -> Vec<DeliveryRow> {
    let mut c = store.pool().acquire().await.unwrap();
    let filter = DeliveryFilter {
        event_id: event_id.map(str::to_owned),
        ..Default::default()
    };
    dl::list(&mut c, &filter).await.unwrap()
}

/// Waits until `pred` holds for the deliveries in `store` (all, or those of
/// `event_id`), polling for at most `within`; `what` names the wait in the
/// failure, which shows the deliveries (counted by status when many).
pub async fn wait_for_deliveries(
    store: &Store,
    event_id: Option<&str>,
    within: Duration,
    what: &str,
    pred: impl Fn(&[DeliveryRow]) -> bool,
) -> Vec<DeliveryRow> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let rows = deliveries(store, event_id).await;
        if pred(&rows) {
            return rows;
        }
        if tokio::time::Instant::now() > deadline {
            if rows.len() <= 20 {
                panic!("timed out waiting for {what}; deliveries: {rows:#?}");
            }
            let mut by_status: std::collections::BTreeMap<&str, usize> = Default::default();
            for r in &rows {
                *by_status.entry(r.status.as_str()).or_default() += 1;
            }
            panic!(
                "timed out waiting for {what}: {} deliveries {by_status:?}",
                rows.len()
            );
        }
        // Listing thousands of rows is work for the database under test.
        let pause = if rows.len() > 100 { 100 } else { 25 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// [`wait_for_deliveries`] over all deliveries.
pub async fn wait_all_deliveries(
    store: &Store,
    within: Duration,
    what: &str,
    pred: impl Fn(&[DeliveryRow]) -> bool,
) -> Vec<DeliveryRow> {
    wait_for_deliveries(store, None, within, what, pred).await
}

/// Waits until the event is recorded in `store` (accepted or otherwise).
pub async fn wait_event(store: &Store, id: &str) -> notifier::store::events::EventRow {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c = store.pool().acquire().await.unwrap();
        if let Some(e) = notifier::store::events::get_event(&mut c, id)
            .await
            .unwrap()
        {
            return e;
        }
        drop(c);
        assert!(
            tokio::time::Instant::now() < deadline,
            "event {id} never recorded"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
