//! The planner: turns a resolution into delivery rows, the same way for an
//! event's first ingest, a re-resolution inside
//! `recipients.late_directory_window`, and `notifier replay events`; and
//! gives users who no longer share an address their own delivery when
//! dispatch finds that out at send time ([`split_off`]). What deadline the
//! new rows get is the caller's [`Deadline`] rule.
//!
//! The rule that keeps a re-resolution from sending anything twice: a
//! delivery is added only for users that no delivery of the event and kind
//! serves yet, at an address no delivery of the event and kind has taken;
//! a user whose address is served already is recorded on that delivery. And
//! a notice that says "nobody got this" (`beheer.geen_ontvanger`,
//! `beheer.geen_tekenbevoegde`) is never planned for an event whose module
//! mail is on its way or sent; a pending `beheer.geen_ontvanger` is
//! cancelled as soon as a module mail is added.

use crate::domain::delivery::DeliveryStatus::{self, Pending, Sending, Sent};
use crate::domain::delivery::MailKind;
use crate::domain::recipients::{PlannedDelivery, Resolution};
use crate::store::{StoreError, deliveries as dl, ms, planning as pl};
use chrono::{DateTime, Utc};
use sqlx::AnyConnection;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

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
    Exists(DeliveryStatus),
}

/// Times for new deliveries, in epoch milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub now_ms: i64,
    pub due_ms: i64,
    pub deadline_ms: i64,
}

impl Timing {
    /// Deliveries due at `now`, with the deadline `rule` gives.
    pub fn due_now(now: DateTime<Utc>, rule: Deadline) -> Self {
        Self {
            now_ms: ms(now),
            due_ms: ms(now),
            deadline_ms: rule.at(now),
        }
    }
}

/// Which deadline a new delivery gets. The rules differ on purpose
/// (docs/delivery.md, "Deadline").
#[derive(Debug, Clone, Copy)]
pub enum Deadline {
    /// The event's time plus `retry.deadline` (ingest, and a re-resolution
    /// inside `recipients.late_directory_window`): an event that arrives
    /// late has that much less time.
    FromEventTime {
        event_time: DateTime<Utc>,
        span: Duration,
    },
    /// Now plus `retry.deadline` (`replay events`, `replay deliveries`, the
    /// notices dispatch creates): the event's own deadline may have passed
    /// while the directory or the relay was wrong.
    FromNow(Duration),
    /// The deadline of the delivery the users are split off from (epoch
    /// milliseconds): the same mail, the same time limit.
    Inherit(i64),
}

impl Deadline {
    /// The deadline in epoch milliseconds for deliveries planned at `now`.
    pub fn at(self, now: DateTime<Utc>) -> i64 {
        match self {
            Self::FromEventTime { event_time, span } => ms(event_time + span),
            Self::FromNow(span) => ms(now + span),
            Self::Inherit(deadline_ms) => deadline_ms,
        }
    }
}

/// The users already served per (kind, about) of one event, read once per
/// planning pass and kept up to date as deliveries are added.
pub struct Served {
    /// False while the event has no deliveries at all (its first ingest):
    /// then nothing can conflict and no query is needed.
    has_any: bool,
    by_group: HashMap<(MailKind, String), HashSet<String>>,
}

impl Served {
    /// What `event_id` has so far.
    pub async fn of(conn: &mut AnyConnection, event_id: &str) -> Result<Self, StoreError> {
        Ok(Self {
            has_any: dl::has_deliveries(conn, event_id).await?,
            by_group: HashMap::new(),
        })
    }

    /// An event whose row this transaction has just inserted: it cannot
    /// have deliveries yet, so no query is needed to know.
    pub fn fresh() -> Self {
        Self {
            has_any: false,
            by_group: HashMap::new(),
        }
    }

    async fn group(
        &mut self,
        conn: &mut AnyConnection,
        event_id: &str,
        p: &PlannedDelivery,
    ) -> Result<&mut HashSet<String>, StoreError> {
        let key = (p.kind, p.about.clone());
        if !self.by_group.contains_key(&key) {
            let set = if self.has_any {
                dl::served_in_event(conn, event_id, p.kind.as_str(), &p.about).await?
            } else {
                HashSet::new()
            };
            self.by_group.insert(key.clone(), set);
        }
        Ok(self.by_group.get_mut(&key).expect("inserted above"))
    }
}

/// Plans one delivery. With `insert` false nothing is written and the
/// answer says what would happen (`replay events` without `--execute`).
pub async fn plan_delivery(
    conn: &mut AnyConnection,
    event_id: &str,
    p: &PlannedDelivery,
    t: Timing,
    insert: bool,
    served: &mut Served,
) -> Result<Planned, StoreError> {
    if !served.has_any {
        let mut one = plan_first(conn, event_id, &[p], t, insert, served).await?;
        return Ok(one.pop().expect("one answer per delivery"));
    }
    plan_again(conn, event_id, p, t, insert, served).await
}

