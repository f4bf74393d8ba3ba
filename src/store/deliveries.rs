//! The delivery queue: one row per mail (event × kind × address), claimed
//! under a lease, and an `attempts` row for every SMTP attempt.

use super::{Backend, Binds, MAX_PARAMS, StoreError, storable};
use crate::domain::delivery::{AttemptOutcome, DeliveryStatus, LogOutcome, MailKind, Unknown};
use crate::domain::directory::UserStatus;
use crate::domain::recipients::{PlannedDelivery, Rule, Rules};
use sqlx::{AnyConnection, Row};
use std::collections::HashMap;

/// The Message-ID of a delivery: stable across retries and replays, so a
/// repeated mail is recognisable downstream.
pub fn message_id_for(delivery_id: &str) -> String {
    format!("{delivery_id}@notifier.zorginkoopportaal")
}

/// Inserts a planned delivery and the users it serves; `None` when the same
/// (event, kind, address, about) already exists, or another delivery of the
/// event and kind has taken that address, so re-ingesting is harmless.
pub async fn insert_planned(
    conn: &mut AnyConnection,
    event_id: &str,
    p: &PlannedDelivery,
    now_ms: i64,
    due_ms: i64,
    deadline_ms: i64,
) -> Result<Option<String>, StoreError> {
    // One code path builds every new delivery row (see `store::planning`).
    let mut ids =
        super::planning::insert_planned_many(conn, event_id, &[p], now_ms, due_ms, deadline_ms)
            .await?;
    Ok(ids.pop().flatten())
}

/// Records `users` as served by delivery `id` (a user already on it stays).
async fn add_served(
    conn: &mut AnyConnection,
    id: &str,
    users: impl Iterator<Item = &crate::domain::recipients::Served>,
) -> Result<(), StoreError> {
    let pairs: Vec<_> = users.map(|u| (id, u)).collect();
    super::planning::add_served_many(conn, &pairs).await
}

/// A delivery claimed for sending.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub event_id: String,
    pub kind: Result<MailKind, Unknown>,
    pub about: String,
    /// Lower-cased: compared with the directory's addresses.
    pub address: String,
    /// `address` as registered when the delivery was planned (NULL in rows
    /// from before migration 0007 and in split-off deliveries).
    pub address_registered: Option<String>,
    pub rule: Result<Rules, Unknown>,
    pub notice: Option<String>,
    pub attempts: i64,
    pub retry_step: i64,
    pub deadline: i64,
    pub message_id: String,
    /// 5.7.x refusals at RCPT in this attempt cycle.
    pub policy_rejections: i64,
    /// The address this delivery has taken for its event and kind.
    pub claimed_address: Option<String>,
    /// How many users it serves (as planned; the re-check may drop some).
    pub served: i64,
}

impl Claimed {
    /// The stored kind name (for logs and metrics), known or not.
    pub fn kind_name(&self) -> &str {
        match &self.kind {
            Ok(k) => k.as_str(),
            Err(Unknown(name)) => name,
        }
    }
}

/// Claims up to `limit` due deliveries (pending and due, or sending with an
/// expired lease) for `owner` until `lease_until_ms`.
pub async fn claim(
    conn: &mut AnyConnection,
    backend: Backend,
    owner: &str,
    now_ms: i64,
    lease_until_ms: i64,
    limit: i64,
) -> Result<Vec<Claimed>, StoreError> {
    // PostgreSQL: SKIP LOCKED lets instances claim disjoint batches without
    // waiting on each other. SQLite has one writer at a time anyway.
    // The update finds the picked rows by primary key. As `id IN (SELECT id
    // FROM picked)` PostgreSQL, believing few rows pending (statistics lag
    // behind a bulk ingest), scanned every pending row against the picked
    // ones (120 ms for a batch out of 18,000).
    let (lock, picked) = match backend {
        Backend::Postgres => (
            "FOR UPDATE SKIP LOCKED",
            "id = ANY(ARRAY(SELECT id FROM picked))",
        ),
        Backend::Sqlite => ("", "id IN (SELECT id FROM picked)"),
    };
    // The batch is picked once, in a MATERIALIZED CTE. As a plain
    // `IN (SELECT ... LIMIT n)` PostgreSQL may re-run the subquery for each
    // candidate row (a semi-join rescan), and with ties in `due_at` each run
    // can pick different rows: one claim then took more than `limit`. The
    // outer condition is checked again because a row picked here may have been
    // claimed and committed by another instance in the meantime.
    //
    // Two picks, one condition each, so that each reads one range of the
    // (status, due_at) index: first the deliveries whose lease ran out
    // (their dispatcher died mid-send; few), then the pending ones that are
    // due. With both conditions OR-ed PostgreSQL read both through a bitmap.
    let picks = due_halves("", "$3");
    let mut rows = Vec::new();
    for cond in picks {
        let left = limit - rows.len() as i64;
        if left <= 0 {
            break;
        }
        let sql = format!(
            "WITH picked AS MATERIALIZED (SELECT id FROM deliveries \
                WHERE {cond} ORDER BY due_at, id LIMIT $4 {lock}) \
             UPDATE deliveries SET status = 'sending', lease_until = $1, lease_owner = $2 \
             WHERE {picked} AND {cond} \
             RETURNING id, event_id, kind, about, address, address_registered, rule, notice, attempts, retry_step, deadline, message_id, policy_rejections, claimed_address, \
                (SELECT COUNT(*) FROM delivery_users du WHERE du.delivery_id = deliveries.id) AS served"
        );
        rows.extend(
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(lease_until_ms)
                .bind(owner)
                .bind(now_ms)
                .bind(left)
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    rows.iter()
        .map(|r| {
            Ok(Claimed {
                id: r.try_get("id")?,
                event_id: r.try_get("event_id")?,
                kind: MailKind::parse_stored(r.try_get("kind")?),
                about: r.try_get("about")?,
                address: r.try_get("address")?,
                address_registered: r.try_get("address_registered")?,
                rule: Rules::parse(r.try_get("rule")?).ok_or_else(|| Unknown(r.get("rule"))),
                notice: r.try_get("notice")?,
                attempts: r.try_get("attempts")?,
                retry_step: r.try_get("retry_step")?,
                deadline: r.try_get("deadline")?,
                message_id: r.try_get("message_id")?,
                policy_rejections: r.try_get("policy_rejections")?,
                claimed_address: r.try_get("claimed_address")?,
                served: r.try_get("served")?,
            })
        })
        .collect()
}

/// A user a delivery serves, as the directory has it now.
#[derive(Debug, Clone)]
pub struct ServedNow {
    pub gebruikersnummer: String,
    pub rule: Rule,
    /// The directory version the user was chosen at.
    pub versie: i64,
    /// `None` when the user vanished from the directory.
    pub naam: Option<String>,
    /// The lower-cased address (what the delivery's address is compared with).
    pub email: Option<String>,
    /// The address as registered (what a mail is sent to), when the
    /// directory has it and it is the same address as `email`.
    pub email_registered: Option<String>,
    pub status: Option<UserStatus>,
}

impl ServedNow {
    /// True while the user's certificate is active.
    pub fn is_active(&self) -> bool {
        self.status == Some(UserStatus::Actief)
    }
}

/// The registered form of a stored address, when there is one and it is
/// the same address as the lower-cased `email` (see [`EmailAddress::stored`]).
///
/// [`EmailAddress::stored`]: crate::domain::ids::EmailAddress::stored
fn registered_form(email: Option<String>, registered: Option<String>) -> Option<String> {
    let email = email?;
    Some(
        crate::domain::ids::EmailAddress::stored(email, registered)
            .registered()
            .to_owned(),
    )
}

/// A stored rule label as a [`Rule`].
pub(crate) fn rule_of(label: &str) -> Result<Rule, StoreError> {
    Rule::parse(label).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "rule {label:?} is not one this version knows (written by a newer version?)"
        ))
    })
}

