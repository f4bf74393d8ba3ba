//! Ingest: portal events in, their effects committed. One function serves the
//! AMQP consumer, `notifier ingest FILE`, quarantine redrive and the demo, so
//! there is one code path for every decision.
//!
//! A batch is one transaction: the event rows (unique by id, so a repeat is a
//! no-op), the directory changes, every delivery, and the quarantine rows for
//! bad input. The caller acks only after [`Ingestor::ingest_batch`] returned Ok.

use crate::domain::directory::{AgbSnapshot, DirectoryUser, UserRecord, UserStatus, VersionCheck};
use crate::domain::event::EventState;
use crate::domain::event::{
    EventBody, MAX_BODY_BYTES, ModuleEvent, PortalEvent, ValidationRules, envelope_hint,
    parse_event,
};
use crate::domain::ids::{AgbCode, EmailAddress, Gebruikersnummer};
use crate::domain::recipients::{self, PlannedDelivery, Routing};
use crate::ops::metrics::Metrics;
use crate::pipeline::plan;
use crate::store::directory::{self as dir, UserChange};
use crate::store::events::{self as ev, NewEvent, NewQuarantine};
use crate::store::{Store, StoreError, deliveries, ms};
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use sqlx::AnyConnection;
use std::time::Duration;
use tracing::{Instrument, info, info_span, warn};

/// Where a message came from (kept with quarantined messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Amqp,
    File,
    Redrive,
    DeadLetter,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Self::Amqp => "amqp",
            Self::File => "file",
            Self::Redrive => "redrive",
            Self::DeadLetter => "dead-letter",
        }
    }
}

/// One message to ingest.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The body; of a message over the contract's limit only the first
    /// [`QUARANTINE_RAW_LIMIT`](crate::store::events::QUARANTINE_RAW_LIMIT)
    /// bytes are kept (it is rejected on its size without being read).
    pub body: Vec<u8>,
    /// The size of the whole body as received.
    pub size: usize,
    pub routing_key: Option<String>,
    pub source: Source,
    /// Set for dead-lettered messages: quarantined with this reason, unparsed.
    pub forced_rejection: Option<String>,
    /// False for a quarantine redrive: bad input is reported as
    /// [`IngestOutcome::Rejected`] instead of adding a second quarantine row
    /// for a message that already has one.
    pub quarantine_on_reject: bool,
}

impl Incoming {
    /// A message from the broker or a file.
    pub fn new(body: Vec<u8>, routing_key: Option<String>, source: Source) -> Self {
        Self {
            size: body.len(),
            body,
            routing_key,
            source,
            forced_rejection: None,
            quarantine_on_reject: true,
        }
    }

    /// A message whose body may be of any size: only what validation and
    /// quarantine can use is copied (an oversized body is rejected on its
    /// size, unread), so a 40 MB message never costs 40 MB more.
    pub fn bounded(body: &[u8], routing_key: Option<String>, source: Source) -> Self {
        let keep = body.len().min(MAX_BODY_BYTES + 1);
        let mut m = Self::new(body[..keep].to_vec(), routing_key, source);
        m.size = body.len();
        m
    }

    /// A quarantined message sent through ingest again: parsed normally
    /// (also when it came from the dead-letter queue), and reported instead
    /// of quarantined when it is still bad.
    pub fn redrive(body: Vec<u8>, routing_key: Option<String>) -> Self {
        Self {
            size: body.len(),
            body,
            routing_key,
            source: Source::Redrive,
            forced_rejection: None,
            quarantine_on_reject: false,
        }
    }
}

/// What ingesting one message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// A module event, recorded with its deliveries.
    Accepted {
        event_id: String,
        deliveries: usize,
        routing: Routing,
        /// A notice was due but nobody could get it (no active contact person).
        unroutable_notice: bool,
    },
    /// A directory event applied (with the mails it causes, if any).
    Applied {
        event_id: String,
        deliveries: usize,
        unroutable_notice: bool,
    },
    /// The event id was seen before: nothing new happened.
    Duplicate { event_id: String },
    /// A directory update not newer than what is stored: ignored.
    Stale { event_id: String },
    /// A directory update about a user the directory does not know: recorded, nothing sent.
    UnknownUser { event_id: String },
    /// Bad input, kept in quarantine with the reason.
    Quarantined { quarantine_id: i64, reason: String },
    /// Bad input not stored ([`Incoming::quarantine_on_reject`] was false):
    /// the caller keeps the message where it already is.
    Rejected { reason: String },
}

