//! Export and import of a whole database as JSON lines, to move an
//! installation between backends (SQLite → PostgreSQL) without losing
//! deliveries or history.
//!
//! The file: one header line, then one JSON object a line for every row of
//! every table, in foreign-key order. Each row names its `table`; its other
//! fields are the columns. Integers stay integers, bytes are base64, NULL is
//! `null`. The header carries the schema version (the last migration applied)
//! and the row count of every table, read in the same snapshot as the rows,
//! so a truncated file is noticed on import.
//!
//! The table list below is the schema as this code knows it. Export refuses a
//! database with a table or column it does not list, so a new migration
//! cannot be left out of a move silently: extend [`TABLES`] with it.

use super::{Backend, MAX_PARAMS, Store, StoreError, Tx};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::TryStreamExt;
use serde_json::{Map, Value, json};
use sqlx::Row;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};

/// The `format` written in the header; import refuses other values.
pub const FORMAT: &str = "zorginkoop-notifier-export/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Text,
    Bytes,
}

/// One table: its columns, the order rows are written in, and whether its
/// `id` comes from a sequence (PostgreSQL must be told the highest id after import).
struct Table {
    name: &'static str,
    order_by: &'static str,
    serial_id: bool,
    columns: &'static [(&'static str, Kind)],
}

use Kind::{Bytes, Int, Text};

/// Every table, parents before children.
const TABLES: &[Table] = &[
    Table {
        name: "events",
        order_by: "id",
        serial_id: false,
        columns: &[
            ("id", Text),
            ("type", Text),
            ("agb_code", Text),
            ("occurred_at", Int),
            ("received_at", Int),
            ("payload", Text),
            ("state", Text),
            ("detail", Text),
            ("purged_at", Int),
        ],
    },
    Table {
        name: "quarantine",
        order_by: "id",
        serial_id: true,
        columns: &[
            ("id", Int),
            ("received_at", Int),
            ("source", Text),
            ("routing_key", Text),
            ("event_id", Text),
            ("event_type", Text),
            ("reason", Text),
            ("size", Int),
            ("raw", Bytes),
            ("state", Text),
            ("redrives", Int),
            ("last_redrive_at", Int),
            ("purged_at", Int),
        ],
    },
    Table {
        name: "users",
        order_by: "gebruikersnummer",
        serial_id: false,
        columns: &[
            ("gebruikersnummer", Text),
            ("naam", Text),
            ("email", Text),
            ("status", Text),
            ("versie", Int),
            ("updated_at", Int),
            ("email_registered", Text),
        ],
    },
    Table {
        name: "user_links",
        order_by: "gebruikersnummer, agb_code",
        serial_id: false,
        columns: &[
            ("gebruikersnummer", Text),
            ("agb_code", Text),
            ("rechten", Text),
            ("tekenbevoegd", Int),
            ("contactpersoon", Int),
        ],
    },
    Table {
        name: "organisations",
        order_by: "agb_code",
        serial_id: false,
        columns: &[
            ("agb_code", Text),
            ("naam", Text),
            ("versie", Int),
            ("updated_at", Int),
        ],
    },
    Table {
        name: "directory_log",
        order_by: "id",
        serial_id: true,
        columns: &[
            ("id", Int),
            ("at", Int),
            ("source", Text),
            ("subject", Text),
            ("outcome", Text),
        ],
    },
    Table {
        name: "deliveries",
        order_by: "id",
        serial_id: false,
        columns: &[
            ("id", Text),
            ("event_id", Text),
            ("kind", Text),
            ("about", Text),
            ("address", Text),
            ("sent_to", Text),
            ("rule", Text),
            ("notice", Text),
            ("status", Text),
            ("attempts", Int),
            ("retry_step", Int),
            ("due_at", Int),
            ("deadline", Int),
            ("lease_until", Int),
            ("lease_owner", Text),
            ("message_id", Text),
            ("created_at", Int),
            ("sent_at", Int),
            ("last_error", Text),
            ("policy_rejections", Int),
            ("claimed_address", Text),
            ("address_registered", Text),
        ],
    },
    Table {
        name: "delivery_users",
        order_by: "delivery_id, gebruikersnummer",
        serial_id: false,
        columns: &[
            ("delivery_id", Text),
            ("gebruikersnummer", Text),
            ("versie", Int),
            ("rule", Text),
        ],
    },
    Table {
        name: "attempts",
        order_by: "delivery_id, started_at, n",
        serial_id: false,
        columns: &[
            ("delivery_id", Text),
            ("n", Int),
            ("started_at", Int),
            ("duration_ms", Int),
            ("outcome", Text),
            ("smtp_code", Int),
            ("enhanced_code", Text),
            ("detail", Text),
            ("checked_at", Int),
            ("template_source", Text),
            ("template_version", Text),
        ],
    },
    Table {
        name: "bounces",
        order_by: "id",
        serial_id: true,
        columns: &[
            ("id", Int),
            ("received_at", Int),
            ("sha256", Text),
            ("delivery_id", Text),
            ("outcome", Text),
            ("status", Text),
            ("diagnostic", Text),
            ("detail", Text),
            ("size", Int),
            ("raw", Bytes),
            ("purged_at", Int),
        ],
    },
    Table {
        name: "replays",
        order_by: "id",
        serial_id: true,
        columns: &[
            ("id", Int),
            ("at", Int),
            ("operator", Text),
            ("reason", Text),
            ("command", Text),
            ("filters", Text),
            ("counts", Text),
        ],
    },
];