/// A stored user status as a [`UserStatus`].
pub(crate) fn user_status_of(word: Option<String>) -> Result<Option<UserStatus>, StoreError> {
    word.map(|w| {
        UserStatus::parse(&w).ok_or_else(|| {
            StoreError::Corrupt(format!("user status {w:?} is not one this version knows"))
        })
    })
    .transpose()
}

/// The users a delivery serves, joined with their current directory entry.
pub async fn served_users(
    conn: &mut AnyConnection,
    delivery_id: &str,
) -> Result<Vec<ServedNow>, StoreError> {
    Ok(served_users_of(conn, &[delivery_id])
        .await?
        .remove(delivery_id)
        .unwrap_or_default())
}

/// [`served_users`] of many deliveries at once (one statement per 500),
/// by delivery id; a delivery without served users is absent.
pub async fn served_users_of(
    conn: &mut AnyConnection,
    delivery_ids: &[&str],
) -> Result<HashMap<String, Vec<ServedNow>>, StoreError> {
    let mut by_delivery: HashMap<String, Vec<ServedNow>> = HashMap::new();
    for chunk in delivery_ids.chunks(500) {
        let sql = format!(
            // A lookup by primary key per served user, not a join: while
            // deliveries pour in, PostgreSQL's statistics of them lag, and a
            // planned join hashed the whole users table for every re-check
            // (37 ms each; docs/benchmarks.md).
            "SELECT du.delivery_id, du.gebruikersnummer, du.rule, du.versie, \
             (SELECT u.naam FROM users u WHERE u.gebruikersnummer = du.gebruikersnummer) AS naam, \
             (SELECT u.email FROM users u WHERE u.gebruikersnummer = du.gebruikersnummer) AS email, \
             (SELECT u.email_registered FROM users u WHERE u.gebruikersnummer = du.gebruikersnummer) AS email_registered, \
             (SELECT u.status FROM users u WHERE u.gebruikersnummer = du.gebruikersnummer) AS status \
             FROM delivery_users du \
             WHERE du.delivery_id IN ({}) ORDER BY du.delivery_id, du.gebruikersnummer",
            Binds::for_conn(conn).list(chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(*id);
        }
        for r in q.fetch_all(&mut *conn).await? {
            by_delivery
                .entry(r.try_get("delivery_id")?)
                .or_default()
                .push(ServedNow {
                    gebruikersnummer: r.try_get("gebruikersnummer")?,
                    rule: rule_of(r.try_get("rule")?)?,
                    versie: r.try_get("versie")?,
                    naam: r.try_get("naam")?,
                    email_registered: registered_form(
                        r.try_get("email")?,
                        r.try_get("email_registered")?,
                    ),
                    email: r.try_get("email")?,
                    status: user_status_of(r.try_get("status")?)?,
                });
        }
    }
    Ok(by_delivery)
}

/// The delivery of the same event, kind and about as `from` that has taken
/// `address`, with its status.
pub async fn holder_of_address(
    conn: &mut AnyConnection,
    from: &str,
    address: &str,
) -> Result<Option<(String, DeliveryStatus)>, StoreError> {
    let held: Option<(String, String)> = sqlx::query_as(
        "SELECT d.id, d.status FROM deliveries d JOIN deliveries o ON o.event_id = d.event_id AND o.kind = d.kind AND o.about = d.about \
         WHERE o.id = $1 AND d.claimed_address = $2",
    )
    .bind(from)
    .bind(address)
    .fetch_optional(&mut *conn)
    .await?;
    held.map(|(id, status)| Ok((id, status_of(&status)?)))
        .transpose()
}

/// A stored delivery status as a [`DeliveryStatus`].
pub(crate) fn status_of(word: &str) -> Result<DeliveryStatus, StoreError> {
    DeliveryStatus::parse(word).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "delivery status {word:?} is not one this version knows (written by a newer version?)"
        ))
    })
}