impl IngestOutcome {
    /// The metrics outcome label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Accepted { .. } | Self::Applied { .. } | Self::UnknownUser { .. } => "accepted",
            Self::Duplicate { .. } => "duplicate",
            Self::Stale { .. } => "stale",
            // A rejected redrive stays in quarantine.
            Self::Quarantined { .. } | Self::Rejected { .. } => "quarantined",
        }
    }
}

/// Turns messages into committed events, directory changes and deliveries.
#[derive(Clone)]
pub struct Ingestor {
    store: Store,
    rules: ValidationRules,
    deadline: Duration,
    late_window: Duration,
    metrics: Metrics,
}

impl Ingestor {
    /// An ingestor writing to `store`.
    pub fn new(
        store: Store,
        rules: ValidationRules,
        deadline: Duration,
        late_window: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            rules,
            deadline,
            late_window,
            metrics,
        }
    }

    /// Ingests a batch, keeping one bad message from holding back the rest.
    ///
    /// The batch is tried in one transaction. When the database refuses it
    /// because of the data ([`StoreError::is_data_error`]), each message is
    /// tried on its own: the one that is refused again goes to quarantine
    /// with the database's reason, the others are committed. Any other error
    /// stops at the message it hit: [`Ingested::committed`] says how many
    /// messages from the front are done (the caller acks those and holds the
    /// rest).
    pub async fn ingest_split(&self, batch: &[Incoming]) -> Ingested {
        let err = match self.ingest_batch(batch).await {
            Ok(outcomes) => {
                return Ingested {
                    committed: batch.len(),
                    outcomes,
                    error: None,
                };
            }
            Err(e) if e.is_data_error() => e,
            Err(e) => {
                return Ingested {
                    committed: 0,
                    outcomes: Vec::new(),
                    error: Some(e),
                };
            }
        };
        if batch.len() > 1 {
            warn!(error = %err, messages = batch.len(),
                "the database refused the batch's data: ingesting its messages one by one");
        }
        let mut done = Ingested {
            committed: 0,
            outcomes: Vec::with_capacity(batch.len()),
            error: None,
        };
        for (i, m) in batch.iter().enumerate() {
            let single = if batch.len() == 1 {
                Err(err_again(&err))
            } else {
                self.ingest_batch(std::slice::from_ref(m))
                    .await
                    .map(|mut o| o.remove(0))
            };
            let outcome = match single {
                Ok(o) => Ok(o),
                Err(e) if e.is_data_error() => self.quarantine_refused(m, &e).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(o) => {
                    done.outcomes.push(o);
                    done.committed = i + 1;
                }
                Err(e) => {
                    done.error = Some(e);
                    break;
                }
            }
        }
        done
    }

    /// Keeps a message whose data the database refused in quarantine, with
    /// the database's reason, in a transaction of its own.
    async fn quarantine_refused(
        &self,
        m: &Incoming,
        e: &StoreError,
    ) -> Result<IngestOutcome, StoreError> {
        let reason = format!("the database refused this message's data: {e}");
        let hint = envelope_hint(&m.body);
        let t = known_type_label(hint.event_type.as_deref());
        self.metrics.event_received(t, "quarantined");
        if !m.quarantine_on_reject {
            return Ok(IngestOutcome::Rejected { reason });
        }
        let mut tx = self.store.begin().await?;
        let id = keep_in_quarantine(&mut tx, m, &hint, &reason, Utc::now()).await?;
        tx.commit().await?;
        warn!(quarantine_id = id, event_id = hint.id.as_deref(), %reason,
            "message refused by the database: quarantined, the rest of its batch goes on");
        Ok(IngestOutcome::Quarantined {
            quarantine_id: id,
            reason,
        })
    }

    /// Ingests a batch in one transaction. On Err nothing was committed and
    /// the caller must not ack.
    pub async fn ingest_batch(&self, batch: &[Incoming]) -> Result<Vec<IngestOutcome>, StoreError> {
        let now = Utc::now();
        let mut tx = self.store.begin().await?;
        // No value from outside may take the process down: a panic while
        // handling the batch fails it as bad data, and `ingest_split` then
        // tries each message alone, so only the message that panics again
        // is kept in quarantine.
        let processed = std::panic::AssertUnwindSafe(self.process_batch(&mut tx, batch, now))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Err(StoreError::BadMessage(format!(
                    "internal error while ingesting this message ({}); it is kept in quarantine, please report it",
                    panic_text(&panic)
                )))
            });
        let (types, outcomes): (Vec<String>, Vec<IngestOutcome>) = processed?.into_iter().unzip();
        tx.commit().await?;
        for (t, o) in types.iter().zip(&outcomes) {
            self.metrics.event_received(t, o.label());
            match o {
                IngestOutcome::Accepted {
                    routing,
                    unroutable_notice,
                    ..
                } if *routing == Routing::Unroutable || *unroutable_notice => {
                    self.metrics.unroutable()
                }
                IngestOutcome::Applied {
                    unroutable_notice: true,
                    ..
                } => self.metrics.unroutable(),
                IngestOutcome::Stale { .. } => self.metrics.directory_skipped("stale"),
                IngestOutcome::UnknownUser { .. } => self.metrics.directory_skipped("unknown_user"),
                _ => {}
            }
        }
        Ok(outcomes)
    }

    /// Parses a message: the event, or why it is bad input.
    fn parse(&self, m: &Incoming) -> Result<PortalEvent, String> {
        match &m.forced_rejection {
            Some(reason) => Err(reason.clone()),
            None if m.size > MAX_BODY_BYTES => Err(format!(
                "body is {} bytes, more than the 64 KiB the contract allows",
                m.size
            )),
            None => parse_event(&m.body, &self.rules).map_err(|r| r.reason),
        }
    }

    /// Processes a batch in order, in segments: each directory event alone,
    /// and every run of other messages between them together. The directory
    /// changes only at a directory event, so one read of it serves a whole
    /// run of module events, and each sees the directory as if the messages
    /// had been ingested one by one.
    async fn process_batch(
        &self,
        conn: &mut AnyConnection,
        batch: &[Incoming],
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, IngestOutcome)>, StoreError> {
        let parsed: Vec<_> = batch.iter().map(|m| self.parse(m)).collect();
        let changes_directory = |p: &Result<PortalEvent, String>| match p {
            Ok(e) => !matches!(e.body, EventBody::Module(_)),
            Err(_) => false,
        };
        let mut out = Vec::with_capacity(batch.len());
        let mut start = 0;
        while start < batch.len() {
            let end = if changes_directory(&parsed[start]) {
                start + 1
            } else {
                (start..batch.len())
                    .find(|&i| changes_directory(&parsed[i]))
                    .unwrap_or(batch.len())
            };
            self.process_segment(conn, &batch[start..end], &parsed[start..end], now, &mut out)
                .await?;
            start = end;
        }
        Ok(out)
    }

    /// One segment of [`Self::process_batch`]: bad input to quarantine, the
    /// event rows in one multi-row insert, then each new event applied in
    /// order; outcomes are pushed to `out` in the order of `batch`.
    async fn process_segment(
        &self,
        conn: &mut AnyConnection,
        batch: &[Incoming],
        parsed: &[Result<PortalEvent, String>],
        now: DateTime<Utc>,
        out: &mut Vec<(String, IngestOutcome)>,
    ) -> Result<(), StoreError> {
        let mut done: Vec<Option<(String, IngestOutcome)>> = vec![None; batch.len()];
        quarantine_rejected(conn, batch, parsed, now, &mut done).await?;
        let events: Vec<(usize, &PortalEvent)> = parsed
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().ok().map(|e| (i, e)))
            .collect();
        let resolved = resolve_modules(conn, &events).await?;
        let payloads: Vec<_> = events
            .iter()
            .map(|(i, _)| String::from_utf8_lossy(&batch[*i].body))
            .collect();
        let rows: Vec<NewEvent<'_>> = events
            .iter()
            .zip(&payloads)
            .zip(&resolved)
            .map(|(((_, event), payload), r)| NewEvent {
                id: event.id.as_str(),
                event_type: event.event_type.as_str(),
                agb_code: event.agb_code().map(|a| a.as_str()),
                occurred_at_ms: ms(event.time),
                received_at_ms: ms(now),
                payload,
                state: r
                    .as_ref()
                    .map_or(EventState::Accepted, |(res, _)| res.routing.event_state()),
                detail: r.as_ref().and_then(|(_, d)| d.as_deref()),
            })
            .collect();
        let inserted = ev::insert_events(conn, &rows).await?;
        let mut firsts: Vec<(usize, &PortalEvent, plan::First<'_>)> = Vec::new();
        for (((i, event), new), r) in events.iter().zip(inserted).zip(&resolved) {
            let (i, label) = (*i, event.event_type.as_str().to_owned());
            match r {
                _ if !new => {
                    info!(event_id = %event.id, event_type = event.event_type.as_str(),
                        "duplicate event id: nothing new");
                    let event_id = event.id.to_string();
                    done[i] = Some((label, IngestOutcome::Duplicate { event_id }));
                }
                Some((res, _)) => firsts.push((
                    i,
                    event,
                    plan::First {
                        event_id: event.id.as_str(),
                        resolution: res,
                        timing: self.timing(event.time, now),
                    },
                )),
                None => {
                    let span = info_span!("event", event_id = %event.id, event_type = event.event_type.as_str());
                    let outcome = self.apply(conn, event, now).instrument(span).await?;
                    done[i] = Some((label, outcome));
                }
            }
        }
        plan_firsts(conn, firsts, &mut done).await?;
        for d in done {
            out.push(d.ok_or_else(|| {
                StoreError::Corrupt("a message of the batch got no outcome".into())
            })?);
        }
        Ok(())
    }

    async fn plan(
        &self,
        conn: &mut AnyConnection,
        event: &PortalEvent,
        planned: &[PlannedDelivery],
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        self.plan_for(conn, event.id.as_str(), event.time, planned, now)
            .await
    }

    async fn plan_for(
        &self,
        conn: &mut AnyConnection,
        event_id: &str,
        event_time: DateTime<Utc>,
        planned: &[PlannedDelivery],
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let t = self.timing(event_time, now);
        let mut served = plan::Served::of(conn, event_id).await?;
        let planned: Vec<&PlannedDelivery> = planned.iter().collect();
        let done = plan::plan_deliveries(conn, event_id, &planned, t, true, &mut served).await?;
        Ok(done.iter().filter(|p| **p == plan::Planned::Added).count())
    }

    /// New deliveries are due now and have until the event time plus
    /// `retry.deadline`.
    fn timing(&self, event_time: DateTime<Utc>, now: DateTime<Utc>) -> plan::Timing {
        let span = self.deadline;
        plan::Timing::due_now(now, plan::Deadline::FromEventTime { event_time, span })
    }

    /// Applies one event on its own: a directory event (the module events of
    /// a segment are planned together by `plan_firsts`), each body by its
    /// own method.
    async fn apply(
        &self,
        conn: &mut AnyConnection,
        event: &PortalEvent,
        now: DateTime<Utc>,
    ) -> Result<IngestOutcome, StoreError> {
        match &event.body {
            EventBody::Module(m) => self.apply_module(conn, event, m, now).await,
            EventBody::GebruikerBijgewerkt(rec) => {
                self.apply_user_update(conn, event, rec, now).await
            }
            EventBody::OrganisatieBijgewerkt {
                agb_code,
                naam,
                versie,
            } => {
                self.apply_organisation_update(conn, event, agb_code, naam, *versie, now)
                    .await
            }
            EventBody::EmailadresGewijzigd {
                gebruikersnummer,
                oud_email,
                nieuw_email,
                versie,
            } => {
                let change = AddressChange {
                    gebruikersnummer,
                    oud_email,
                    nieuw_email,
                    versie: *versie,
                };
                self.apply_address_change(conn, event, change, now).await
            }
            EventBody::CertificaatIngetrokken {
                gebruikersnummer,
                versie,
                ..
            } => {
                self.apply_revocation(conn, event, gebruikersnummer, *versie, now)
                    .await
            }
        }
    }

    /// A module event on its own: `process_segment` reads the directory once
    /// for all module events of a segment; these are the same steps for one.
    async fn apply_module(
        &self,
        conn: &mut AnyConnection,
        event: &PortalEvent,
        m: &ModuleEvent,
        now: DateTime<Utc>,
    ) -> Result<IngestOutcome, StoreError> {
        let id = event.id.to_string();
        let snapshot = dir::agb_snapshot(conn, &m.agb_code).await?;
        let actor = match &m.actor {
            Some(a) => dir::get_user(conn, a).await?,
            None => None,
        };
        let (n, res) = self
            .resolve_and_plan(
                conn,
                &id,
                m,
                &snapshot,
                actor.as_ref(),
                plan::Served::fresh(),
                event.time,
                now,
            )
            .await?;
        Ok(accepted(id, n, &res))
    }

    /// `gebruiker.bijgewerkt`: the record stored when newer; a revoked user's
    /// pending mail cancelled, otherwise recent module events resolved again.
    async fn apply_user_update(
        &self,
        conn: &mut AnyConnection,
        event: &PortalEvent,
        rec: &UserRecord,
        now: DateTime<Utc>,
    ) -> Result<IngestOutcome, StoreError> {
        let check = dir::apply_user(conn, rec, ms(now)).await?;
        let mut n = 0;
        if check != VersionCheck::Stale {
            if rec.status == UserStatus::Ingetrokken {
                // Known from now on: pending mail to this user stops at once.
                deliveries::cancel_for_revoked(
                    conn,
                    rec.gebruikersnummer.as_str(),
                    "cancelled: the recipient's certificate was revoked",
                )
                .await?;
            } else {
                n = self.reresolve_recent(conn, rec, now).await?;
            }
        }
        let out = self
            .directory_outcome(
                conn,
                event.id.as_str(),
                rec.gebruikersnummer.as_ref(),
                check,
            )
            .await?;
        Ok(match out {
            IngestOutcome::Applied {
                event_id,
                unroutable_notice,
                ..
            } => IngestOutcome::Applied {
                event_id,
                deliveries: n,
                unroutable_notice,
            },
            other => other,
        })
    }

    /// `organisatie.bijgewerkt`: the practice's name stored when newer.
    async fn apply_organisation_update(
        &self,
        conn: &mut AnyConnection,
        event: &PortalEvent,
        agb_code: &AgbCode,
        naam: &str,
        versie: i64,
        now: DateTime<Utc>,
    ) -> Result<IngestOutcome, StoreError> {
        let check = dir::apply_organisation(conn, agb_code, naam, versie, ms(now)).await?;
        self.directory_outcome(conn, event.id.as_str(), agb_code.as_str(), check)
            .await
    }

    /// `gebruiker.emailadres_gewijzigd`: the new address stored when newer,
    /// and the mails about the change planned.
    async fn apply_address_change(
        &self,
        conn: &mut AnyConnection,
        event: &PortalEvent,
        change: AddressChange<'_>,
        now: DateTime<Utc>,
    ) -> Result<IngestOutcome, StoreError> {
        let id = event.id.to_string();
        let nr = change.gebruikersnummer;
        let before = dir::get_user_for_update(conn, self.store.backend(), nr).await?;
        match dir::set_email(conn, nr, change.nieuw_email, change.versie, ms(now)).await? {
            UserChange::Applied => {}
            other => {
                return self
                    .skipped_change(conn, &id, nr.as_str(), other, ms(now))
                    .await;
            }
        }
        // Another instance may have created the user between the read and
        // the update (PostgreSQL, READ COMMITTED): the address it replaced is
        // then the one the event names.
        let old_email = before
            .map(|b| b.email)
            .unwrap_or_else(|| change.oud_email.clone());
        let after = dir::get_user(conn, nr)
            .await?
            .ok_or_else(|| StoreError::Corrupt("user vanished during an address change".into()))?;
        let mut planned = recipients::address_change_mails(&after, &old_email);
        if after.status != UserStatus::Actief {
            // A revoked user gets nothing, not even this confirmation.
            planned.retain(|p| p.users.is_empty());
        }
        let n = self.plan(conn, event, &planned, now).await?;
        ev::set_event_state(conn, &id, EventState::Applied, None).await?;
        Ok(IngestOutcome::Applied {
            event_id: id,
            deliveries: n,
            unroutable_notice: false,
        })
    }

    /// `certificaat.ingetrokken`: the user revoked when newer, its pending
    /// mail cancelled, and the contact persons of its AGB codes told.
    async fn apply_revocation(
        &self,
        conn: &mut AnyConnection,
        event: &PortalEvent,
        nr: &Gebruikersnummer,
        versie: i64,
        now: DateTime<Utc>,
    ) -> Result<IngestOutcome, StoreError> {
        let id = event.id.to_string();
        let links_before = dir::user_links(conn, nr).await?;
        let was_active = dir::get_user(conn, nr)
            .await?
            .is_some_and(|u| u.status == UserStatus::Actief);
        match dir::revoke(conn, nr, versie, ms(now)).await? {
            UserChange::Applied => {}
            other => {
                return self
                    .skipped_change(conn, &id, nr.as_str(), other, ms(now))
                    .await;
            }
        }
        let user = dir::get_user(conn, nr)
            .await?
            .ok_or_else(|| StoreError::Corrupt("user vanished during a revocation".into()))?;
        let cancelled = deliveries::cancel_for_revoked(
            conn,
            nr.as_str(),
            "cancelled: the recipient's certificate was revoked",
        )
        .await?;
        // Notices only when this revocation ended an active certificate:
        // a repeat (or one after a `gebruiker.bijgewerkt` already revoked it) says nothing new.
        let notify: &[(AgbCode, bool)] = if was_active { &links_before } else { &[] };
        let (n, no_cp) = self
            .plan_revocation_notices(conn, event, &user, notify, now)
            .await?;
        let detail = revocation_detail(cancelled, &no_cp);
        ev::set_event_state(conn, &id, EventState::Applied, Some(&detail)).await?;
        if !no_cp.is_empty() {
            warn!("revocation notice unroutable: no active contact person");
        }
        info!(cancelled, notices = n, "certificate revoked");
        Ok(IngestOutcome::Applied {
            event_id: id,
            deliveries: n,
            unroutable_notice: !no_cp.is_empty(),
        })
    }

    /// The revocation notices for each of `links` (AGB code, whether the user
    /// was tekenbevoegd there): how many were added, and the AGB codes with
    /// no active contact person to tell.
    async fn plan_revocation_notices(
        &self,
        conn: &mut AnyConnection,
        event: &PortalEvent,
        user: &DirectoryUser,
        links: &[(AgbCode, bool)],
        now: DateTime<Utc>,
    ) -> Result<(usize, Vec<String>), StoreError> {
        let mut n = 0;
        let mut no_cp = Vec::new();
        for (agb, was_signer) in links {
            let snap = dir::agb_snapshot(conn, agb).await?;
            let planned = recipients::revocation_notices(user, *was_signer, &snap);
            if planned.is_empty() {
                no_cp.push(agb.to_string());
            }
            n += self.plan(conn, event, &planned, now).await?;
        }
        Ok((n, no_cp))
    }

    async fn directory_outcome(
        &self,
        conn: &mut AnyConnection,
        id: &str,
        subject: &str,
        check: VersionCheck,
    ) -> Result<IngestOutcome, StoreError> {
        if check == VersionCheck::Stale {
            ev::set_event_state(
                conn,
                id,
                EventState::Stale,
                Some("versie not higher than stored: ignored"),
            )
            .await?;
            dir::log_skipped(conn, "event", subject, "stale", ms(Utc::now())).await?;
            info!("stale directory update ignored");
            Ok(IngestOutcome::Stale {
                event_id: id.to_owned(),
            })
        } else {
            ev::set_event_state(conn, id, EventState::Applied, None).await?;
            Ok(IngestOutcome::Applied {
                event_id: id.to_owned(),
                deliveries: 0,
                unroutable_notice: false,
            })
        }
    }

    async fn skipped_change(
        &self,
        conn: &mut AnyConnection,
        id: &str,
        subject: &str,
        change: UserChange,
        now_ms: i64,
    ) -> Result<IngestOutcome, StoreError> {
        match change {
            UserChange::UnknownUser => {
                ev::set_event_state(
                    conn,
                    id,
                    EventState::Ignored,
                    Some("user unknown to the directory: nothing sent"),
                )
                .await?;
                dir::log_skipped(conn, "event", subject, "unknown_user", now_ms).await?;
                warn!("directory update for an unknown user: recorded, nothing sent");
                Ok(IngestOutcome::UnknownUser {
                    event_id: id.to_owned(),
                })
            }
            _ => {
                ev::set_event_state(
                    conn,
                    id,
                    EventState::Stale,
                    Some("versie not higher than stored: ignored"),
                )
                .await?;
                dir::log_skipped(conn, "event", subject, "stale", now_ms).await?;
                Ok(IngestOutcome::Stale {
                    event_id: id.to_owned(),
                })
            }
        }
    }
}