/// Why an export or import stopped. Nothing was written to the target of an
/// import that failed: it runs in one transaction.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(String),
    /// The file is not a complete export of a matching schema.
    #[error("{0}")]
    BadFile(String),
    /// The target already holds data.
    #[error(
        "the target database is not empty ({0}); import only into a freshly migrated database, so nothing is mixed or overwritten"
    )]
    NotEmpty(String),
    /// The database has tables or columns this version cannot carry over.
    #[error("{0}")]
    UnknownSchema(String),
}

impl From<sqlx::Error> for TransferError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Db(e))
    }
}

/// Rows per table, in table order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(pub Vec<(String, u64)>);

impl Counts {
    /// The rows of `table`.
    pub fn get(&self, table: &str) -> u64 {
        self.0
            .iter()
            .find(|(t, _)| t == table)
            .map_or(0, |(_, n)| *n)
    }

    /// All rows.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(t, n)| format!("{t} {n}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub rows: Counts,
    /// Deliveries that were `sending` in the source: imported as `pending`,
    /// due as they were, without a lease.
    pub leases_cleared: u64,
    pub schema_version: i64,
}

/// The last migration applied to `store`'s database.
async fn schema_version(conn: &mut sqlx::AnyConnection) -> Result<i64, StoreError> {
    let v: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_one(&mut *conn)
            .await?;
    Ok(v.unwrap_or(0))
}

/// Refuses a database whose tables or columns differ from [`TABLES`].
async fn check_known_schema(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
) -> Result<(), TransferError> {
    let sql = match backend {
        Backend::Sqlite => {
            "SELECT m.name AS t, p.name AS c FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'"
        }
        Backend::Postgres => {
            "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'"
        }
    };
    let rows = sqlx::query(sql).fetch_all(&mut *conn).await?;
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &rows {
        found
            .entry(r.try_get("t")?)
            .or_default()
            .push(r.try_get("c")?);
    }
    let mut unknown = Vec::new();
    for (table, cols) in &found {
        match TABLES.iter().find(|t| t.name == table) {
            None => unknown.push(format!("table {table}")),
            Some(t) => {
                for c in cols {
                    if !t.columns.iter().any(|(name, _)| name == c) {
                        unknown.push(format!("column {table}.{c}"));
                    }
                }
            }
        }
    }
    if !unknown.is_empty() {
        return Err(TransferError::UnknownSchema(format!(
            "this version of notifier does not know {} and would leave it out of the move; \
             use the notifier version that created the schema (or add it to src/store/transfer.rs)",
            unknown.join(", ")
        )));
    }
    Ok(())
}

fn io(what: &str, e: std::io::Error) -> TransferError {
    TransferError::Io(format!("{what}: {e}"))
}

