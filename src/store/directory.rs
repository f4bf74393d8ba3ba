//! The directory tables: users, their AGB links, organisations. Every write is
//! a conditional upsert on `versie`, so two instances (or an out-of-order
//! update) can never overwrite newer data.

use super::StoreError;
use crate::domain::directory::{
    AgbSnapshot, DirectoryUser, Member, Recht, UserRecord, UserStatus, VersionCheck,
};
use crate::domain::ids::{AgbCode, EmailAddress, Gebruikersnummer};
use sqlx::{AnyConnection, Row};
use std::collections::HashMap;

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("unparseable {what} in the directory tables"))
}

fn user_from_row(row: &sqlx::any::AnyRow) -> Result<DirectoryUser, StoreError> {
    Ok(DirectoryUser {
        gebruikersnummer: Gebruikersnummer::parse(&row.try_get::<String, _>("gebruikersnummer")?)
            .map_err(|_| corrupt("gebruikersnummer"))?,
        naam: row.try_get("naam")?,
        email: EmailAddress::stored(row.try_get("email")?, row.try_get("email_registered")?),
        status: UserStatus::parse(&row.try_get::<String, _>("status")?)
            .ok_or_else(|| corrupt("status"))?,
        versie: row.try_get("versie")?,
    })
}

/// One user by number, any AGB code.
pub async fn get_user(
    conn: &mut AnyConnection,
    nr: &Gebruikersnummer,
) -> Result<Option<DirectoryUser>, StoreError> {
    select_user(conn, nr, "").await
}

/// One user by number, its row locked until the transaction ends on
/// PostgreSQL (SQLite's write transaction holds the whole database), so
/// what is read is what a following update replaces.
pub async fn get_user_for_update(
    conn: &mut AnyConnection,
    backend: super::Backend,
    nr: &Gebruikersnummer,
) -> Result<Option<DirectoryUser>, StoreError> {
    let lock = match backend {
        super::Backend::Postgres => " FOR UPDATE",
        super::Backend::Sqlite => "",
    };
    select_user(conn, nr, lock).await
}

/// One user by number; `lock` ends the statement (`" FOR UPDATE"` or nothing).
async fn select_user(
    conn: &mut AnyConnection,
    nr: &Gebruikersnummer,
    lock: &'static str,
) -> Result<Option<DirectoryUser>, StoreError> {
    let sql = format!(
        "SELECT gebruikersnummer, naam, email, email_registered, status, versie FROM users WHERE gebruikersnummer = $1{lock}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(nr.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(user_from_row).transpose()
}

/// The AGB codes a user is linked to, with whether it may sign there.
pub async fn user_links(
    conn: &mut AnyConnection,
    nr: &Gebruikersnummer,
) -> Result<Vec<(AgbCode, bool)>, StoreError> {
    let rows = sqlx::query(
        "SELECT agb_code, rechten, tekenbevoegd FROM user_links WHERE gebruikersnummer = $1 ORDER BY agb_code",
    )
    .bind(nr.as_str())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let agb = AgbCode::parse(&r.try_get::<String, _>("agb_code")?)
                .map_err(|_| corrupt("agb_code"))?;
            let rechten: String = r.try_get("rechten")?;
            let signer = r.try_get::<i64, _>("tekenbevoegd")? != 0
                && rechten
                    .split(',')
                    .any(|x| x == Recht::Contracteren.as_str());
            Ok((agb, signer))
        })
        .collect()
}

/// Everything the recipient rules need about one AGB code.
pub async fn agb_snapshot(
    conn: &mut AnyConnection,
    agb: &AgbCode,
) -> Result<AgbSnapshot, StoreError> {
    let mut all = agb_snapshots(conn, std::slice::from_ref(agb)).await?;
    Ok(all.remove(agb).unwrap_or_else(|| AgbSnapshot {
        agb_code: agb.clone(),
        naam: None,
        members: Vec::new(),
    }))
}

/// Codes per `IN (...)` list: far below SQLite's 32766 parameters.
const CODES_PER_STATEMENT: usize = 500;