impl Ingestor {
    /// Resolves a module event against the directory as it is now, plans the
    /// deliveries that do not exist yet, and records the event's state.
    #[allow(clippy::too_many_arguments)]
    async fn resolve_and_plan(
        &self,
        conn: &mut AnyConnection,
        id: &str,
        m: &ModuleEvent,
        snapshot: &AgbSnapshot,
        actor: Option<&DirectoryUser>,
        served: plan::Served,
        event_time: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(usize, recipients::Resolution), StoreError> {
        let res = recipients::resolve_module(m, id, snapshot, actor);
        let report =
            plan::plan_resolution_from(conn, id, &res, self.timing(event_time, now), true, served)
                .await?;
        let n = report.added.len();
        if report.had_module_mail {
            // Its mail is on its way or out: what the directory says now
            // (a user who lost the right since) changes nothing about that.
            return Ok((n, res));
        }
        let detail = event_detail(m, &res);
        ev::set_event_state(conn, id, res.routing.event_state(), detail.as_deref()).await?;
        if res.routing == Routing::Unroutable || res.unroutable_notice {
            warn!(agb_code = %m.agb_code, "unroutable: no recipient and no active contact person");
        }
        Ok((n, res))
    }

    /// A user appeared or changed: module events of its AGB codes received
    /// within `recipients.late_directory_window` are resolved again, so a user
    /// whose record arrived just after the event still gets its mail. Only
    /// deliveries that do not exist yet are added.
    async fn reresolve_recent(
        &self,
        conn: &mut AnyConnection,
        user: &UserRecord,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        if self.late_window.is_zero() {
            return Ok(0);
        }
        let since = ms(now) - self.late_window.as_millis() as i64;
        let mut added = 0;
        for link in &user.koppelingen {
            for row in ev::recent_for_agb(conn, link.agb_code.as_str(), since).await? {
                added += self.reresolve_event(conn, &row, now).await?;
            }
        }
        if added > 0 {
            info!(
                added,
                "late directory update: deliveries added to recent events"
            );
        }
        Ok(added)
    }

    /// Resolves one stored module event again against the current directory
    /// and adds the deliveries that are missing (a late directory update;
    /// `replay events` does the same through [`crate::pipeline::recovery`],
    /// with its own deadline rule and audit row).
    async fn reresolve_event(
        &self,
        conn: &mut AnyConnection,
        row: &ev::EventRow,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let Ok(event) = parse_event(row.payload.as_bytes(), &self.rules) else {
            return Ok(0);
        };
        let EventBody::Module(m) = &event.body else {
            return Ok(0);
        };
        let snapshot = dir::agb_snapshot(conn, &m.agb_code).await?;
        let actor = match &m.actor {
            Some(a) => dir::get_user(conn, a).await?,
            None => None,
        };
        let served = plan::Served::of(conn, &row.id).await?;
        let (n, _) = self
            .resolve_and_plan(
                conn,
                &row.id,
                m,
                &snapshot,
                actor.as_ref(),
                served,
                event.time,
                now,
            )
            .await?;
        Ok(n)
    }
}

/// Writes the quarantine row of a bad message; returns its id.
async fn keep_in_quarantine(
    conn: &mut AnyConnection,
    m: &Incoming,
    hint: &crate::domain::event::EnvelopeHint,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    ev::quarantine(
        conn,
        &NewQuarantine {
            received_at_ms: ms(now),
            source: m.source.as_str(),
            routing_key: m.routing_key.as_deref(),
            event_id: hint.id.as_deref(),
            event_type: hint.event_type.as_deref(),
            reason,
            raw: &m.body,
            size: m.size,
        },
    )
    .await
}

/// The fields of a `gebruiker.emailadres_gewijzigd` event.
struct AddressChange<'a> {
    gebruikersnummer: &'a Gebruikersnummer,
    oud_email: &'a EmailAddress,
    nieuw_email: &'a EmailAddress,
    versie: i64,
}