/// Makes the cancelled delivery of the same event, kind and about as `from`
/// that was planned for `address` pending again, due at `now_ms`, with the
/// address taken; returns its id. `None` when there is no such delivery
/// (one row per planned address: a cancelled one blocks a new one).
pub async fn revive_at_address(
    conn: &mut AnyConnection,
    from: &str,
    address: &str,
    now_ms: i64,
) -> Result<Option<String>, StoreError> {
    let revived = sqlx::query_scalar(
        "UPDATE deliveries SET status = 'pending', due_at = $1, claimed_address = $2, last_error = NULL \
         WHERE status = 'cancelled' AND address = $2 AND id IN (SELECT d.id FROM deliveries d JOIN deliveries o \
             ON o.event_id = d.event_id AND o.kind = d.kind AND o.about = d.about WHERE o.id = $3) \
         RETURNING id",
    )
    .bind(now_ms)
    .bind(address)
    .bind(from)
    .fetch_optional(&mut *conn)
    .await;
    match revived {
        Ok(id) => Ok(id),
        // Taken by another delivery after the caller looked for a holder
        // (another instance's split).
        Err(e) if is_unique_violation(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Moves the served `users` of delivery `from` onto delivery `to`.
pub async fn move_users(
    conn: &mut AnyConnection,
    from: &str,
    to: &str,
    users: &[&str],
) -> Result<(), StoreError> {
    for u in users {
        sqlx::query(
            "INSERT INTO delivery_users (delivery_id, gebruikersnummer, versie, rule) \
             SELECT $1, gebruikersnummer, versie, rule FROM delivery_users WHERE delivery_id = $2 AND gebruikersnummer = $3 \
             ON CONFLICT (delivery_id, gebruikersnummer) DO NOTHING",
        )
        .bind(to)
        .bind(from)
        .bind(*u)
        .execute(&mut *conn)
        .await?;
        sqlx::query("DELETE FROM delivery_users WHERE delivery_id = $1 AND gebruikersnummer = $2")
            .bind(from)
            .bind(*u)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Takes `address` for this delivery (the send-time re-check found its
/// users there) in one atomic step: `false` when another delivery of the
/// same event, kind and about has taken it, planned, in flight or sent. The
/// unique index on the taken address decides, so two deliveries racing for
/// one shared address cannot both win.
pub async fn claim_address(
    conn: &mut AnyConnection,
    delivery_id: &str,
    owner: &str,
    address: &str,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE deliveries SET claimed_address = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'sending'",
    )
    .bind(address)
    .bind(delivery_id)
    .bind(owner)
    .execute(&mut *conn)
    .await;
    match r {
        Ok(_) => Ok(true),
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// What one attempt recorded.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub started_at_ms: i64,
    /// When the send-time re-check began reading the directory that allowed
    /// this send (`None`: nothing was read, e.g. a general address).
    pub checked_at_ms: Option<i64>,
    pub duration_ms: i64,
    pub outcome: AttemptOutcome,
    pub smtp_code: Option<i64>,
    pub enhanced_code: Option<String>,
    pub detail: String,
    /// A 5.7.x refusal of the recipient at RCPT, counted toward the two
    /// retries such a refusal gets.
    pub policy_rejection: bool,
    /// Where the templates that rendered this mail came from: `builtin` or
    /// the `mail.templates_dir` path ([`crate::templates::Provenance`]).
    pub template_source: Option<String>,
    /// The hash of those templates, as `notifier templates check` prints it.
    pub template_version: Option<String>,
}

pub use crate::domain::delivery::Transition;

/// Records an attempt (if any) and moves the delivery on, only while `owner`
/// still holds its lease. Returns `false` when the lease was lost.
pub async fn finish(
    conn: &mut AnyConnection,
    delivery_id: &str,
    owner: &str,
    attempt: Option<&AttemptRecord>,
    next: &Transition,
) -> Result<bool, StoreError> {
    let one = Finish {
        delivery_id: delivery_id.to_owned(),
        attempt: attempt.cloned(),
        next: next.clone(),
    };
    let kept = finish_many(conn, owner, std::slice::from_ref(&one)).await?;
    Ok(kept.first().copied().unwrap_or(false))
}

/// One outcome to record with [`finish_many`].
#[derive(Debug, Clone)]
pub struct Finish {
    pub delivery_id: String,
    pub attempt: Option<AttemptRecord>,
    pub next: Transition,
}

/// [`finish`] for many deliveries in a few statements (group commit: the
/// caller commits them together). Every row is fenced on `owner`'s lease as
/// in `finish`; the answer says, per item in order, whether it was kept.
pub async fn finish_many(
    conn: &mut AnyConnection,
    owner: &str,
    items: &[Finish],
) -> Result<Vec<bool>, StoreError> {
    let mut kept: HashMap<&str, i64> = HashMap::with_capacity(items.len());
    let released: Vec<&str> = items
        .iter()
        .filter(|f| matches!(f.next, Transition::Released))
        .map(|f| f.delivery_id.as_str())
        .collect();
    for chunk in released.chunks(500) {
        kept.extend(release_many(conn, owner, chunk).await?);
    }
    let moving: Vec<&Finish> = items
        .iter()
        .filter(|f| !matches!(f.next, Transition::Released))
        .collect();
    for chunk in moving.chunks(MAX_PARAMS / MOVE_COLS) {
        kept.extend(move_many(conn, owner, chunk).await?);
    }
    let attempts: Vec<(&str, i64, &AttemptRecord)> = items
        .iter()
        .filter_map(|f| {
            let n = *kept.get(f.delivery_id.as_str())?;
            Some((f.delivery_id.as_str(), n, f.attempt.as_ref()?))
        })
        .collect();
    for chunk in attempts.chunks(MAX_PARAMS / ATTEMPT_COLS) {
        insert_attempts(conn, chunk).await?;
    }
    Ok(items
        .iter()
        .map(|f| kept.contains_key(f.delivery_id.as_str()))
        .collect())
}

/// Hands the deliveries `ids` back unsent where `owner` still holds them;
/// returns those kept, with their attempt counts.
async fn release_many<'a>(
    conn: &mut AnyConnection,
    owner: &str,
    ids: &[&'a str],
) -> Result<Vec<(&'a str, i64)>, StoreError> {
    let sql = release_sql(Binds::for_conn(conn), ids.len());
    let mut q = sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(sql)).bind(owner);
    for id in ids {
        q = q.bind(*id);
    }
    let rows = q.fetch_all(&mut *conn).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, n)| ids.iter().find(|c| **c == id).map(|c| (*c, n)))
        .collect())
}

/// The statement of [`release_many`] for `n` deliveries: the owner, then
/// the ids.
fn release_sql(mut b: Binds, n: usize) -> String {
    let owner_p = b.next();
    format!(
        "UPDATE deliveries SET status = 'pending', lease_until = NULL, lease_owner = NULL \
         WHERE status = 'sending' AND lease_owner = {owner_p} AND id IN ({}) RETURNING id, attempts",
        b.list(n)
    )
}

/// Nine values per row of [`move_sql`], and the id once more for its list.
const MOVE_COLS: usize = 10;

/// Moves each of `items` on to its next state where `owner` still holds
/// it; returns those kept, with their attempt counts after this one.
async fn move_many<'a>(
    conn: &mut AnyConnection,
    owner: &str,
    items: &[&'a Finish],
) -> Result<Vec<(&'a str, i64)>, StoreError> {
    let sql = move_sql(Binds::for_conn(conn), items.len());
    let mut q = sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(sql));
    for f in items {
        let c = Columns::of(&f.next);
        q = q
            .bind(f.delivery_id.as_str())
            .bind(c.status)
            .bind(c.due)
            .bind(c.step)
            .bind(c.err.map(storable))
            .bind(c.sent_to.map(str::to_owned))
            .bind(c.sent_at)
            .bind(i64::from(f.attempt.is_some()))
            .bind(i64::from(
                f.attempt.as_ref().is_some_and(|a| a.policy_rejection),
            ));
    }
    for f in items {
        q = q.bind(f.delivery_id.as_str());
    }
    q = q.bind(owner);
    let rows = q.fetch_all(&mut *conn).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, n)| {
            items
                .iter()
                .find(|f| f.delivery_id == id)
                .map(|f| (f.delivery_id.as_str(), n))
        })
        .collect())
}

