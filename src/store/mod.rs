//! The database: the source of truth for events, the directory and the
//! delivery queue. One [`Store`] over two backends, SQLite (embedded default,
//! one instance) and PostgreSQL (several instances), chosen from the URL.
//!
//! Queries are written once in the SQL both backends share (`$1` placeholders,
//! `ON CONFLICT`, `RETURNING`); where they differ ([`Backend`]) the difference
//! sits next to the query. Multi-row statements with thousands of values
//! take their placeholders from `Binds` (`?` on SQLite, where many `$n` are
//! slow). Times are stored as epoch milliseconds (UTC).

pub mod bounces;
pub mod deliveries;
pub mod directory;
pub mod events;
mod filter;
pub mod planning;
pub mod replays;
pub mod retention;
pub mod transfer;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyPool, Transaction};
use std::str::FromStr;
use std::time::Duration;

/// An open write transaction.
/// A transaction. On SQLite a writing one also holds this process's
/// writer turn (see [`Store::begin`]) until it commits, rolls back or is
/// dropped.
pub struct Tx {
    tx: Transaction<'static, Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Tx {
    /// Commits.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for Tx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// What went wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable or query failed: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the database schema is behind this version (database at migration {}, this version needs {latest}); run `notifier migrate` or set database.migrate_on_start = true",
        .current.map_or_else(|| "none".to_owned(), |v| v.to_string())
    )]
    Behind { current: Option<i64>, latest: i64 },
    /// The database user may not create or alter tables: a runtime role
    /// (deploy/postgres/roles.sql) asked to migrate.
    #[error(
        "the database user in database.url may not change the schema ({0}): it looks like the runtime role, which has no DDL rights. Run `notifier migrate` with the migration role's database.url, and give `run` database.migrate_on_start = false (see deploy/postgres/README.md)"
    )]
    MayNotMigrate(String),
    #[error("{0}")]
    Locked(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// One message's data cannot be stored or processed (raised by this
    /// worker, e.g. a panic while ingesting it): that message is kept in
    /// quarantine, the others of its batch go through.
    #[error("{0}")]
    BadMessage(String),
}

impl StoreError {
    /// True when the database refused the *data* of a statement, not the
    /// statement's chance to run: PostgreSQL SQLSTATE classes 22 (data
    /// exception) and 23 (integrity constraint), SQLite `CONSTRAINT`,
    /// `TOOBIG` and `MISMATCH`, a value that cannot be encoded, or
    /// [`StoreError::BadMessage`]. Retrying such a statement fails again;
    /// every other error (connection lost, `SQLITE_BUSY`, a deadlock, a
    /// timeout) may pass on the next try.
    pub fn is_data_error(&self) -> bool {
        match self {
            Self::BadMessage(_) => true,
            Self::Db(sqlx::Error::Encode(_)) => true,
            Self::Db(sqlx::Error::Database(e)) => {
                if let Some(pg) = e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    return pg.code().starts_with("22") || pg.code().starts_with("23");
                }
                if e.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    // sqlx reports SQLite's extended result code; the primary
                    // code is its low byte.
                    const TOOBIG: i64 = 18;
                    const CONSTRAINT: i64 = 19;
                    const MISMATCH: i64 = 20;
                    let primary = e
                        .code()
                        .and_then(|c| c.parse::<i64>().ok())
                        .map(|c| c & 0xff);
                    return matches!(primary, Some(TOOBIG | CONSTRAINT | MISMATCH));
                }
                false
            }
            _ => false,
        }
    }
}