/// What a revocation's event row says: the pending mail it cancelled, and
/// the AGB codes whose contact persons could not be told.
fn revocation_detail(cancelled: u64, no_cp: &[String]) -> String {
    format!(
        "revoked; {cancelled} pending deliveries cancelled{}",
        if no_cp.is_empty() {
            String::new()
        } else {
            format!(
                "; no active contact person to notify for AGB {}",
                no_cp.join(", ")
            )
        }
    )
}

/// What [`Ingestor::ingest_split`] got done.
#[derive(Debug)]
pub struct Ingested {
    /// How many messages from the front of the batch are committed (or
    /// kept in quarantine): the caller may ack these.
    pub committed: usize,
    /// Their outcomes, in order.
    pub outcomes: Vec<IngestOutcome>,
    /// Why the rest was not: the caller holds those messages and tries
    /// again later.
    pub error: Option<StoreError>,
}

/// A module event's outcome once its deliveries are planned (logged in the
/// caller's event span).
fn accepted(event_id: String, deliveries: usize, res: &recipients::Resolution) -> IngestOutcome {
    let routing = res.routing;
    info!(deliveries, routing = routing.as_str(), "event accepted");
    IngestOutcome::Accepted {
        event_id,
        deliveries,
        routing,
        unroutable_notice: res.unroutable_notice,
    }
}