/// Writes every table of `store` to `out`; returns the rows per table.
///
/// The rows are read in one transaction, so the file is one consistent
/// snapshot even if something writes meanwhile (stop `notifier run` anyway:
/// what it does after the snapshot is not in the file).
pub async fn export(store: &Store, out: &mut dyn Write) -> Result<Counts, TransferError> {
    let mut tx: Tx = store.begin_read().await?;
    if store.backend() == Backend::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
    }
    check_known_schema(&mut tx, store.backend()).await?;
    let version = schema_version(&mut tx).await?;
    let mut counts = Vec::new();
    for t in TABLES {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {}",
            t.name
        )))
        .fetch_one(&mut *tx)
        .await?;
        counts.push((t.name.to_owned(), n as u64));
    }
    let header = json!({
        "format": FORMAT,
        "schema_version": version,
        "source_backend": match store.backend() { Backend::Sqlite => "sqlite", Backend::Postgres => "postgres" },
        "exported_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "tables": counts.iter().map(|(t, n)| (t.clone(), json!(n))).collect::<Map<_, _>>(),
    });
    writeln!(out, "{header}").map_err(|e| io("writing the export", e))?;
    for t in TABLES {
        let cols: Vec<&str> = t.columns.iter().map(|(c, _)| *c).collect();
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}",
            cols.join(", "),
            t.name,
            t.order_by
        );
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *tx);
        while let Some(r) = rows.try_next().await? {
            let mut obj = Map::new();
            obj.insert("table".into(), t.name.into());
            for (i, (c, kind)) in t.columns.iter().enumerate() {
                let v = match kind {
                    Int => json!(r.try_get::<Option<i64>, _>(i)?),
                    Text => json!(r.try_get::<Option<String>, _>(i)?),
                    Bytes => json!(
                        r.try_get::<Option<Vec<u8>>, _>(i)?
                            .map(|b| BASE64.encode(b))
                    ),
                };
                obj.insert((*c).into(), v);
            }
            writeln!(out, "{}", Value::Object(obj)).map_err(|e| io("writing the export", e))?;
        }
    }
    out.flush().map_err(|e| io("writing the export", e))?;
    tx.commit().await?;
    Ok(Counts(counts))
}

/// One column value ready to bind.
enum Cell {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

fn bad(line: usize, reason: impl std::fmt::Display) -> TransferError {
    TransferError::BadFile(format!("line {line}: {reason}"))
}

fn cells(t: &Table, mut obj: Map<String, Value>, line: usize) -> Result<Vec<Cell>, TransferError> {
    obj.remove("table");
    let mut out = Vec::with_capacity(t.columns.len());
    for (c, kind) in t.columns {
        let v = obj
            .remove(*c)
            .ok_or_else(|| bad(line, format!("{} row without column {c}", t.name)))?;
        let wrong = || bad(line, format!("{}.{c}: unexpected value {v}", t.name));
        out.push(match (kind, &v) {
            (Int, Value::Null) => Cell::Int(None),
            (Int, Value::Number(n)) => Cell::Int(Some(n.as_i64().ok_or_else(wrong)?)),
            (Text, Value::Null) => Cell::Text(None),
            (Text, Value::String(s)) => Cell::Text(Some(s.clone())),
            (Bytes, Value::Null) => Cell::Bytes(None),
            (Bytes, Value::String(s)) => Cell::Bytes(Some(BASE64.decode(s).map_err(|_| wrong())?)),
            _ => return Err(wrong()),
        });
    }
    if let Some(extra) = obj.keys().next() {
        return Err(bad(
            line,
            format!(
                "{} row has column {extra}, which this version does not know",
                t.name
            ),
        ));
    }
    Ok(out)
}

/// A delivery that was being sent when the source stopped belongs to no
/// dispatcher in the target: it becomes `pending` without a lease, due as it
/// was, so the first `run` claims it. Returns whether it was changed.
fn clear_lease(t: &Table, row: &mut [Cell]) -> bool {
    if t.name != "deliveries" {
        return false;
    }
    let col = |name: &str| t.columns.iter().position(|(c, _)| *c == name).unwrap();
    let mut changed = false;
    if let Cell::Text(Some(s)) = &mut row[col("status")]
        && s == "sending"
    {
        *s = "pending".into();
        changed = true;
    }
    row[col("lease_until")] = Cell::Int(None);
    row[col("lease_owner")] = Cell::Text(None);
    changed
}

async fn insert_rows(tx: &mut Tx, t: &Table, rows: &mut Vec<Vec<Cell>>) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let n = t.columns.len();
    let cols: Vec<&str> = t.columns.iter().map(|(c, _)| *c).collect();
    for chunk in rows.chunks(MAX_PARAMS / n) {
        let values: Vec<String> = (0..chunk.len())
            .map(|r| {
                let ps: Vec<String> = (1..=n).map(|c| format!("${}", r * n + c)).collect();
                format!("({})", ps.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES {}",
            t.name,
            cols.join(", "),
            values.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            for cell in row {
                q = match cell {
                    Cell::Int(v) => q.bind(*v),
                    Cell::Text(v) => q.bind(v.clone()),
                    Cell::Bytes(v) => q.bind(v.clone()),
                };
            }
        }
        q.execute(&mut **tx).await?;
    }
    rows.clear();
    Ok(())
}

/// Tables of `tx`'s database that hold rows, as `name N` for the message.
async fn non_empty(tx: &mut Tx) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for t in TABLES {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {}",
            t.name
        )))
        .fetch_one(&mut **tx)
        .await?;
        if n > 0 {
            out.push(format!("{} has {n} rows", t.name));
        }
    }
    Ok(out)
}