/// Brings the planner's statistics of the directory up to date after a bulk
/// change (`notifier directory import`): on PostgreSQL, a query planned on
/// the statistics of an empty directory hashes whole tables where an index
/// lookup would do. SQLite plans from its indexes and needs nothing.
///
/// Only the tables' owner (the migration role of deploy/postgres/roles.sql)
/// may ANALYZE them on PostgreSQL 15; for anyone else PostgreSQL skips each
/// table with a warning. The runtime role therefore leaves it to
/// autovacuum, which analyzes a table within about a minute of a change
/// this large.
pub async fn refresh_statistics(conn: &mut AnyConnection) -> Result<(), StoreError> {
    if super::Backend::of(conn) == super::Backend::Sqlite {
        return Ok(());
    }
    let owns_all: bool = sqlx::query_scalar(
        "SELECT bool_and(pg_has_role(relowner, 'USAGE')) FROM pg_class \
         WHERE oid IN ('users'::regclass, 'user_links'::regclass, 'organisations'::regclass)",
    )
    .fetch_one(&mut *conn)
    .await?;
    if owns_all {
        sqlx::query("ANALYZE users, user_links, organisations")
            .execute(&mut *conn)
            .await?;
    } else {
        tracing::info!(
            "planner statistics left to autovacuum: the database user does not own the directory tables (the runtime role)"
        );
    }
    Ok(())
}