/// The statement of [`move_many`] for `n` deliveries: a row of values per
/// delivery, the ids, then the owner.
fn move_sql(mut b: Binds, n: usize) -> String {
    // One row of values per delivery; the casts give PostgreSQL the
    // column types (NULLs included) that SQLite does not need.
    let values = (0..n)
        .map(|_| {
            let mut p = || b.next();
            format!(
                "({}, {}, CAST({} AS BIGINT), CAST({} AS BIGINT), CAST({} AS TEXT), CAST({} AS TEXT), CAST({} AS BIGINT), CAST({} AS BIGINT), CAST({} AS BIGINT))",
                p(), p(), p(), p(), p(), p(), p(), p(), p()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    // The ids once more as a list: the primary key then finds the rows
    // whatever the planner believes about the table. Without it,
    // PostgreSQL with stale statistics joined every `sending` row
    // against the values (25 ms for 50 finishes).
    let ids = b.list(n);
    let owner_p = b.next();
    format!(
        "WITH v (id, status, due, step, err, sent_to, sent_at, bump, policy) AS MATERIALIZED (VALUES {values}) \
         UPDATE deliveries SET status = v.status, due_at = COALESCE(v.due, deliveries.due_at), \
         retry_step = COALESCE(v.step, deliveries.retry_step), last_error = v.err, \
         sent_to = COALESCE(v.sent_to, deliveries.sent_to), sent_at = COALESCE(v.sent_at, deliveries.sent_at), \
         attempts = deliveries.attempts + v.bump, policy_rejections = deliveries.policy_rejections + v.policy, \
         lease_until = NULL, lease_owner = NULL, \
         claimed_address = CASE WHEN v.status = 'cancelled' THEN NULL ELSE deliveries.claimed_address END \
         FROM v WHERE deliveries.id = v.id AND deliveries.id IN ({ids}) \
         AND deliveries.status = 'sending' AND deliveries.lease_owner = {owner_p} \
         RETURNING deliveries.id, deliveries.attempts"
    )
}

/// Values per row of [`attempts_sql`].
const ATTEMPT_COLS: usize = 11;

/// Records the attempts `(delivery id, attempt number, attempt)`.
async fn insert_attempts(
    conn: &mut AnyConnection,
    attempts: &[(&str, i64, &AttemptRecord)],
) -> Result<(), StoreError> {
    let sql = attempts_sql(Binds::for_conn(conn), attempts.len());
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (id, n, a) in attempts {
        q = q
            .bind(*id)
            .bind(*n)
            .bind(a.started_at_ms)
            .bind(a.duration_ms)
            .bind(a.outcome.as_str())
            .bind(a.smtp_code)
            .bind(a.enhanced_code.as_deref().map(storable))
            .bind(storable(&truncate(&a.detail, 1000)))
            .bind(a.checked_at_ms)
            .bind(a.template_source.as_deref().map(storable))
            .bind(a.template_version.as_deref().map(storable));
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

/// The statement of [`insert_attempts`] for `n` attempts.
fn attempts_sql(mut b: Binds, n: usize) -> String {
    let values = (0..n)
        .map(|_| b.row(ATTEMPT_COLS))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO attempts (delivery_id, n, started_at, duration_ms, outcome, smtp_code, enhanced_code, detail, checked_at, \
         template_source, template_version) VALUES {values}"
    )
}

/// The columns a transition writes (`None`: left as it is, for the
/// COALESCEd ones).
struct Columns<'a> {
    status: &'static str,
    due: Option<i64>,
    step: Option<i64>,
    err: Option<&'a str>,
    sent_to: Option<&'a str>,
    sent_at: Option<i64>,
}

impl<'a> Columns<'a> {
    fn of(t: &'a Transition) -> Self {
        let none = |status| Columns {
            status,
            due: None,
            step: None,
            err: None,
            sent_to: None,
            sent_at: None,
        };
        match t {
            Transition::Sent { sent_to, at_ms } => Columns {
                sent_to: Some(sent_to),
                sent_at: Some(*at_ms),
                ..none("sent")
            },
            Transition::Retry {
                due_ms,
                retry_step,
                error,
                sent_to,
            } => Columns {
                due: Some(*due_ms),
                step: Some(*retry_step),
                err: Some(error),
                sent_to: sent_to.as_deref(),
                ..none("pending")
            },
            Transition::Failed { error, sent_to } => Columns {
                err: Some(error),
                sent_to: sent_to.as_deref(),
                ..none("failed")
            },
            Transition::Cancelled { reason } => Columns {
                err: Some(reason),
                ..none("cancelled")
            },
            Transition::Released => none("pending"),
        }
    }
}

/// The relay turned out to refuse us, not the recipients: deliveries already
/// recorded as refused at RCPT in that run get back the retry step and the
/// policy count that refusal took, their last attempt becomes a relay fault,
/// and they are due when the circuit probes again.
pub async fn undo_policy_rejections(
    conn: &mut AnyConnection,
    ids: &[String],
    due_ms: i64,
) -> Result<u64, StoreError> {
    let mut n = 0;
    for id in ids {
        // Only while the last attempt still stands as a recipient's refusal,
        // so that undoing twice (the run's last delivery and a late finish
        // of an earlier one both may) changes nothing the second time.
        let changed = sqlx::query(
            "UPDATE deliveries SET retry_step = retry_step - 1, policy_rejections = policy_rejections - 1, due_at = $1 \
             WHERE id = $2 AND status = 'pending' AND policy_rejections > 0 AND retry_step > 0 \
             AND EXISTS (SELECT 1 FROM attempts a WHERE a.delivery_id = deliveries.id \
                 AND a.n = deliveries.attempts AND a.outcome = 'permanent')",
        )
        .bind(due_ms)
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if changed > 0 {
            sqlx::query(
                "UPDATE attempts SET outcome = 'relay_fault' \
                 WHERE delivery_id = $1 AND n = (SELECT attempts FROM deliveries WHERE id = $1)",
            )
            .bind(id)
            .execute(&mut *conn)
            .await?;
        }
        n += changed;
    }
    Ok(n)
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Extends the leases of `ids` that `owner` still holds until
/// `lease_until_ms`; returns how many it extended.
pub async fn renew_leases(
    conn: &mut AnyConnection,
    owner: &str,
    ids: &[String],
    lease_until_ms: i64,
) -> Result<u64, StoreError> {
    let mut n = 0;
    for chunk in ids.chunks(500) {
        let list = (0..chunk.len())
            .map(|i| format!("${}", i + 3))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE deliveries SET lease_until = $1 \
             WHERE status = 'sending' AND lease_owner = $2 AND id IN ({list})"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(lease_until_ms)
            .bind(owner);
        for id in chunk {
            q = q.bind(id.as_str());
        }
        n += q.execute(&mut *conn).await?.rows_affected();
    }
    Ok(n)
}

/// How many of `ids` are leased to an owner other than `owner`.
pub async fn held_by_others(
    conn: &mut AnyConnection,
    owner: &str,
    ids: &[String],
) -> Result<usize, StoreError> {
    let mut n = 0;
    for chunk in ids.chunks(500) {
        let list = (0..chunk.len())
            .map(|i| format!("${}", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT COUNT(*) FROM deliveries WHERE status = 'sending' AND lease_owner <> $1 AND id IN ({list})"
        );
        let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).bind(owner);
        for id in chunk {
            q = q.bind(id.as_str());
        }
        n += q.fetch_one(&mut *conn).await? as usize;
    }
    Ok(n)
}

/// Gives back every lease `owner` holds (graceful shutdown): the deliveries
/// are due again at once for the next run.
pub async fn release_leases(conn: &mut AnyConnection, owner: &str) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE deliveries SET status = 'pending', lease_until = NULL, lease_owner = NULL \
         WHERE status = 'sending' AND lease_owner = $1",
    )
    .bind(owner)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Cancels pending deliveries that serve this user and no other active user.
pub async fn cancel_for_revoked(
    conn: &mut AnyConnection,
    gebruikersnummer: &str,
    reason: &str,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE deliveries SET status = 'cancelled', last_error = $1, claimed_address = NULL \
         WHERE status = 'pending' \
         AND id IN (SELECT delivery_id FROM delivery_users WHERE gebruikersnummer = $2) \
         AND NOT EXISTS (SELECT 1 FROM delivery_users du JOIN users u ON u.gebruikersnummer = du.gebruikersnummer \
             WHERE du.delivery_id = deliveries.id AND u.status = 'actief')",
    )
    .bind(reason)
    .bind(gebruikersnummer)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

fn rules_label<S: serde::Serializer>(r: &Rules, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&r.label())
}

/// A delivery as listed for operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryRow {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub kind: String,
    pub agb_code: Option<String>,
    pub recipient: String,
    /// The rules that chose the address; displayed as `Rules::label`.
    #[serde(serialize_with = "rules_label")]
    pub rule: Rules,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub message_id: String,
    pub created_at: i64,
    pub due_at: i64,
    pub deadline: i64,
    pub sent_at: Option<i64>,
    pub last_error: Option<String>,
    pub about: String,
    /// The template source of the delivery's last SMTP attempt (`None`:
    /// no attempt yet, or one recorded before schema version 5).
    pub template_source: Option<String>,
    /// The template version of that attempt.
    pub template_version: Option<String>,
    /// Its event was purged by retention: `recipient` reads `(purged)`,
    /// and a replay refuses it.
    pub purged: bool,
}

/// What a listing shows as the recipient of a delivery whose event was purged.
pub const PURGED_RECIPIENT: &str = "(purged)";

/// Filters for listing deliveries.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub event_id: Option<String>,
    pub status: Option<DeliveryStatus>,
    pub agb_code: Option<String>,
    pub event_type: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: Option<i64>,
}

