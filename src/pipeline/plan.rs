//! The planner: turns a resolution into delivery rows, the same way for an
//! event's first ingest, a re-resolution inside
//! `recipients.late_directory_window`, and `notifier replay events`.
//!
//! The rule that keeps a re-resolution from sending anything twice: a
//! delivery is added only for users that no delivery of the event and kind
//! serves yet, at an address no delivery of the event and kind has taken;
//! a user whose address is served already is recorded on that delivery. And
//! a notice that says "nobody got this" (`beheer.geen_ontvanger`,
//! `beheer.geen_tekenbevoegde`) is never planned for an event whose module
//! mail is on its way or sent; a pending `beheer.geen_ontvanger` is
//! cancelled as soon as a module mail is added.

use crate::domain::delivery::MailKind;
use crate::domain::recipients::{PlannedDelivery, Resolution};
use crate::store::{StoreError, deliveries as dl};
use sqlx::AnyConnection;

/// What planning one delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// A new delivery, for the users not served yet.
    Added,
    /// The address is served already (pending, in flight or sent): the users
    /// not served yet are recorded on that delivery.
    Joined,
    /// Every user is served already (possibly at an address they had then).
    AlreadyServed,
    /// The same planned row exists in this final status (`failed`,
    /// `cancelled`): `notifier replay deliveries` sends such a one again.
    Exists(String),
}

/// Times for new deliveries, in epoch milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub now_ms: i64,
    pub due_ms: i64,
    pub deadline_ms: i64,
}

/// Plans one delivery. With `insert` false nothing is written and the
/// answer says what would happen (`replay events` without `--execute`).
pub async fn plan_delivery(
    conn: &mut AnyConnection,
    event_id: &str,
    p: &PlannedDelivery,
    t: Timing,
    insert: bool,
) -> Result<Planned, StoreError> {
    let kind = p.kind.as_str();
    if let Some(conflict) =
        dl::replay_conflict(conn, event_id, kind, p.address.as_str(), &p.about).await?
    {
        return Ok(match conflict {
            // The very row exists: nothing to add unless a user is new to it.
            dl::ReplayConflict::Exists(status) => {
                if matches!(status.as_str(), "sent" | "pending" | "sending") {
                    match join(conn, event_id, p, insert).await? {
                        Planned::AlreadyServed => Planned::Exists(status),
                        other => other,
                    }
                } else {
                    Planned::Exists(status)
                }
            }
            dl::ReplayConflict::Served(_) => join(conn, event_id, p, insert).await?,
        });
    }
    let served = dl::served_in_event(conn, event_id, kind, &p.about).await?;
    if !p.users.is_empty()
        && p.users
            .iter()
            .all(|u| served.contains(u.gebruikersnummer.as_str()))
    {
        return Ok(Planned::AlreadyServed);
    }
    if !insert {
        return Ok(Planned::Added);
    }
    let mut fresh = p.clone();
    fresh
        .users
        .retain(|u| !served.contains(u.gebruikersnummer.as_str()));
    Ok(
        match dl::insert_planned(conn, event_id, &fresh, t.now_ms, t.due_ms, t.deadline_ms).await? {
            Some(_) => Planned::Added,
            // Taken between the check and the insert (another instance).
            None => join(conn, event_id, p, insert).await?,
        },
    )
}

/// The address is served already: record the users not yet served on the
/// delivery that has it.
async fn join(
    conn: &mut AnyConnection,
    event_id: &str,
    p: &PlannedDelivery,
    insert: bool,
) -> Result<Planned, StoreError> {
    let served = dl::served_in_event(conn, event_id, p.kind.as_str(), &p.about).await?;
    let new: Vec<_> = p
        .users
        .iter()
        .filter(|u| !served.contains(u.gebruikersnummer.as_str()))
        .collect();
    if new.is_empty() {
        return Ok(Planned::AlreadyServed);
    }
    if insert {
        dl::add_users_at_address(
            conn,
            event_id,
            p.kind.as_str(),
            &p.about,
            p.address.as_str(),
            &new,
        )
        .await?;
    }
    Ok(Planned::Joined)
}

/// What planning a whole resolution did.
#[derive(Debug, Default)]
pub struct PlanReport<'a> {
    /// The deliveries added (or, without insert, that would be).
    pub added: Vec<&'a PlannedDelivery>,
    pub joined: usize,
    pub already_served: usize,
    pub existing: usize,
    /// The event had a module mail on its way or sent before: its state
    /// stays as it is, and no "nobody got this" notice was planned.
    pub had_module_mail: bool,
}

/// Plans every delivery of `res` for `event_id`, with the rules above.
pub async fn plan_resolution<'a>(
    conn: &mut AnyConnection,
    event_id: &str,
    res: &'a Resolution,
    t: Timing,
    insert: bool,
) -> Result<PlanReport<'a>, StoreError> {
    let had_module_mail = dl::has_live_or_sent_module_mail(conn, event_id).await?;
    let mut report = PlanReport {
        had_module_mail,
        ..Default::default()
    };
    for p in &res.deliveries {
        let says_nobody = matches!(
            p.kind,
            MailKind::GeenOntvanger | MailKind::GeenTekenbevoegde
        );
        if had_module_mail && says_nobody {
            continue;
        }
        match plan_delivery(conn, event_id, p, t, insert).await? {
            Planned::Added => report.added.push(p),
            Planned::Joined => report.joined += 1,
            Planned::AlreadyServed => report.already_served += 1,
            Planned::Exists(_) => report.existing += 1,
        }
    }
    if insert && report.added.iter().any(|p| p.kind.is_module()) {
        dl::cancel_pending_kind(
            conn,
            event_id,
            MailKind::GeenOntvanger.as_str(),
            "cancelled: a recipient with the right was found after all (late directory data)",
        )
        .await?;
    }
    Ok(report)
}