/// Reads an export into `store`, which must be migrated to the same schema
/// version and empty. All or nothing: one transaction.
pub async fn import(store: &Store, input: &mut dyn BufRead) -> Result<ImportReport, TransferError> {
    let mut lines = input.lines().enumerate().map(|(i, l)| (i + 1, l));
    let header = read_header(lines.next())?;
    let file_version = header["schema_version"]
        .as_i64()
        .ok_or_else(|| bad(1, "header without schema_version"))?;

    let mut tx = store.begin().await?;
    let target_version = check_target(&mut tx, store.backend(), file_version).await?;
    let mut report = ImportReport {
        schema_version: target_version,
        ..Default::default()
    };
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut current: Option<&Table> = None;
    let mut pending: Vec<Vec<Cell>> = Vec::new();
    for (n, line) in lines {
        let line = line.map_err(|e| io("reading the export", e))?;
        if line.trim().is_empty() {
            continue;
        }
        let (t, obj) = table_row(&line, n)?;
        if let Some(c) = current.filter(|c| c.name != t.name) {
            insert_rows(&mut tx, c, &mut pending).await?;
        }
        current = Some(t);
        let mut row = cells(t, obj, n)?;
        if clear_lease(t, &mut row) {
            report.leases_cleared += 1;
        }
        pending.push(row);
        *counts.entry(t.name).or_default() += 1;
        if pending.len() >= 2_000 {
            insert_rows(&mut tx, t, &mut pending).await?;
        }
    }
    if let Some(t) = current {
        insert_rows(&mut tx, t, &mut pending).await?;
    }
    report.rows = Counts(promised_rows(&header, &counts)?);
    if store.backend() == Backend::Postgres {
        advance_sequences(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(report)
}

/// Line 1: the export's header, or why this is not an export.
fn read_header(first: Option<(usize, std::io::Result<String>)>) -> Result<Value, TransferError> {
    let header = match first {
        Some((_, Ok(l))) => serde_json::from_str::<Value>(&l).ok(),
        Some((_, Err(e))) => return Err(io("reading the export", e)),
        None => None,
    };
    header.filter(|h| h["format"] == FORMAT).ok_or_else(|| {
        TransferError::BadFile(format!(
            "line 1: not a notifier export (expected a header with \"format\": \"{FORMAT}\"; make the file with `notifier export`)"
        ))
    })
}

/// The target is a notifier database of the file's schema version, and
/// empty; returns its schema version.
async fn check_target(
    tx: &mut super::Tx,
    backend: Backend,
    file_version: i64,
) -> Result<i64, TransferError> {
    check_known_schema(tx, backend).await?;
    let target_version = schema_version(tx).await?;
    if file_version != target_version {
        return Err(TransferError::BadFile(format!(
            "the export has schema version {file_version}, the target database {target_version}; \
             migrate both with this notifier version (`notifier migrate` on the source, then export again)"
        )));
    }
    let full = non_empty(tx).await?;
    if !full.is_empty() {
        return Err(TransferError::NotEmpty(full.join(", ")));
    }
    Ok(target_version)
}

/// One line of rows: its table and its columns.
fn table_row(line: &str, n: usize) -> Result<(&'static Table, Map<String, Value>), TransferError> {
    let obj = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(o)) => o,
        _ => return Err(bad(n, "not a JSON object")),
    };
    let name = obj
        .get("table")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(n, "row without \"table\""))?;
    let t = TABLES
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| bad(n, format!("unknown table {name:?}")))?;
    Ok((t, obj))
}

/// A truncated or edited file is refused: every table must have the rows
/// the header promised.
fn promised_rows(
    header: &Value,
    counts: &BTreeMap<&str, u64>,
) -> Result<Vec<(String, u64)>, TransferError> {
    let mut rows = Vec::new();
    for t in TABLES {
        let want = header["tables"][t.name].as_u64().unwrap_or(0);
        let got = counts.get(t.name).copied().unwrap_or(0);
        if want != got {
            return Err(TransferError::BadFile(format!(
                "the file is incomplete: its header promises {want} rows of {}, it holds {got}; nothing was imported",
                t.name
            )));
        }
        rows.push((t.name.to_owned(), got));
    }
    Ok(rows)
}

/// Ids were inserted as they were: each PostgreSQL sequence moves past the highest.
async fn advance_sequences(tx: &mut super::Tx) -> Result<(), TransferError> {
    for t in TABLES.iter().filter(|t| t.serial_id) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT setval(pg_get_serial_sequence('{0}', 'id'), COALESCE((SELECT MAX(id) FROM {0}), 0) + 1, false)",
            t.name
        )))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