/// Deliveries matching `f`, oldest first.
pub async fn list(
    conn: &mut AnyConnection,
    f: &DeliveryFilter,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let mut w = super::filter::Where::for_conn(conn);
    if let Some(v) = &f.event_id {
        w.text("d.event_id", "=", v);
    }
    if let Some(v) = f.status {
        w.text("d.status", "=", v.as_str());
    }
    if let Some(v) = &f.agb_code {
        w.text("e.agb_code", "=", v);
    }
    if let Some(v) = &f.event_type {
        w.text("e.type", "=", v);
    }
    if let Some(v) = f.since_ms {
        w.int("d.created_at", ">=", v);
    }
    if let Some(v) = f.until_ms {
        w.int("d.created_at", "<", v);
    }
    let limit = f.limit.map(|l| format!(" LIMIT {l}")).unwrap_or_default();
    // The last SMTP attempt is the one numbered with the attempt count: an
    // attempt takes the count it raises as its number, and the count never
    // goes down. One lookup by the (delivery_id, n) index; reports read back
    // (no number) never match.
    let sql = format!(
        "SELECT d.id, d.event_id, e.type AS event_type, d.kind, e.agb_code, \
         CASE WHEN e.purged_at IS NULL THEN COALESCE(d.sent_to, d.address) ELSE '{PURGED_RECIPIENT}' END AS recipient, \
         d.rule, d.status, d.attempts, d.message_id, d.created_at, d.due_at, d.deadline, d.sent_at, d.last_error, d.about, \
         la.template_source, la.template_version, e.purged_at \
         FROM deliveries d JOIN events e ON e.id = d.event_id \
         LEFT JOIN attempts la ON la.delivery_id = d.id AND la.n = d.attempts{} \
         ORDER BY d.created_at, d.id{limit}",
        w.clause()
    );
    let q = w.bind(sqlx::query(sqlx::AssertSqlSafe(sql)));
    let rows = q.fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|r| {
            Ok(DeliveryRow {
                id: r.try_get("id")?,
                event_id: r.try_get("event_id")?,
                event_type: r.try_get("event_type")?,
                kind: r.try_get("kind")?,
                agb_code: r.try_get("agb_code")?,
                recipient: r.try_get("recipient")?,
                rule: Rules::parse(r.try_get("rule")?).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "delivery rule {:?} is not one this version knows",
                        r.get::<String, _>("rule")
                    ))
                })?,
                status: status_of(r.try_get("status")?)?,
                attempts: r.try_get("attempts")?,
                message_id: r.try_get("message_id")?,
                created_at: r.try_get("created_at")?,
                due_at: r.try_get("due_at")?,
                deadline: r.try_get("deadline")?,
                sent_at: r.try_get("sent_at")?,
                last_error: r.try_get("last_error")?,
                about: r.try_get("about")?,
                template_source: r.try_get("template_source")?,
                template_version: r.try_get("template_version")?,
                purged: r.try_get::<Option<i64>, _>("purged_at")?.is_some(),
            })
        })
        .collect()
}