/// A text from outside made storable on both backends: PostgreSQL refuses
/// U+0000 in `text` columns (SQLite keeps it), so it becomes U+FFFD. Raw
/// message bytes are stored as bytes and never pass through here.
pub fn storable(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// Bind parameters per statement: well under SQLite's (32,766) and
/// PostgreSQL's (65,535) limits, and small enough to plan quickly.
pub(crate) const MAX_PARAMS: usize = 900;

/// Writes bind placeholders in the order the values are bound: `?` on
/// SQLite, `$1, $2, ...` on PostgreSQL. SQLite keeps numbered and named
/// placeholders in a list it searches linearly, once per placeholder while
/// preparing and once per value while sqlx binds, so a multi-row statement
/// with thousands of `$n` costs time quadratic in their number (measured:
/// 0.2 to 0.4 s per 1,000 delivery rows); anonymous `?` costs nothing extra.
pub(crate) struct Binds {
    numbered: bool,
    n: usize,
}

impl Binds {
    /// Placeholders for the backend behind `conn`.
    pub(crate) fn for_conn(conn: &sqlx::AnyConnection) -> Self {
        Self {
            numbered: Backend::of(conn) == Backend::Postgres,
            n: 0,
        }
    }

    /// The placeholder of the next value bound.
    pub(crate) fn next(&mut self) -> String {
        self.n += 1;
        if self.numbered {
            format!("${}", self.n)
        } else {
            "?".to_owned()
        }
    }

    /// `p, p, ...` for the next `k` values bound.
    pub(crate) fn list(&mut self, k: usize) -> String {
        let list: Vec<String> = (0..k).map(|_| self.next()).collect();
        list.join(", ")
    }

    /// `(p, p, ...)` for the next `k` values bound.
    pub(crate) fn row(&mut self, k: usize) -> String {
        format!("({})", self.list(k))
    }
}

/// Which SQL dialect is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend behind `conn`.
    pub(crate) fn of(conn: &sqlx::AnyConnection) -> Self {
        if conn.backend_name() == <sqlx::Sqlite as sqlx::Database>::NAME {
            Self::Sqlite
        } else {
            Self::Postgres
        }
    }
}

/// Set on every SQLite connection.
const SQLITE_PRAGMAS: [&str; 5] = [
    // WAL lets readers (CLI, dispatch) run beside the writer; the busy
    // timeout makes a second writer wait instead of failing.
    "PRAGMA journal_mode = WAL",
    "PRAGMA busy_timeout = 10000",
    // FULL: a commit is on disk before it returns. Ingest acks RabbitMQ
    // right after its commit, and dispatch records that the relay accepted
    // a mail: with NORMAL a power cut could lose either (a lost event, or a
    // mail sent again). Measured cost in docs/backends.md.
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
    // Deleted and overwritten content is zeroed in the file, not left in
    // free space: a purge (`retention.keep`) must remove personal data from
    // the database file, not only from query results. Measured cost in
    // docs/backends.md.
    "PRAGMA secure_delete = ON",
];

/// The database handle shared by ingest, dispatch and the CLI.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Kept for connections outside the pool (PostgreSQL `LISTEN`); it may
    /// hold a password: never print it.
    url: std::sync::Arc<str>,
    /// SQLite: whose turn it is to write, first come first served.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "fault_paths",
        include_str!("../../migrations/sqlite/0002_fault_paths.sql"),
    ),
    (
        3,
        "attempt_checked_at",
        include_str!("../../migrations/sqlite/0003_attempt_checked_at.sql"),
    ),
    (
        4,
        "bounces",
        include_str!("../../migrations/sqlite/0004_bounces.sql"),
    ),
    (
        5,
        "attempt_templates",
        include_str!("../../migrations/sqlite/0005_attempt_templates.sql"),
    ),
    (
        6,
        "retention",
        include_str!("../../migrations/sqlite/0006_retention.sql"),
    ),
    (
        7,
        "registered_addresses",
        include_str!("../../migrations/sqlite/0007_registered_addresses.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "fault_paths",
        include_str!("../../migrations/postgres/0002_fault_paths.sql"),
    ),
    (
        3,
        "attempt_checked_at",
        include_str!("../../migrations/postgres/0003_attempt_checked_at.sql"),
    ),
    (
        4,
        "bounces",
        include_str!("../../migrations/postgres/0004_bounces.sql"),
    ),
    (
        5,
        "attempt_templates",
        include_str!("../../migrations/postgres/0005_attempt_templates.sql"),
    ),
    (
        6,
        "retention",
        include_str!("../../migrations/postgres/0006_retention.sql"),
    ),
    (
        7,
        "registered_addresses",
        include_str!("../../migrations/postgres/0007_registered_addresses.sql"),
    ),
];