/// The module event in `e`, if it is one.
fn module_of(e: &PortalEvent) -> Option<&ModuleEvent> {
    match &e.body {
        EventBody::Module(m) => Some(m),
        _ => None,
    }
}

/// Bad input of a segment: kept in quarantine with its reason (or, for a
/// redrive, reported and left where it is).
async fn quarantine_rejected(
    conn: &mut AnyConnection,
    batch: &[Incoming],
    parsed: &[Result<PortalEvent, String>],
    now: DateTime<Utc>,
    done: &mut [Option<(String, IngestOutcome)>],
) -> Result<(), StoreError> {
    for (i, (m, p)) in batch.iter().zip(parsed).enumerate() {
        let Err(reason) = p else { continue };
        let reason = reason.clone();
        let hint = envelope_hint(&m.body);
        let t = known_type_label(hint.event_type.as_deref()).to_owned();
        if !m.quarantine_on_reject {
            info!(event_id = hint.id.as_deref(), %reason, "redriven message still bad input");
            done[i] = Some((t, IngestOutcome::Rejected { reason }));
            continue;
        }
        let id = keep_in_quarantine(conn, m, &hint, &reason, now).await?;
        warn!(quarantine_id = id, event_id = hint.id.as_deref(), %reason, "bad input quarantined");
        done[i] = Some((
            t,
            IngestOutcome::Quarantined {
                quarantine_id: id,
                reason,
            },
        ));
    }
    Ok(())
}