/// One attempt-log entry as shown to operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttemptRow {
    /// The attempt number; `None` for a report read back (a bounce, a delay).
    pub n: Option<i64>,
    pub started_at: i64,
    pub duration_ms: i64,
    pub outcome: LogOutcome,
    pub smtp_code: Option<i64>,
    pub enhanced_code: Option<String>,
    pub detail: Option<String>,
    pub checked_at: Option<i64>,
    /// Where the templates that rendered the mail came from (`None` for a
    /// report read back, and for attempts recorded before schema version 5).
    pub template_source: Option<String>,
    /// The hash of those templates (12 hex characters).
    pub template_version: Option<String>,
}

/// The attempt log of one delivery, in the order it happened.
pub async fn attempts(
    conn: &mut AnyConnection,
    delivery_id: &str,
) -> Result<Vec<AttemptRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT n, started_at, duration_ms, outcome, smtp_code, enhanced_code, detail, checked_at, template_source, template_version \
         FROM attempts WHERE delivery_id = $1 ORDER BY started_at, n",
    )
    .bind(delivery_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AttemptRow {
                n: r.try_get("n")?,
                started_at: r.try_get("started_at")?,
                duration_ms: r.try_get("duration_ms")?,
                outcome: {
                    let word: String = r.try_get("outcome")?;
                    LogOutcome::parse(&word).ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "attempt outcome {word:?} is not one this version knows"
                        ))
                    })?
                },
                smtp_code: r.try_get("smtp_code")?,
                enhanced_code: r.try_get("enhanced_code")?,
                detail: r.try_get("detail")?,
                checked_at: r.try_get("checked_at")?,
                template_source: r.try_get("template_source")?,
                template_version: r.try_get("template_version")?,
            })
        })
        .collect()
}

/// The two halves of "due at `at`" (a dispatcher may take the delivery
/// then), for the table prefix `t` (`""` or `"d."`): claimed under a lease
/// that ran out (its dispatcher died mid-send), or pending and its time
/// has come. The claim, the dispatch-lag gauge and the reconciliation
/// (`check`, `notifier_stuck_events`) all ask this one question.
fn due_halves(t: &str, at: &str) -> [String; 2] {
    [
        format!("{t}status = 'sending' AND {t}lease_until < {at}"),
        format!("{t}status = 'pending' AND {t}due_at <= {at}"),
    ]
}

/// [`due_halves`] as one condition.
fn due(t: &str, at: &str) -> String {
    let [expired, pending] = due_halves(t, at);
    format!("(({expired}) OR ({pending}))")
}

/// How far dispatch is behind: the time since the oldest delivery became due
/// and is still not sent (pending and due, or claimed under an expired lease).
/// Deliveries waiting for a retry time in the future do not count.
pub async fn oldest_overdue(
    conn: &mut AnyConnection,
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT MIN(due_at) FROM deliveries WHERE {}",
        due("", "$1")
    )))
    .bind(now_ms)
    .fetch_one(&mut *conn)
    .await?)
}

/// The count of deliveries not yet final, and when the oldest of them was created.
pub async fn pending_summary(conn: &mut AnyConnection) -> Result<(i64, Option<i64>), StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM deliveries WHERE status IN ('pending', 'sending')",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok((row.try_get("n")?, row.try_get("oldest")?))
}