/// The snapshots of several AGB codes in two statements (per 500 codes),
/// one for every code asked (a code nobody is linked to has no members).
pub async fn agb_snapshots(
    conn: &mut AnyConnection,
    agbs: &[AgbCode],
) -> Result<HashMap<AgbCode, AgbSnapshot>, StoreError> {
    // Keyed by the code's text: rows are matched the way `IN` matched them.
    let mut out: HashMap<String, AgbSnapshot> = agbs
        .iter()
        .map(|a| {
            (
                a.as_str().to_owned(),
                AgbSnapshot {
                    agb_code: a.clone(),
                    naam: None,
                    members: Vec::new(),
                },
            )
        })
        .collect();
    let mut codes: Vec<String> = out.keys().cloned().collect();
    codes.sort();
    for chunk in codes.chunks(CODES_PER_STATEMENT) {
        let list = super::Binds::for_conn(conn).list(chunk.len());
        let sql = format!("SELECT agb_code, naam FROM organisations WHERE agb_code IN ({list})");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in chunk {
            q = q.bind(a.clone());
        }
        for r in &q.fetch_all(&mut *conn).await? {
            if let Some(s) = out.get_mut(&r.try_get::<String, _>("agb_code")?) {
                s.naam = Some(r.try_get("naam")?);
            }
        }
        let sql = format!(
            "SELECT l.agb_code, u.gebruikersnummer, u.naam, u.email, u.email_registered, u.status, u.versie, l.rechten, l.tekenbevoegd, l.contactpersoon \
             FROM user_links l JOIN users u ON u.gebruikersnummer = l.gebruikersnummer \
             WHERE l.agb_code IN ({list}) ORDER BY l.agb_code, u.gebruikersnummer"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in chunk {
            q = q.bind(a.clone());
        }
        for r in &q.fetch_all(&mut *conn).await? {
            let u = user_from_row(r)?;
            let rechten: String = r.try_get("rechten")?;
            let member = Member {
                gebruikersnummer: u.gebruikersnummer,
                naam: u.naam,
                email: u.email,
                status: u.status,
                versie: u.versie,
                rechten: rechten.split(',').filter_map(Recht::parse).collect(),
                tekenbevoegd: r.try_get::<i64, _>("tekenbevoegd")? != 0,
                contactpersoon: r.try_get::<i64, _>("contactpersoon")? != 0,
            };
            if let Some(s) = out.get_mut(&r.try_get::<String, _>("agb_code")?) {
                s.members.push(member);
            }
        }
    }
    Ok(out.into_values().map(|s| (s.agb_code.clone(), s)).collect())
}

/// Several users by number, any AGB code, in one statement (per 500); the
/// ones the directory does not know are absent.
pub async fn get_users(
    conn: &mut AnyConnection,
    nrs: &[Gebruikersnummer],
) -> Result<HashMap<Gebruikersnummer, DirectoryUser>, StoreError> {
    let mut nrs: Vec<&Gebruikersnummer> = nrs.iter().collect();
    nrs.sort();
    nrs.dedup();
    let mut out = HashMap::with_capacity(nrs.len());
    for chunk in nrs.chunks(CODES_PER_STATEMENT) {
        let sql = format!(
            "SELECT gebruikersnummer, naam, email, email_registered, status, versie FROM users WHERE gebruikersnummer IN ({})",
            super::Binds::for_conn(conn).list(chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for n in chunk {
            q = q.bind(n.as_str().to_owned());
        }
        for r in &q.fetch_all(&mut *conn).await? {
            let u = user_from_row(r)?;
            out.insert(u.gebruikersnummer.clone(), u);
        }
    }
    Ok(out)
}

async fn stored_user_versie(
    conn: &mut AnyConnection,
    nr: &Gebruikersnummer,
) -> Result<Option<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT versie FROM users WHERE gebruikersnummer = $1")
            .bind(nr.as_str())
            .fetch_optional(&mut *conn)
            .await?,
    )
}

/// Applies a whole user (`gebruiker.bijgewerkt`, or an import line) under the versie rule.
pub async fn apply_user(
    conn: &mut AnyConnection,
    rec: &UserRecord,
    now_ms: i64,
) -> Result<VersionCheck, StoreError> {
    let check = VersionCheck::of(
        stored_user_versie(conn, &rec.gebruikersnummer).await?,
        rec.versie,
    );
    if check == VersionCheck::Stale {
        return Ok(check);
    }
    // The WHERE makes the write itself conditional: a concurrent newer write wins.
    let done = sqlx::query(
        "INSERT INTO users (gebruikersnummer, naam, email, email_registered, status, versie, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (gebruikersnummer) DO UPDATE SET naam = excluded.naam, email = excluded.email, \
         email_registered = excluded.email_registered, \
         status = excluded.status, versie = excluded.versie, updated_at = excluded.updated_at \
         WHERE users.versie < excluded.versie",
    )
    .bind(rec.gebruikersnummer.as_str())
    .bind(&rec.naam)
    .bind(rec.email.as_str())
    .bind(rec.email.registered())
    .bind(rec.status.as_str())
    .bind(rec.versie)
    .bind(now_ms)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if done == 0 {
        return Ok(VersionCheck::Stale);
    }
    sqlx::query("DELETE FROM user_links WHERE gebruikersnummer = $1")
        .bind(rec.gebruikersnummer.as_str())
        .execute(&mut *conn)
        .await?;
    for k in &rec.koppelingen {
        let rechten: Vec<&str> = k.rechten.iter().map(|r| r.as_str()).collect();
        sqlx::query(
            "INSERT INTO user_links (gebruikersnummer, agb_code, rechten, tekenbevoegd, contactpersoon) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (gebruikersnummer, agb_code) DO UPDATE SET rechten = excluded.rechten, \
             tekenbevoegd = excluded.tekenbevoegd, contactpersoon = excluded.contactpersoon",
        )
        .bind(rec.gebruikersnummer.as_str())
        .bind(k.agb_code.as_str())
        .bind(rechten.join(","))
        .bind(i64::from(k.tekenbevoegd))
        .bind(i64::from(k.contactpersoon))
        .execute(&mut *conn)
        .await?;
    }
    Ok(check)
}

/// Outcome of a change to one field of a known user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserChange {
    Applied,
    Stale,
    UnknownUser,
}

/// Sets a user's address (`gebruiker.emailadres_gewijzigd`): the
/// lower-cased form and the form as registered, together.
pub async fn set_email(
    conn: &mut AnyConnection,
    nr: &Gebruikersnummer,
    email: &EmailAddress,
    versie: i64,
    now_ms: i64,
) -> Result<UserChange, StoreError> {
    conditional_user_update(
        conn,
        nr,
        versie,
        &[
            ("email", email.as_str()),
            ("email_registered", email.registered()),
        ],
        now_ms,
    )
    .await
}