/// The module events of a segment resolved against one directory read
/// (before their rows are written, so that each row goes in with its final
/// state, and the deliveries of every new event take a few multi-row
/// statements for the segment); `None` for the other events.
async fn resolve_modules(
    conn: &mut AnyConnection,
    events: &[(usize, &PortalEvent)],
) -> Result<Vec<Option<(recipients::Resolution, Option<String>)>>, StoreError> {
    let modules: Vec<&ModuleEvent> = events.iter().filter_map(|(_, e)| module_of(e)).collect();
    let (snapshots, actors) = if modules.is_empty() {
        Default::default()
    } else {
        let codes: Vec<AgbCode> = modules.iter().map(|m| m.agb_code.clone()).collect();
        let numbers: Vec<_> = modules.iter().filter_map(|m| m.actor.clone()).collect();
        (
            dir::agb_snapshots(conn, &codes).await?,
            dir::get_users(conn, &numbers).await?,
        )
    };
    let mut resolved = Vec::with_capacity(events.len());
    for (_, event) in events {
        let Some(m) = module_of(event) else {
            resolved.push(None);
            continue;
        };
        let snapshot = snapshots.get(&m.agb_code).ok_or_else(|| {
            StoreError::Corrupt("directory snapshot missing for an AGB code".into())
        })?;
        let actor = m.actor.as_ref().and_then(|a| actors.get(a));
        let res = recipients::resolve_module(m, event.id.as_str(), snapshot, actor);
        let detail = event_detail(m, &res);
        resolved.push(Some((res, detail)));
    }
    Ok(resolved)
}