/// True when a `beheer.onbestelbaar` about this user, for an event of this
/// AGB code, was created since `since_ms`.
pub async fn recent_undeliverable_notice(
    conn: &mut AnyConnection,
    gebruikersnummer: &str,
    agb_code: &str,
    since_ms: i64,
) -> Result<bool, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.kind = 'beheer.onbestelbaar' AND d.about = $1 AND e.agb_code = $2 AND d.created_at >= $3",
    )
    .bind(gebruikersnummer)
    .bind(agb_code)
    .bind(since_ms)
    .fetch_one(&mut *conn)
    .await?;
    Ok(n > 0)
}

/// Gives the deliveries `ids` that are still in `from` a new attempt cycle
/// (`notifier replay deliveries`): pending, due at `now_ms`, retry step 0, a
/// new deadline, lease cleared. `attempts` and the attempt log are kept, so
/// attempt numbers continue, and so is `last_error` until the next attempt.
/// A row whose status changed since it was selected (a dispatcher claimed
/// it) is left alone, and so is one whose event was purged by retention (its
/// address is gone); `sending` is never touched. Returns the rows changed.
pub async fn replay(
    conn: &mut AnyConnection,
    ids: &[String],
    from: DeliveryStatus,
    now_ms: i64,
    deadline_ms: i64,
) -> Result<u64, StoreError> {
    if from == DeliveryStatus::Sending {
        return Ok(0);
    }
    // sent_at is cleared when a sent row is replayed: it is no longer sent;
    // the attempt log still shows when the earlier copy went out.
    let clear_sent_at = if matches!(from, DeliveryStatus::Sent | DeliveryStatus::Bounced) {
        ", sent_at = NULL"
    } else {
        ""
    };
    let mut n = 0;
    // Bounded IN lists: SQLite allows at most 32766 bound parameters.
    for chunk in ids.chunks(500) {
        let list = (0..chunk.len())
            .map(|i| format!("${}", i + 4))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE deliveries SET status = 'pending', due_at = $1, retry_step = 0, deadline = $2, \
             policy_rejections = 0, lease_until = NULL, lease_owner = NULL{clear_sent_at} \
             WHERE status = $3 AND id IN ({list}) \
             AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = deliveries.event_id AND e.purged_at IS NOT NULL)"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms)
            .bind(deadline_ms)
            .bind(from.as_str());
        for id in chunk {
            q = q.bind(id.as_str());
        }
        n += q.execute(&mut *conn).await?.rows_affected();
    }
    Ok(n)
}

/// Why `notifier replay events` does not add a planned delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayConflict {
    /// The same (event, kind, address, about) row exists, in this status
    /// (`notifier replay deliveries` is the way to send a failed one again).
    Exists(DeliveryStatus),
    /// Another delivery of this event and kind was sent to this address, or
    /// is on its way there (the status; the address finally used counts).
    Served(DeliveryStatus),
}

/// Whether a planned delivery of a stored event would duplicate one that
/// exists; `None` when it is new.
pub async fn replay_conflict(
    conn: &mut AnyConnection,
    event_id: &str,
    kind: &str,
    address: &str,
    about: &str,
) -> Result<Option<ReplayConflict>, StoreError> {
    let same = text_for_mail(
        conn,
        "SELECT status FROM deliveries WHERE event_id = $1 AND kind = $2 AND about = $3 AND address = $4",
        (event_id, kind, about, address),
    )
    .await?;
    if let Some(status) = same {
        return Ok(Some(ReplayConflict::Exists(status_of(&status)?)));
    }
    // The delivery that has taken the address, whatever it was planned for.
    let served = text_for_mail(
        conn,
        "SELECT status FROM deliveries WHERE event_id = $1 AND kind = $2 AND about = $3 \
         AND claimed_address = $4 AND status IN ('sent', 'pending', 'sending')",
        (event_id, kind, about, address),
    )
    .await?;
    served
        .map(|s| status_of(&s).map(ReplayConflict::Served))
        .transpose()
}

/// The text `sql` selects for one mail: `$1` event id, `$2` kind, `$3`
/// about, `$4` address.
async fn text_for_mail(
    conn: &mut AnyConnection,
    sql: &'static str,
    (event_id, kind, about, address): (&str, &str, &str, &str),
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(sql)
        .bind(event_id)
        .bind(kind)
        .bind(about)
        .bind(address)
        .fetch_optional(&mut *conn)
        .await?)
}

/// An event that reconciliation flags.
#[derive(Debug, Clone)]
pub struct StuckEvent {
    pub event_id: String,
    pub event_type: String,
    pub agb_code: Option<String>,
    pub received_at: i64,
    pub state: crate::domain::event::EventState,
    /// Deliveries overdue by more than the threshold (0: the event has no deliveries).
    pub overdue: i64,
    /// The earliest time an overdue delivery should have moved on
    /// (`due_at` of a pending one, `lease_until` of a sending one).
    pub overdue_since: Option<i64>,
}