/// Marks a user `ingetrokken` (`certificaat.ingetrokken`).
pub async fn revoke(
    conn: &mut AnyConnection,
    nr: &Gebruikersnummer,
    versie: i64,
    now_ms: i64,
) -> Result<UserChange, StoreError> {
    conditional_user_update(
        conn,
        nr,
        versie,
        &[("status", UserStatus::Ingetrokken.as_str())],
        now_ms,
    )
    .await
}

async fn conditional_user_update(
    conn: &mut AnyConnection,
    nr: &Gebruikersnummer,
    versie: i64,
    set: &[(&'static str, &str)],
    now_ms: i64,
) -> Result<UserChange, StoreError> {
    let Some(stored) = stored_user_versie(conn, nr).await? else {
        return Ok(UserChange::UnknownUser);
    };
    if versie <= stored {
        return Ok(UserChange::Stale);
    }
    let columns: String = set
        .iter()
        .enumerate()
        .map(|(i, (column, _))| format!("{column} = ${}, ", i + 4))
        .collect();
    let sql = format!(
        "UPDATE users SET {columns}versie = $1, updated_at = $2 WHERE gebruikersnummer = $3 AND versie < $1"
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(versie)
        .bind(now_ms)
        .bind(nr.as_str());
    for (_, value) in set {
        q = q.bind(*value);
    }
    let n = q.execute(&mut *conn).await?.rows_affected();
    Ok(if n == 1 {
        UserChange::Applied
    } else {
        UserChange::Stale
    })
}

/// Applies `organisatie.bijgewerkt` under the versie rule.
pub async fn apply_organisation(
    conn: &mut AnyConnection,
    agb: &AgbCode,
    naam: &str,
    versie: i64,
    now_ms: i64,
) -> Result<VersionCheck, StoreError> {
    let stored: Option<i64> =
        sqlx::query_scalar("SELECT versie FROM organisations WHERE agb_code = $1")
            .bind(agb.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    let check = VersionCheck::of(stored, versie);
    if check == VersionCheck::Stale {
        return Ok(check);
    }
    let n = sqlx::query(
        "INSERT INTO organisations (agb_code, naam, versie, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (agb_code) DO UPDATE SET naam = excluded.naam, versie = excluded.versie, updated_at = excluded.updated_at \
         WHERE organisations.versie < excluded.versie",
    )
    .bind(agb.as_str())
    .bind(naam)
    .bind(versie)
    .bind(now_ms)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(if n == 0 { VersionCheck::Stale } else { check })
}

/// The practice name of an AGB code, if known.
pub async fn organisation_name(
    conn: &mut AnyConnection,
    agb: &str,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT naam FROM organisations WHERE agb_code = $1")
            .bind(agb)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

/// The names of these organisations (one statement per 500 codes), by AGB code.
pub async fn organisation_names(
    conn: &mut AnyConnection,
    agbs: &[&str],
) -> Result<std::collections::HashMap<String, String>, StoreError> {
    let mut names = std::collections::HashMap::with_capacity(agbs.len());
    for chunk in agbs.chunks(500) {
        let sql = format!(
            "SELECT agb_code, naam FROM organisations WHERE agb_code IN ({})",
            super::Binds::for_conn(conn).list(chunk.len())
        );
        let mut q = sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql));
        for a in chunk {
            q = q.bind(*a);
        }
        names.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(names)
}

/// Records a directory update that was not applied (stale, unknown user), for counts and audits.
pub async fn log_skipped(
    conn: &mut AnyConnection,
    source: &str,
    subject: &str,
    outcome: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO directory_log (at, source, subject, outcome) VALUES ($1, $2, $3, $4)")
        .bind(now_ms)
        .bind(source)
        .bind(subject)
        .bind(outcome)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Directory updates not applied since `since_ms`, counted per outcome
/// (`stale`, `unknown_user`).
pub async fn skipped_counts(
    conn: &mut AnyConnection,
    since_ms: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    super::counts_since(
        conn,
        "SELECT outcome AS k, COUNT(*) AS n FROM directory_log WHERE at >= $1 GROUP BY outcome ORDER BY outcome",
        since_ms,
    )
    .await
}
