//! The `beheer.onbestelbaar` escalation: a module mail to a user could not
//! be delivered (refused at once by the relay, or bounced later by the
//! recipient's server), so the practice's contact persons are told, at most
//! once a day per user and AGB code, never through the failing address and
//! never about a user the practice does not have. Shared by dispatch and
//! the bounce reader; runs inside the caller's transaction.

use super::plan;
use crate::domain::directory::{AgbSnapshot, DirectoryUser};
use crate::domain::event::EventType;
use crate::domain::ids::{AgbCode, EmailAddress, Gebruikersnummer};
use crate::domain::recipients::{self, PlannedDelivery};
use crate::ops::metrics::Metrics;
use crate::store::deliveries as dl;
use crate::store::{StoreError, directory as dir, events as ev, ms};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;
use std::time::Duration;
use tracing::warn;

/// The delivery that could not be delivered.
#[derive(Debug, Clone, Copy)]
pub struct Undeliverable<'a> {
    pub delivery_id: &'a str,
    pub event_id: &'a str,
    /// The event's type as stored.
    pub event_type: &'a str,
    /// The address that failed: no notice goes there.
    pub address: &'a str,
}

/// The `reden` a notice gives when the relay refused the address at once.
pub const REASON_REFUSED: &str = "het adres werd door de ontvangende mailserver geweigerd";

/// The `reden` a notice gives when the address has no ASCII form (a
/// non-ASCII local part) and the relay does not offer SMTPUTF8.
pub const REASON_NO_SMTPUTF8: &str =
    "de ontvangende server ondersteunt geen internationale adressen";

/// The `reden` a notice gives when the deadline passed.
pub const REASON_EXPIRED: &str = "het bericht kon binnen de termijn niet worden afgeleverd";

/// The `reden` a notice gives when the mail bounced after the relay took it.
pub const REASON_BOUNCED: &str =
    "het bericht werd later door de ontvangende mailserver teruggestuurd als onbestelbaar";

/// Plans the notices about the users `failed` serves, in `conn`'s
/// transaction; returns how many are new. `deadline` is the notices' own
/// (`retry.deadline`, from now). A user nobody but the failing address can
/// be told about is noted on the event, counted and logged.
pub async fn escalate(
    conn: &mut AnyConnection,
    failed: Undeliverable<'_>,
    reden: &str,
    now: DateTime<Utc>,
    deadline: Duration,
    metrics: &Metrics,
) -> Result<usize, StoreError> {
    let Some(et) = EventType::parse(failed.event_type) else {
        return Ok(0);
    };
    let Some(agb) = event_agb(conn, failed.event_id).await? else {
        return Ok(0);
    };
    let snapshot = dir::agb_snapshot(conn, &agb).await?;
    let served = dl::served_users(conn, failed.delivery_id).await?;
    let day_ago = ms(now) - 86_400_000;
    let mut n = 0;
    for u in served {
        let Some(user) = user_to_report(conn, &u, &snapshot, &agb, day_ago).await? else {
            continue;
        };
        let planned = notices_about(&snapshot, &user, failed, et, reden);
        if planned.is_empty() {
            unescalatable(conn, failed.event_id, &user, metrics).await?;
            continue;
        }
        let timing = plan::Timing::due_now(now, plan::Deadline::FromNow(deadline));
        n += insert_notices(conn, failed.event_id, &planned, timing).await?;
    }
    Ok(n)
}

/// Nobody but the failing address could be told about `user`: noted on
/// the event, counted and logged, for an operator to follow up.
async fn unescalatable(
    conn: &mut AnyConnection,
    event_id: &str,
    user: &DirectoryUser,
    metrics: &Metrics,
) -> Result<(), StoreError> {
    let note = format!(
        "{} about user {} not sent: no other active contact person",
        crate::domain::delivery::MailKind::Onbestelbaar.as_str(),
        user.gebruikersnummer
    );
    ev::append_detail(conn, event_id, &note).await?;
    metrics.unroutable();
    warn!(gebruikersnummer = %user.gebruikersnummer, "undeliverable mail cannot be escalated: no active contact person");
    Ok(())
}

/// The AGB code of the event `event_id`, when it is stored and has one.
async fn event_agb(
    conn: &mut AnyConnection,
    event_id: &str,
) -> Result<Option<AgbCode>, StoreError> {
    let Some(event) = ev::get_event(conn, event_id).await? else {
        return Ok(None);
    };
    Ok(event
        .agb_code
        .as_deref()
        .and_then(|a| AgbCode::parse(a).ok()))
}

/// The directory entry of served user `u` when its contact persons are to
/// be told: a user of this practice without a notice about it here in the
/// last day (since `day_ago`, epoch milliseconds).
async fn user_to_report(
    conn: &mut AnyConnection,
    u: &dl::ServedNow,
    snapshot: &AgbSnapshot,
    agb: &AgbCode,
    day_ago: i64,
) -> Result<Option<DirectoryUser>, StoreError> {
    let Ok(nr) = Gebruikersnummer::parse(&u.gebruikersnummer) else {
        return Ok(None);
    };
    let Some(user) = dir::get_user(conn, &nr).await? else {
        return Ok(None);
    };
    // This practice's contact persons answer for this practice's users
    // only: an actor's copy to someone of another practice raises nothing
    // here (and tells nobody here their name).
    if !snapshot
        .members
        .iter()
        .any(|m| m.gebruikersnummer == user.gebruikersnummer)
    {
        return Ok(None);
    }
    // At most one notice a day per user and practice: the contact persons
    // of a second practice of the same user are told too.
    if dl::recent_undeliverable_notice(conn, nr.as_str(), agb.as_str(), day_ago).await? {
        return Ok(None);
    }
    Ok(Some(user))
}

/// The `beheer.onbestelbaar` notices about `user` for the failed delivery:
/// one per contact person, but none to the very address that failed (a
/// contact person there cannot be told through it).
fn notices_about(
    snapshot: &AgbSnapshot,
    user: &DirectoryUser,
    failed: Undeliverable<'_>,
    et: EventType,
    reden: &str,
) -> Vec<PlannedDelivery> {
    let failing = EmailAddress::parse(failed.address).ok();
    recipients::undeliverable_notices(snapshot, user, failed.event_id, et, reden)
        .into_iter()
        .filter(|p| Some(&p.address) != failing.as_ref())
        .collect()
}

/// Writes the notices of `event_id` timed by `t`; returns how many rows are
/// new (one that exists already is left as it is).
async fn insert_notices(
    conn: &mut AnyConnection,
    event_id: &str,
    planned: &[PlannedDelivery],
    t: plan::Timing,
) -> Result<usize, StoreError> {
    let mut n = 0;
    for p in planned {
        if dl::insert_planned(conn, event_id, p, t.now_ms, t.due_ms, t.deadline_ms)
            .await?
            .is_some()
        {
            n += 1;
        }
    }
    Ok(n)
}