/// Reconciliation: events with a delivery overdue by more than `threshold_ms`
/// (pending with `due_at` before `now - threshold`, or sending with a lease
/// that ran out before then), and module events in state `accepted` without
/// any delivery. Everything else is final or due in the future.
pub async fn stuck_events(
    conn: &mut AnyConnection,
    now_ms: i64,
    threshold_ms: i64,
) -> Result<Vec<StuckEvent>, StoreError> {
    let before = now_ms - threshold_ms;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT e.id, e.type, e.agb_code, e.received_at, e.state, COUNT(d.id) AS overdue, \
         MIN(CASE WHEN d.status = 'pending' THEN d.due_at ELSE d.lease_until END) AS since \
         FROM deliveries d JOIN events e ON e.id = d.event_id \
         WHERE {} \
         GROUP BY e.id, e.type, e.agb_code, e.received_at, e.state \
         ORDER BY since, e.id",
        due("d.", "$1")
    )))
    .bind(before)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = rows
        .iter()
        .map(|r| {
            Ok(StuckEvent {
                event_id: r.try_get("id")?,
                event_type: r.try_get("type")?,
                agb_code: r.try_get("agb_code")?,
                received_at: r.try_get("received_at")?,
                state: super::events::event_state_of(r.try_get("state")?)?,
                overdue: r.try_get("overdue")?,
                overdue_since: r.try_get("since")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    // Ingest commits a module event together with its deliveries, so an
    // accepted one without any means its deliveries were lost. Only events
    // older than the threshold: besides matching the rule for deliveries,
    // this keeps the anti-join off the events of a bulk ingest in
    // progress, which PostgreSQL with stale statistics planned as a scan of
    // the deliveries per event (5 s every 5 s during a 10,000-event ingest).
    let module_types = crate::domain::event::EventType::ALL
        .iter()
        .filter(|t| t.is_module())
        .map(|t| format!("'{}'", t.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT e.id, e.type, e.agb_code, e.received_at, e.state FROM events e \
         WHERE e.state = 'accepted' AND e.type IN ({module_types}) AND e.received_at < $1 \
         AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id) \
         ORDER BY e.received_at, e.id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(before)
        .fetch_all(&mut *conn)
        .await?;
    for r in &rows {
        out.push(StuckEvent {
            event_id: r.try_get("id")?,
            event_type: r.try_get("type")?,
            agb_code: r.try_get("agb_code")?,
            received_at: r.try_get("received_at")?,
            state: super::events::event_state_of(r.try_get("state")?)?,
            overdue: 0,
            overdue_since: None,
        });
    }
    Ok(out)
}

/// Deliveries created since `since_ms`, counted per (kind, status).
pub async fn counts_by_kind_and_status(
    conn: &mut AnyConnection,
    since_ms: i64,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let rows = sqlx::query(
        "SELECT kind, status, COUNT(*) AS n FROM deliveries WHERE created_at >= $1 \
         GROUP BY kind, status ORDER BY kind, status",
    )
    .bind(since_ms)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("kind")?, r.try_get("status")?, r.try_get("n")?)))
        .collect()
}

/// Attempts started since `since_ms`, counted per outcome.
pub async fn attempt_outcomes(
    conn: &mut AnyConnection,
    since_ms: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    super::counts_since(
        conn,
        "SELECT outcome AS k, COUNT(*) AS n FROM attempts WHERE started_at >= $1 AND n IS NOT NULL GROUP BY outcome ORDER BY outcome",
        since_ms,
    )
    .await
}

/// The relay as the database last saw it.
#[derive(Debug, Clone, Default)]
pub struct RelaySeen {
    /// The most recent attempt: when it started, its outcome, SMTP code and detail.
    pub last_attempt: Option<(i64, String, Option<i64>, Option<String>)>,
    /// When the relay last accepted a mail.
    pub last_sent_at: Option<i64>,
}

/// The last attempt and the last acceptance, over all deliveries.
pub async fn relay_seen(conn: &mut AnyConnection) -> Result<RelaySeen, StoreError> {
    let last = sqlx::query(
        "SELECT started_at, outcome, smtp_code, detail FROM attempts WHERE n IS NOT NULL ORDER BY started_at DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let last_attempt = last
        .map(|r| {
            Ok::<_, StoreError>((
                r.try_get("started_at")?,
                r.try_get("outcome")?,
                r.try_get("smtp_code")?,
                r.try_get("detail")?,
            ))
        })
        .transpose()?;
    let last_sent_at: Option<i64> =
        sqlx::query_scalar("SELECT MAX(started_at) FROM attempts WHERE outcome = 'sent'")
            .fetch_one(&mut *conn)
            .await?;
    Ok(RelaySeen {
        last_attempt,
        last_sent_at,
    })
}

/// The users served by the deliveries of one event, kind and about that are
/// not cancelled (pending, in flight, sent or failed: each of those users
/// has had, or is having, this mail).
pub async fn served_in_event(
    conn: &mut AnyConnection,
    event_id: &str,
    kind: &str,
    about: &str,
) -> Result<std::collections::HashSet<String>, StoreError> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT du.gebruikersnummer FROM delivery_users du JOIN deliveries d ON d.id = du.delivery_id \
         WHERE d.event_id = $1 AND d.kind = $2 AND d.about = $3 AND d.status <> 'cancelled'",
    )
    .bind(event_id)
    .bind(kind)
    .bind(about)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Records `users` on the delivery of this event, kind and about that has
/// taken `address` (or was planned for it), pending, in flight or sent.
pub async fn add_users_at_address(
    conn: &mut AnyConnection,
    event_id: &str,
    kind: &str,
    about: &str,
    address: &str,
    users: &[&crate::domain::recipients::Served],
) -> Result<(), StoreError> {
    let target = text_for_mail(
        conn,
        "SELECT id FROM deliveries WHERE event_id = $1 AND kind = $2 AND about = $3 \
         AND status IN ('pending', 'sending', 'sent') AND (claimed_address = $4 OR address = $4) \
         ORDER BY CASE WHEN claimed_address = $4 THEN 0 ELSE 1 END LIMIT 1",
        (event_id, kind, about, address),
    )
    .await?;
    let Some(target) = target else {
        return Ok(());
    };
    add_served(conn, &target, users.iter().copied()).await
}

/// True when the event's own module mail (kind = the event's type) has a
/// delivery pending, in flight or sent.
pub async fn has_live_or_sent_module_mail(
    conn: &mut AnyConnection,
    event_id: &str,
) -> Result<bool, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.event_id = $1 AND d.kind = e.type AND d.status IN ('pending', 'sending', 'sent')",
    )
    .bind(event_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(n > 0)
}

/// Cancels the pending deliveries of one kind of an event; returns how many.
pub async fn cancel_pending_kind(
    conn: &mut AnyConnection,
    event_id: &str,
    kind: &str,
    reason: &str,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE deliveries SET status = 'cancelled', last_error = $1, claimed_address = NULL \
         WHERE event_id = $2 AND kind = $3 AND status = 'pending'",
    )
    .bind(reason)
    .bind(event_id)
    .bind(kind)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// True when the event has any delivery at all.
pub async fn has_deliveries(conn: &mut AnyConnection, event_id: &str) -> Result<bool, StoreError> {
    let n: Option<i64> = sqlx::query_scalar("SELECT 1 FROM deliveries WHERE event_id = $1 LIMIT 1")
        .bind(event_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(n.is_some())
}