/// Plans several deliveries in order, each as [`plan_delivery`] would; an
/// event's first planning is written in a few multi-row statements.
pub async fn plan_deliveries(
    conn: &mut AnyConnection,
    event_id: &str,
    planned: &[&PlannedDelivery],
    t: Timing,
    insert: bool,
    served: &mut Served,
) -> Result<Vec<Planned>, StoreError> {
    if !served.has_any {
        return plan_first(conn, event_id, planned, t, insert, served).await;
    }
    let mut out = Vec::with_capacity(planned.len());
    for p in planned {
        out.push(plan_again(conn, event_id, p, t, insert, served).await?);
    }
    Ok(out)
}

/// The event's first planning: nothing exists to conflict with but the
/// rows of this very planning, which the unique indexes sort out (the
/// first wins, as one by one).
async fn plan_first(
    conn: &mut AnyConnection,
    event_id: &str,
    planned: &[&PlannedDelivery],
    t: Timing,
    insert: bool,
    served: &mut Served,
) -> Result<Vec<Planned>, StoreError> {
    if !insert {
        return Ok(vec![Planned::Added; planned.len()]);
    }
    let ids =
        pl::insert_planned_many(conn, event_id, planned, t.now_ms, t.due_ms, t.deadline_ms).await?;
    let mut out = Vec::with_capacity(planned.len());
    for (p, id) in planned.iter().zip(ids) {
        let group = served.group(conn, event_id, p).await?;
        group.extend(p.users.iter().map(|u| u.gebruikersnummer.to_string()));
        out.push(if id.is_some() {
            Planned::Added
        } else {
            Planned::AlreadyServed
        });
    }
    Ok(out)
}

/// The first planning of an event whose row this transaction has just
/// inserted (see [`plan_first_many`]).
#[derive(Clone, Copy)]
pub struct First<'a> {
    pub event_id: &'a str,
    pub resolution: &'a Resolution,
    pub timing: Timing,
}