/// Plans the deliveries of a segment's new module events together, and
/// gives each its outcome.
async fn plan_firsts(
    conn: &mut AnyConnection,
    firsts: Vec<(usize, &PortalEvent, plan::First<'_>)>,
    done: &mut [Option<(String, IngestOutcome)>],
) -> Result<(), StoreError> {
    let plans: Vec<plan::First<'_>> = firsts.iter().map(|(_, _, f)| *f).collect();
    let added = plan::plan_first_many(conn, &plans).await?;
    for ((i, event, first), n) in firsts.into_iter().zip(added) {
        let res = first.resolution;
        let span =
            info_span!("event", event_id = %event.id, event_type = event.event_type.as_str());
        let outcome = span.in_scope(|| {
            if res.routing == Routing::Unroutable || res.unroutable_notice {
                warn!(agb_code = ?event.agb_code().map(|a| a.as_str()), "unroutable: no recipient and no active contact person");
            }
            accepted(event.id.to_string(), n, res)
        });
        done[i] = Some((event.event_type.as_str().to_owned(), outcome));
    }
    Ok(())
}

/// What an event's row says about its resolution, when there is something
/// to say: why nobody can be mailed, and the resolution's notes.
fn event_detail(m: &ModuleEvent, res: &recipients::Resolution) -> Option<String> {
    let notes = (!res.notes.is_empty()).then(|| format!("; {}", res.notes.join("; ")));
    let notes = notes.unwrap_or_default();
    match res.routing {
        Routing::Unroutable => Some(format!(
            "no active user with the right and no active contact person for AGB {}{notes}",
            m.agb_code
        )),
        Routing::NoRecipientNotice => Some(format!(
            "no active recipient: contact persons notified{notes}"
        )),
        Routing::Routed => (!notes.is_empty()).then(|| notes.trim_start_matches("; ").to_owned()),
    }
}

/// The metrics label of a message's type: a known type, or "unknown" (never
/// free text from the message).
fn known_type_label(t: Option<&str>) -> &'static str {
    t.and_then(crate::domain::event::EventType::parse)
        .map_or("unknown", |t| t.as_str())
}

/// The message of a caught panic.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// The same data error again (a batch of one is not tried twice).
fn err_again(e: &StoreError) -> StoreError {
    StoreError::BadMessage(e.to_string())
}