impl Store {
    /// Connects to `url` (`sqlite://FILE` is created if missing).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let opts = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        for pragma in SQLITE_PRAGMAS {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        Ok(Self {
            pool,
            backend,
            url: url.as_str().into(),
            writer: Default::default(),
        })
    }

    /// The database URL (may hold a password: never print it).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for read queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    fn migrator(&self) -> Migrator {
        let list = match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
        };
        Migrator::with_migrations(
            list.iter()
                .map(|(v, d, sql)| {
                    Migration::new(
                        *v,
                        (*d).into(),
                        MigrationType::Simple,
                        sqlx::SqlSafeStr::into_sql_str(*sql),
                        false,
                    )
                })
                .collect(),
        )
    }

    /// Applies pending migrations. A user without the right to create or
    /// alter tables gets [`StoreError::MayNotMigrate`]; even with nothing
    /// pending, sqlx begins with `CREATE TABLE IF NOT EXISTS
    /// _sqlx_migrations`, which PostgreSQL refuses such a user.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        use sqlx::migrate::MigrateError;
        self.migrator().run(&self.pool).await.map_err(|e| match &e {
            MigrateError::Execute(sqlx::Error::Database(d))
            | MigrateError::ExecuteMigration(sqlx::Error::Database(d), _)
                // insufficient_privilege: "permission denied for schema
                // public", "must be owner of table ...".
                if d.code().as_deref() == Some("42501") =>
            {
                StoreError::MayNotMigrate(d.message().to_owned())
            }
            _ => e.into(),
        })
    }

    /// Fails with [`StoreError::Behind`] when migrations are pending.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let latest = self.migrator().iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Vec<i64> =
            match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_all(&self.pool)
                .await
            {
                Ok(v) => v,
                // No migrations table at all: a fresh database, behind by everything.
                Err(sqlx::Error::Database(e))
                    if e.code().as_deref() == Some("42P01")
                        || e.message().contains("no such table") =>
                {
                    Vec::new()
                }
                // Anything else (connection, permissions) is not "behind": say what it is.
                Err(e) => return Err(e.into()),
            };
        // Every known migration must be applied, not only the newest: a
        // database migrated by a build that had a later migration but not
        // an earlier one is behind too.
        let mut known: Vec<i64> = self.migrator().iter().map(|m| m.version).collect();
        known.sort_unstable();
        let complete = known.iter().take_while(|v| applied.contains(v)).last();
        if complete != known.last() {
            // "At migration N": every migration up to N is applied.
            return Err(StoreError::Behind {
                current: complete.copied(),
                latest,
            });
        }
        Ok(())
    }

    /// Begins a write transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so a transaction that reads before it writes
    /// cannot fail half-way with SQLITE_BUSY.
    ///
    /// SQLite has one writer at a time. Left to SQLite, a second writer
    /// polls for the lock with growing sleeps (its busy handler) and a busy
    /// one that commits and begins again at once wins every time: under a
    /// steady ingest the dispatcher waited seconds for its claim. Writers of
    /// this process therefore queue for their turn here, in order, and only
    /// other processes (short commands) meet the busy handler.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => {
                let turn = self.writer.clone().lock_owned().await;
                Tx {
                    tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
                    _turn: Some(turn),
                }
            }
            Backend::Postgres => Tx {
                tx: self.pool.begin().await?,
                _turn: None,
            },
        })
    }

    /// A transaction that only reads (a consistent snapshot); it never
    /// waits for a writer's turn.
    pub async fn begin_read(&self) -> Result<Tx, StoreError> {
        Ok(Tx {
            tx: self.pool.begin().await?,
            _turn: None,
        })
    }

    /// Answers when the database does (for readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Runs a `SELECT <key> AS k, COUNT(*) AS n ... WHERE <time> >= $1 GROUP BY ...` count query.
async fn counts_since(
    conn: &mut sqlx::AnyConnection,
    sql: &'static str,
    since_ms: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    use sqlx::Row;
    let rows = sqlx::query(sql)
        .bind(since_ms)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("k")?, r.try_get("n")?)))
        .collect()
}

/// Epoch milliseconds of an instant.
pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The instant of epoch milliseconds.
pub fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The file of a `sqlite://FILE` URL (`None` for PostgreSQL or an in-memory database).
pub fn sqlite_path(database_url: &str) -> Option<String> {
    let rest = database_url.strip_prefix("sqlite:")?;
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && !path.contains(":memory:")).then(|| path.to_owned())
}

/// Guards against two `notifier run` processes on one SQLite file: an
/// exclusive OS lock on `<file>.run.lock`, held for the process's life.
pub struct RunLock {
    _file: Option<std::fs::File>,
}

impl RunLock {
    /// Takes the lock for `database_url`; a no-op for PostgreSQL, where
    /// several instances are the point.
    pub fn acquire(database_url: &str) -> Result<Self, StoreError> {
        let Some(path) = sqlite_path(database_url) else {
            return Ok(Self { _file: None });
        };
        let lock_path = format!("{path}.run.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Locked(format!("cannot open {lock_path}: {e}")))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: Some(file) }),
            Err(_) => Err(StoreError::Locked(format!(
                "another `notifier run` is already using {path} (lock {lock_path} is held); \
                 SQLite serves one instance: stop the other one, or use PostgreSQL for several"
            ))),
        }
    }
}