/// The first planning of several new events at once (an ingest batch): what
/// [`plan_resolution_from`] with [`Served::fresh`] does for each, with the
/// deliveries of all of them in the same few multi-row statements. Returns
/// per event how many deliveries were added.
pub async fn plan_first_many(
    conn: &mut AnyConnection,
    firsts: &[First<'_>],
) -> Result<Vec<usize>, StoreError> {
    let Some(t) = firsts.first().map(|f| f.timing) else {
        return Ok(Vec::new());
    };
    let rows: Vec<pl::PlannedRow<'_>> = firsts
        .iter()
        .flat_map(|f| {
            f.resolution.deliveries.iter().map(|p| pl::PlannedRow {
                event_id: f.event_id,
                planned: p,
                deadline_ms: f.timing.deadline_ms,
            })
        })
        .collect();
    let ids = pl::insert_planned_rows(conn, &rows, t.now_ms, t.due_ms).await?;
    let mut ids = ids.into_iter();
    let mut added = Vec::with_capacity(firsts.len());
    for f in firsts {
        let mine: Vec<bool> = ids
            .by_ref()
            .take(f.resolution.deliveries.len())
            .map(|id| id.is_some())
            .collect();
        let module_added = f
            .resolution
            .deliveries
            .iter()
            .zip(&mine)
            .any(|(p, &a)| a && p.kind.is_module());
        // As in `plan_resolution_from`: a `beheer.geen_ontvanger` of this
        // very planning gives way to a module mail planned beside it.
        if module_added
            && f.resolution
                .deliveries
                .iter()
                .any(|p| p.kind == MailKind::GeenOntvanger)
        {
            dl::cancel_pending_kind(
                conn,
                f.event_id,
                MailKind::GeenOntvanger.as_str(),
                "cancelled: a recipient with the right was found after all (late directory data)",
            )
            .await?;
        }
        added.push(mine.into_iter().filter(|&a| a).count());
    }
    Ok(added)
}

/// Plans one delivery of an event that had deliveries when this planning
/// began: checked row by row against what exists (re-resolution, replay).
async fn plan_again(
    conn: &mut AnyConnection,
    event_id: &str,
    p: &PlannedDelivery,
    t: Timing,
    insert: bool,
    served: &mut Served,
) -> Result<Planned, StoreError> {
    let kind = p.kind.as_str();
    if let Some(conflict) =
        dl::replay_conflict(conn, event_id, kind, p.address.as_str(), &p.about).await?
    {
        return Ok(match conflict {
            // The very row exists: nothing to add unless a user is new to it.
            dl::ReplayConflict::Exists(status) => {
                if matches!(status, Sent | Pending | Sending) {
                    match join(conn, event_id, p, insert, served).await? {
                        Planned::AlreadyServed => Planned::Exists(status),
                        other => other,
                    }
                } else {
                    Planned::Exists(status)
                }
            }
            dl::ReplayConflict::Served(_) => join(conn, event_id, p, insert, served).await?,
        });
    }
    let group = served.group(conn, event_id, p).await?;
    let fresh_users: Vec<_> = p
        .users
        .iter()
        .filter(|u| !group.contains(u.gebruikersnummer.as_str()))
        .cloned()
        .collect();
    if !p.users.is_empty() && fresh_users.is_empty() {
        return Ok(Planned::AlreadyServed);
    }
    if !insert {
        return Ok(Planned::Added);
    }
    let mut fresh = p.clone();
    fresh.users = fresh_users;
    match dl::insert_planned(conn, event_id, &fresh, t.now_ms, t.due_ms, t.deadline_ms).await? {
        Some(_) => {
            let group = served.group(conn, event_id, p).await?;
            group.extend(fresh.users.iter().map(|u| u.gebruikersnummer.to_string()));
            Ok(Planned::Added)
        }
        // Taken between the check and the insert (another instance).
        None => join(conn, event_id, p, insert, served).await,
    }
}

/// The address is served already: record the users not yet served on the
/// delivery that has it.
async fn join(
    conn: &mut AnyConnection,
    event_id: &str,
    p: &PlannedDelivery,
    insert: bool,
    served: &mut Served,
) -> Result<Planned, StoreError> {
    let group = served.group(conn, event_id, p).await?;
    let new: Vec<_> = p
        .users
        .iter()
        .filter(|u| !group.contains(u.gebruikersnummer.as_str()))
        .collect();
    if new.is_empty() {
        return Ok(Planned::AlreadyServed);
    }
    if insert {
        group.extend(new.iter().map(|u| u.gebruikersnummer.to_string()));
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
    let served = Served::of(conn, event_id).await?;
    plan_resolution_from(conn, event_id, res, t, insert, served).await
}

/// [`plan_resolution`] starting from what the event is known to have
/// (`Served::fresh()` for an event inserted by this transaction).
pub async fn plan_resolution_from<'a>(
    conn: &mut AnyConnection,
    event_id: &str,
    res: &'a Resolution,
    t: Timing,
    insert: bool,
    mut served: Served,
) -> Result<PlanReport<'a>, StoreError> {
    let had_any = served.has_any;
    let had_module_mail = had_any && dl::has_live_or_sent_module_mail(conn, event_id).await?;
    let mut report = PlanReport {
        had_module_mail,
        ..Default::default()
    };
    let todo: Vec<&PlannedDelivery> = res
        .deliveries
        .iter()
        .filter(|p| {
            let says_nobody = matches!(
                p.kind,
                MailKind::GeenOntvanger | MailKind::GeenTekenbevoegde
            );
            !(had_module_mail && says_nobody)
        })
        .collect();
    let outcomes = plan_deliveries(conn, event_id, &todo, t, insert, &mut served).await?;
    for (p, planned) in todo.into_iter().zip(outcomes) {
        match planned {
            Planned::Added => report.added.push(p),
            Planned::Joined => report.joined += 1,
            Planned::AlreadyServed => report.already_served += 1,
            Planned::Exists(_) => report.existing += 1,
        }
    }
    // Without earlier deliveries the only pending `beheer.geen_ontvanger`
    // could be one of this planning's own: skip the statement when there is none.
    let may_have_notice = had_any
        || res
            .deliveries
            .iter()
            .any(|p| p.kind == MailKind::GeenOntvanger);
    if insert && may_have_notice && report.added.iter().any(|p| p.kind.is_module()) {
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

/// Moves `users` off delivery `from` (being sent) onto a delivery of the
/// same event, kind and about at `address`, where the send-time re-check
/// found them: the delivery that has taken that address already, else a
/// cancelled one planned for it (revived), else a new one with `from`'s
/// rule and notice, timed by `t` (a split inherits the deadline:
/// [`Deadline::Inherit`]). Returns that delivery's id when it is still to
/// be sent, `None` when the address was served already (the users are
/// recorded on that delivery and leave `from`) or is planned for another
/// delivery that now sends elsewhere (the users stay on `from`).
pub async fn split_off(
    conn: &mut AnyConnection,
    from: &str,
    address: &str,
    users: &[&str],
    t: Timing,
) -> Result<Option<String>, StoreError> {
    // The holder is looked up first: on PostgreSQL a revive that ran into
    // the unique address index would abort the whole transaction.
    let (target, status) = match dl::holder_of_address(conn, from, address).await? {
        Some(held) => held,
        None => match dl::revive_at_address(conn, from, address, t.now_ms).await? {
            Some(id) => (id, Pending),
            None => match pl::insert_split(conn, from, address, t.now_ms, t.due_ms, t.deadline_ms)
                .await?
            {
                Some(id) => (id, Pending),
                None => return Ok(None),
            },
        },
    };
    dl::move_users(conn, from, &target, users).await?;
    Ok(matches!(status, Pending | Sending).then_some(target))
}
