//! Dispatch: claim due deliveries under a lease, read what the round needs
//! in one query per table (events, organisations), render, check each
//! recipient again right before its send ([`super::recheck`]), send
//! concurrently, classify, and record the
//! attempts and next states with group commit ([`super::recorder`]).
//! Retries are due times in the database, never held messages.

use super::escalation;
use super::plan;
use super::recheck::Rechecker;
use super::recorder::Recorder;
use crate::domain::bounce::{self, BounceAddress, BounceKey};
use crate::domain::delivery::{
    self as delivery, AttemptOutcome, Attempted, MailKind, Progress, RetryPolicy, StateRules,
    Unknown,
};
use crate::domain::event::{EventBody, EventType, ModuleEvent, ValidationRules, parse_event};
use crate::domain::recipients::{self, AddressCheck, Addressee, Rule, Rules};
use crate::mail::classify::redact_addresses;
use crate::mail::relay::{Breaker, CircuitState, RateLimiter, RefusalVerdict};
use crate::mail::{Mailer, SendReport, context, message};
use crate::ops::metrics::Metrics;
use crate::store::deliveries::{self as dl, AttemptRecord, Claimed, Finish, Transition};
use crate::store::{Store, StoreError, directory as dir, events as ev, from_ms, ms};
use crate::templates::{RenderedMail, Templates};
use chrono::{DateTime, Utc};
use futures_util::{FutureExt, StreamExt};
use lettre::message::Mailbox;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

pub use crate::domain::delivery::MAX_POLICY_RETRIES;

/// Deliveries of a round in flight at once, per relay connection: enough
/// that rendering and the group commit overlap the sends, few enough that a
/// shutdown has little to hand back.
pub const IN_FLIGHT_PER_CONNECTION: usize = 8;

/// The most deliveries one dispatcher has in flight (rendering, sending, or
/// sent and waiting for their group's commit). It bounds what a `kill -9`
/// can make arrive twice: every other delivery's outcome is committed.
pub fn max_in_flight(concurrency: usize, batch_size: u32) -> usize {
    (concurrency.max(1) * IN_FLIGHT_PER_CONNECTION).min(batch_size.max(1) as usize)
}

/// What dispatch needs from the settings.
#[derive(Clone)]
pub struct DispatchConfig {
    pub from: Mailbox,
    pub portal_url: String,
    pub rules: ValidationRules,
    pub retry: RetryPolicy,
    pub batch_size: u32,
    pub lease: Duration,
    pub idle_poll: Duration,
    pub concurrency: usize,
    pub breaker_open_for: Duration,
    /// Deadline of notices the dispatcher creates itself (`retry.deadline`).
    pub deadline: Duration,
    /// `smtp.bounce_address` with `smtp.bounce_key`: each mail's envelope
    /// sender and `X-Notifier-Tag` then name its delivery; `None`: the
    /// envelope sender is the From address.
    pub bounce_tagging: Option<(BounceAddress, BounceKey)>,
}

/// The dispatch loop and its collaborators.
#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    templates: Arc<Templates>,
    mailer: Arc<Mailer>,
    cfg: DispatchConfig,
    owner: String,
    metrics: Metrics,
    breaker: Arc<Breaker>,
    limiter: Arc<RateLimiter>,
    /// Set at shutdown: no send starts after it.
    stopping: Arc<AtomicBool>,
    /// Sends on the wire now (started, outcome not yet recorded), so that a
    /// send still running when `shutdown.grace` ends is recorded as `unknown`.
    on_wire: Arc<std::sync::Mutex<HashMap<String, OnWire>>>,
    /// One permit per relay connection: a delivery counts as on the wire
    /// only once it holds one.
    wire: Arc<Semaphore>,
    /// Woken when ingest has committed deliveries that are due now.
    wake: Arc<Notify>,
    /// Every delivery this dispatcher has claimed and not yet recorded
    /// (the running batch and the one claimed ahead): their leases are
    /// renewed, however long a send or the rate limit takes, because a
    /// lease that ran out under a send would let another instance send it
    /// again.
    held: Arc<std::sync::Mutex<HashSet<String>>>,
}

/// Deliveries claimed for one round, with what the round read for them.
struct Batch {
    claimed: Vec<Claimed>,
    data: RoundData,
}

/// What a round reads once for all its deliveries.
#[derive(Default)]
struct RoundData {
    events: HashMap<String, ev::EventRow>,
    /// Each module event of the round, parsed once (or why it cannot be).
    parsed: HashMap<String, Result<ModuleEvent, String>>,
    praktijk: HashMap<String, String>,
}

/// What the re-check decided for a delivery.
enum Recheck {
    /// Send to `address` (lower-cased, as compared) written `rcpt` (as
    /// registered); the directory was read at `at_ms`.
    Send {
        address: String,
        rcpt: String,
        at_ms: i64,
        /// Why the mail reaches `address`, from the users it serves now.
        addressee: Addressee,
    },
    Cancel(String),
}

/// A delivery's mail, prepared before the re-check.
struct Prepared {
    rendered: Result<RenderedMail, String>,
    /// The addressee the mail was rendered for (the planned one).
    addressee: Addressee,
    /// Built for the planned address (`None` when that failed: it is built
    /// again, and its error kept, once the address is known).
    prebuilt: Option<Vec<u8>>,
    /// The delivery's signed bounce tag, when bounces are tagged (one HMAC
    /// per delivery, for the header and the envelope sender alike).
    tag: Option<String>,
}

/// A delivery on its way to the relay.
struct Sending<'a> {
    d: &'a Claimed,
    kind: MailKind,
    event: &'a ev::EventRow,
    /// Lower-cased: what the breaker and the delivery record compare.
    address: &'a str,
    /// The address as registered: what RCPT TO carries.
    rcpt: &'a str,
    /// The envelope sender (MAIL FROM).
    sender: &'a str,
    checked_at: Option<i64>,
}

/// A send in flight.
struct OnWire {
    delivery: Claimed,
    kind: MailKind,
    checked_at: Option<i64>,
    started: chrono::DateTime<Utc>,
    clock: Instant,
}

/// Counts of one `--until-idle` run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DispatchSummary {
    pub sent: u64,
    pub retried: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl Dispatcher {
    /// A dispatcher owning leases as `owner` (unique per process).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        templates: Arc<Templates>,
        mailer: Arc<Mailer>,
        cfg: DispatchConfig,
        metrics: Metrics,
        breaker: Arc<Breaker>,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        Self {
            store,
            templates,
            mailer,
            owner: format!("{}-{}", hostname(), uuid::Uuid::new_v4()),
            metrics,
            breaker,
            limiter,
            stopping: Arc::new(AtomicBool::new(false)),
            on_wire: Arc::new(std::sync::Mutex::new(HashMap::new())),
            wire: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            wake: Arc::new(Notify::new()),
            held: Arc::new(std::sync::Mutex::new(HashSet::new())),
            cfg,
        }
    }

    /// Wakes the dispatch loop: call it after committing deliveries that are
    /// due now, so they go out without waiting for `dispatch.idle_poll`.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The relay circuit, for readiness.
    pub fn breaker(&self) -> Arc<Breaker> {
        self.breaker.clone()
    }

    /// Runs until `shutdown` turns true; in-flight sends get `grace` to finish,
    /// then their leases are released.
    pub async fn run(&self, shutdown: CancellationToken, grace: Duration) {
        tokio::select! {
            () = self.rounds(&shutdown, grace) => {}
            never = self.renew_leases() => match never {},
        }
        self.release().await;
    }

    /// The rounds of [`Self::run`]. The next batch is claimed and read while
    /// the current one sends its second half, so the relay connections do
    /// not wait for the claim and the round's reads.
    async fn rounds(&self, shutdown: &CancellationToken, grace: Duration) {
        let mut ahead: Option<Batch> = None;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let mut no_summary = None;
            let step = self.step(ahead.take(), &mut no_summary);
            tokio::pin!(step);
            let (result, next) = tokio::select! {
                r = &mut step => r,
                () = shutdown.cancelled() => {
                    // No new send starts from here; those on the wire finish
                    // and are recorded, within the grace.
                    self.stopping.store(true, Ordering::SeqCst);
                    match tokio::time::timeout(grace, &mut step).await {
                        Ok(r) => r,
                        Err(_) => {
                            self.abandon_on_wire().await;
                            (Ok(0), None)
                        }
                    }
                }
            };
            ahead = next;
            match result {
                Ok(0) => {
                    let pause = match self.breaker.state() {
                        CircuitState::Open => self.breaker.wait().max(Duration::from_millis(50)),
                        _ => self.cfg.idle_poll,
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.wake.notified(), if self.breaker.state() != CircuitState::Open => {}
                        () = shutdown.cancelled() => {}
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    error!(error = %e, "dispatch round failed; retrying after a pause");
                    tokio::select! {
                        _ = tokio::time::sleep(self.cfg.idle_poll.max(Duration::from_secs(1))) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            }
        }
        // A batch claimed ahead and never started goes back with the rest
        // of this dispatcher's leases in `release`.
    }

    /// Sends `ahead` (or a batch claimed now) and, once half of its
    /// deliveries have started, claims the next one; returns how many it
    /// handled and the next batch.
    async fn step(
        &self,
        ahead: Option<Batch>,
        summary: &mut Option<DispatchSummary>,
    ) -> (Result<usize, StoreError>, Option<Batch>) {
        let batch = match ahead {
            Some(b) => b,
            None => match self.prepare().await {
                Ok(b) => b,
                Err(e) => return (Err(e), None),
            },
        };
        let n = batch.claimed.len();
        if n == 0 {
            return (Ok(0), None);
        }
        let (started, half_started) = tokio::sync::oneshot::channel();
        let (sent, next) = tokio::join!(self.execute(batch, Some(started), summary), async {
            if half_started.await.is_err() || self.stopping.load(Ordering::SeqCst) {
                return None;
            }
            match self.prepare().await {
                Ok(b) if !b.claimed.is_empty() => Some(b),
                Ok(_) => None,
                Err(e) => {
                    warn!(error = %e, "cannot claim the next batch ahead; claiming it after this round");
                    None
                }
            }
        });
        (sent.map(|()| n), next)
    }
    /// `shutdown.grace` ended with sends on the wire: each is recorded as an
    /// `unknown` attempt (the relay may have the mail) and is due at once,
    /// so the next run sends it again with the same Message-ID rather than
    /// not at all.
    async fn abandon_on_wire(&self) {
        let abandoned: Vec<OnWire> = self
            .on_wire
            .lock()
            .expect("on-wire set")
            .drain()
            .map(|(_, w)| w)
            .collect();
        warn!(
            sends = abandoned.len(),
            "shutdown grace passed with sends in flight: recording them as unknown and releasing the rest"
        );
        for w in abandoned {
            let attempt = AttemptRecord {
                started_at_ms: ms(w.started),
                checked_at_ms: w.checked_at,
                duration_ms: w.clock.elapsed().as_millis() as i64,
                outcome: AttemptOutcome::Unknown,
                smtp_code: None,
                enhanced_code: None,
                detail: "send abandoned at shutdown: no reply within shutdown.grace; the relay may have the mail (it is sent again with the same Message-ID)".into(),
                policy_rejection: false,
                template_source: Some(self.templates.provenance(w.kind).source.clone()),
                template_version: Some(self.templates.provenance(w.kind).version.clone()),
            };
            let next = Transition::Retry {
                due_ms: ms(Utc::now()),
                retry_step: w.delivery.retry_step,
                error: attempt.detail.clone(),
                sent_to: None,
            };
            self.metrics.smtp_attempt(AttemptOutcome::Unknown.as_str());
            let recorded = async {
                let mut tx = self.store.begin().await?;
                dl::finish(&mut tx, &w.delivery.id, &self.owner, Some(&attempt), &next).await?;
                tx.commit().await?;
                Ok::<_, StoreError>(())
            }
            .await;
            if let Err(e) = recorded {
                warn!(delivery_id = %w.delivery.id, kind = w.kind.as_str(), error = %e,
                    "cannot record an abandoned send; its lease runs out after dispatch.lease and it is sent again");
            }
        }
    }

    /// Releases every lease this dispatcher holds.
    pub async fn release(&self) {
        match self.store.pool().acquire().await {
            Ok(mut c) => match dl::release_leases(&mut c, &self.owner).await {
                Ok(n) if n > 0 => info!(released = n, "leases released"),
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "could not release leases; they expire after dispatch.lease")
                }
            },
            Err(e) => {
                warn!(error = %e, "could not release leases; they expire after dispatch.lease")
            }
        }
        self.mailer.close().await;
    }

    /// Sends everything that is due now, then returns (`notifier dispatch --until-idle`).
    pub async fn run_until_idle(&self) -> Result<DispatchSummary, StoreError> {
        let mut summary = Some(DispatchSummary::default());
        let mut ahead = None;
        loop {
            if self.breaker.state() == CircuitState::Open {
                warn!("relay circuit open: stopping; the rest stays pending");
                break;
            }
            let (n, next) = tokio::select! {
                r = self.step(ahead.take(), &mut summary) => r,
                never = self.renew_leases() => match never {},
            };
            ahead = next;
            match n {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    self.release().await;
                    return Err(e);
                }
            }
        }
        self.release().await;
        Ok(summary.unwrap_or_default())
    }

    /// Claims up to a batch of due deliveries (one when the relay circuit
    /// is half open, none while it is open) and reads what they need; the
    /// claimed ones join the leases this dispatcher renews.
    async fn prepare(&self) -> Result<Batch, StoreError> {
        let limit = match self.breaker.state() {
            CircuitState::Open => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Closed => self.cfg.batch_size,
        };
        if limit == 0 {
            return Ok(Batch {
                claimed: Vec::new(),
                data: RoundData::default(),
            });
        }
        let began = Instant::now();
        let now = Utc::now();
        let claimed = {
            let mut tx = self.store.begin().await?;
            let c = dl::claim(
                &mut tx,
                self.store.backend(),
                &self.owner,
                ms(now),
                ms(now) + self.cfg.lease.as_millis() as i64,
                i64::from(limit),
            )
            .await?;
            tx.commit().await?;
            c
        };
        if claimed.is_empty() {
            return Ok(Batch {
                claimed,
                data: RoundData::default(),
            });
        }
        self.held
            .lock()
            .expect("lease set")
            .extend(claimed.iter().map(|d| d.id.clone()));
        let data = match self.prefetch(&claimed).await {
            Ok(d) => d,
            Err(e) => {
                // Nothing of the batch started: it goes back at once.
                let ids: Vec<String> = claimed.iter().map(|d| d.id.clone()).collect();
                self.give_back(&ids).await;
                return Err(e);
            }
        };
        debug!(
            deliveries = claimed.len(),
            prepare_ms = began.elapsed().as_millis() as u64,
            "batch claimed"
        );
        Ok(Batch { claimed, data })
    }

    /// Hands claimed deliveries back unsent (pending, due as before).
    async fn give_back(&self, ids: &[String]) {
        let items: Vec<Finish> = ids
            .iter()
            .map(|id| Finish {
                delivery_id: id.clone(),
                attempt: None,
                next: Transition::Released,
            })
            .collect();
        let released = async {
            let mut tx = self.store.begin().await?;
            dl::finish_many(&mut tx, &self.owner, &items).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        }
        .await;
        if let Err(e) = released {
            warn!(error = %e, "cannot hand back a claimed batch; its leases run out after dispatch.lease");
        }
        let mut held = self.held.lock().expect("lease set");
        for id in ids {
            held.remove(id);
        }
    }

    /// Sends a batch: up to [`max_in_flight`] deliveries at once, each
    /// checked, rendered, sent and recorded through one group-committing
    /// recorder. `started` fires once half of them have started.
    async fn execute(
        &self,
        batch: Batch,
        started: Option<tokio::sync::oneshot::Sender<()>>,
        summary: &mut Option<DispatchSummary>,
    ) -> Result<(), StoreError> {
        let Batch { claimed, data } = batch;
        let n = claimed.len();
        let (recorder, writing) = Recorder::new(self.store.clone(), self.owner.clone());
        // On a task of its own: the group commit runs on another core than
        // the rendering and the SMTP exchanges of the round.
        let writer = tokio::spawn(writing);
        // The send-time re-check reads as late as each send, in groups.
        let (rechecker, checking) = Rechecker::new(self.store.clone());
        let checker = tokio::spawn(checking);
        let in_flight = max_in_flight(self.cfg.concurrency, self.cfg.batch_size).min(n);
        let mut started = started;
        // Half-way through the batch, a marker that fires `started` when
        // buffer_unordered pulls it: the next batch is claimed and read while
        // the second half sends, so that it is ready when this one ends.
        let mut claimed = claimed;
        let second_half = claimed.split_off(n / 2);
        let items = claimed
            .into_iter()
            .map(Some)
            .chain(std::iter::once(None))
            .chain(second_half.into_iter().map(Some));
        let results = futures_util::stream::iter(items)
            .map(|d| {
                let (data, recorder, rechecker) = (&data, &recorder, &rechecker);
                let started = if d.is_none() { started.take() } else { None };
                async move {
                    let Some(d) = d else {
                        if let Some(s) = started {
                            let _ = s.send(());
                        }
                        return None;
                    };
                    let span = info_span!("delivery", delivery_id = %d.id, event_id = %d.event_id, kind = d.kind_name());
                    let id = d.id.clone();
                    let r = self
                        .handle_isolated(d, data, recorder, rechecker)
                        .instrument(span)
                        .await;
                    self.held.lock().expect("lease set").remove(&id);
                    Some(r)
                }
            })
            .buffer_unordered(in_flight)
            .filter_map(|r| async move { r })
            .collect::<Vec<Result<Transition, StoreError>>>()
            .await;
        // The last handles: the recorder writes what is left and ends.
        drop((recorder, rechecker));
        let _ = checker.await;
        // Every finish was answered; the writer has ended or ends now.
        if let Err(e) = writer.await {
            error!(error = %e, "the outcome recorder of a round failed");
        }
        for r in results {
            let t = r?;
            if let Some(s) = summary.as_mut() {
                match t {
                    Transition::Sent { .. } => s.sent += 1,
                    Transition::Retry { .. } => s.retried += 1,
                    Transition::Failed { .. } => s.failed += 1,
                    Transition::Cancelled { .. } => s.cancelled += 1,
                    Transition::Released => {}
                }
            }
        }
        Ok(())
    }

    /// Reads, in one statement per table, what the claimed deliveries need:
    /// their served users as the directory has them now, their events
    /// (module events parsed once), and the names of the organisations.
    async fn prefetch(&self, claimed: &[Claimed]) -> Result<RoundData, StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        let mut event_ids: Vec<&str> = claimed.iter().map(|d| d.event_id.as_str()).collect();
        event_ids.sort_unstable();
        event_ids.dedup();
        let events = ev::get_events(&mut conn, &event_ids).await?;
        // A notice about a directory event (a revocation) has its AGB code
        // in the notice, not in the event.
        let notice_agbs: Vec<String> = claimed
            .iter()
            .filter_map(|d| notice_agb(d.notice.as_deref()?))
            .collect();
        let mut agbs: Vec<&str> = events
            .values()
            .filter_map(|e| e.agb_code.as_deref())
            .chain(notice_agbs.iter().map(String::as_str))
            .collect();
        agbs.sort_unstable();
        agbs.dedup();
        let praktijk = if agbs.is_empty() {
            HashMap::new()
        } else {
            dir::organisation_names(&mut conn, &agbs).await?
        };
        drop(conn);
        let parsed = events
            .values()
            .filter(|e| EventType::parse(&e.event_type).is_some_and(|t| t.is_module()))
            .map(|e| {
                let m = parse_event(e.payload.as_bytes(), &self.cfg.rules)
                    .map_err(|r| format!("stored event no longer valid: {r}"))
                    .and_then(|p| match p.body {
                        EventBody::Module(m) => Ok(m),
                        _ => Err("stored event is not a module event".to_owned()),
                    });
                (e.id.clone(), m)
            })
            .collect();
        Ok(RoundData {
            events,
            parsed,
            praktijk,
        })
    }

    /// Renews the leases in `held` every `dispatch.lease / 3`, fenced by
    /// owner; runs until dropped. A lease found under another owner is
    /// logged (its send, if on the wire, is not stopped: the relay may get
    /// that mail twice, with the same Message-ID).
    async fn renew_leases(&self) -> std::convert::Infallible {
        let every = self.cfg.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            let ids: Vec<String> = self
                .held
                .lock()
                .expect("lease set")
                .iter()
                .cloned()
                .collect();
            if ids.is_empty() {
                continue;
            }
            let until = ms(Utc::now()) + self.cfg.lease.as_millis() as i64;
            let renewed = async {
                let mut tx = self.store.begin().await?;
                let n = dl::renew_leases(&mut tx, &self.owner, &ids, until).await?;
                tx.commit().await?;
                Ok::<_, StoreError>(n)
            }
            .await;
            match renewed {
                Ok(n) if (n as usize) < ids.len() => {
                    // A row that finished between the snapshot and the update
                    // is counted here too; only a row another owner holds matters.
                    let lost = self.leases_lost(&ids).await;
                    if lost > 0 {
                        warn!(
                            lost,
                            "leases taken over by another dispatcher while their sends were in flight: those mails may arrive twice (same Message-ID); raise dispatch.lease"
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "cannot renew leases; they run out after dispatch.lease and another instance may take over")
                }
            }
        }
    }

    async fn leases_lost(&self, ids: &[String]) -> usize {
        let Ok(mut c) = self.store.pool().acquire().await else {
            return 0;
        };
        dl::held_by_others(&mut c, &self.owner, ids)
            .await
            .unwrap_or(0)
    }

    /// [`Self::handle`], with a panic confined to its delivery: no value from
    /// outside (a relay reply, a stored event) may take the process down, and
    /// a delivery that makes this version panic would do so again after every
    /// restart. It ends `failed` with the reason, for operators to replay
    /// once the cause is fixed.
    async fn handle_isolated(
        &self,
        d: Claimed,
        data: &RoundData,
        rec: &Recorder,
        recheck: &Rechecker,
    ) -> Result<Transition, StoreError> {
        let id = d.id.clone();
        let kind = d.kind.clone().map_or("unknown", MailKind::as_str);
        match std::panic::AssertUnwindSafe(self.handle(d, data, rec, recheck))
            .catch_unwind()
            .await
        {
            Ok(r) => r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                let error = format!(
                    "internal error while handling this delivery ({what}): failed instead of retried; report it, then `notifier replay deliveries --status failed`"
                );
                error!(%error, "delivery failed on an internal error");
                let next = Transition::Failed {
                    error,
                    sent_to: None,
                };
                let mut tx = self.store.begin().await?;
                dl::finish(&mut tx, &id, &self.owner, None, &next).await?;
                tx.commit().await?;
                self.metrics.delivery_final(kind, "failed");
                Ok(next)
            }
        }
    }

    /// Checks, renders, sends and records one claimed delivery.
    async fn handle(
        &self,
        d: Claimed,
        data: &RoundData,
        rec: &Recorder,
        recheck: &Rechecker,
    ) -> Result<Transition, StoreError> {
        if self.stopping.load(Ordering::SeqCst) {
            return self.finish_released(&d, rec).await;
        }
        let (kind, rules) = match (&d.kind, &d.rule) {
            (Ok(kind), Ok(rules)) => (*kind, rules),
            (Err(unknown), _) => return self.fail_unknown(&d, rec, "mail kind", unknown).await,
            (_, Err(unknown)) => return self.fail_unknown(&d, rec, "rule", unknown).await,
        };
        let Some(event) = data.events.get(&d.event_id) else {
            return Err(StoreError::Corrupt(format!(
                "delivery {} has no event",
                d.id
            )));
        };
        // Rendered first, and built for the planned address: the CPU work of
        // a mail is done before the directory is read, so that the read is
        // as close to the send as it can be.
        let planned = Addressee::planned(rules, usize::try_from(d.served).unwrap_or(0));
        let prepared = self.render_and_build(kind, &d, data, event, planned);

        // Then a relay connection and the rate limit's turn, and only then
        // the re-check: the directory is read as late as a send of its own
        // would read it, not while this delivery waits behind the others.
        let connection = self.wire.acquire().await.expect("semaphore never closed");
        let permit = self.limiter.acquire().await;
        let (address, rcpt, checked_at, addressee) = if rules.is_address() {
            let rcpt = planned_rcpt(&d);
            (d.address.clone(), rcpt, None, prepared.addressee.clone())
        } else {
            let actor = match data.parsed.get(&d.event_id) {
                Some(Ok(m)) => m.data["actor_gebruikersnummer"].as_str(),
                _ => None,
            };
            let planned = &prepared.addressee;
            match self.recheck(&d, (rules, planned, actor), recheck).await? {
                Recheck::Send {
                    address,
                    rcpt,
                    at_ms,
                    addressee,
                } => (address, rcpt, Some(at_ms), addressee),
                Recheck::Cancel(reason) => {
                    return self
                        .finish(rec, &d, kind, None, Transition::Cancelled { reason })
                        .await;
                }
            }
        };

        if rcpt.parse::<lettre::Address>().is_err() {
            return self
                .fail_undeliverable(&d, kind, rec, &event.event_type)
                .await;
        }
        let sender = self.envelope_sender(prepared.tag.as_deref());
        let bytes = match self.build_for(prepared, (kind, &d, data, event), &rcpt, addressee) {
            Ok(b) => b,
            Err(reason) => {
                error!(%reason, "cannot build the mail: failed (fix, then `notifier replay deliveries --status failed`)");
                let failed = Transition::Failed {
                    error: reason,
                    sent_to: None,
                };
                return self.finish(rec, &d, kind, None, failed).await;
            }
        };

        // Stopping, or the circuit opened while this one waited its turn:
        // hand it back unsent rather than send into a relay known to fail.
        if self.stopping.load(Ordering::SeqCst) || self.breaker.state() == CircuitState::Open {
            drop((permit, connection));
            return self.finish(rec, &d, kind, None, Transition::Released).await;
        }
        let sending = Sending {
            d: &d,
            kind,
            event,
            address: &address,
            rcpt: &rcpt,
            sender: &sender,
            checked_at,
        };
        self.send(sending, &bytes, (permit, connection), rec).await
    }

    /// The mail of `d` rendered, and built for its planned address.
    fn render_and_build(
        &self,
        kind: MailKind,
        d: &Claimed,
        data: &RoundData,
        event: &ev::EventRow,
        addressee: Addressee,
    ) -> Prepared {
        let rendered = self.render(kind, d, data, event, &addressee);
        // Never logged: with the tag, a bounce for the delivery could be forged.
        let tag = (self.cfg.bounce_tagging.as_ref()).map(|(_, key)| bounce::tag(&d.id, key));
        let prebuilt = rendered
            .as_ref()
            .ok()
            .and_then(|m| self.build(&planned_rcpt(d), m, d, tag.as_deref()).ok());
        Prepared {
            rendered,
            addressee,
            prebuilt,
            tag,
        }
    }

    /// The bytes of `d`'s mail to `address`, with `tag` when bounces are tagged.
    fn build(
        &self,
        address: &str,
        mail: &RenderedMail,
        d: &Claimed,
        tag: Option<&str>,
    ) -> Result<Vec<u8>, crate::mail::MailError> {
        message::build_tagged(&self.cfg.from, address, mail, &d.message_id, tag)
    }

    /// The envelope sender (MAIL FROM) of a delivery's mail: the bounce
    /// address with the delivery's tag, or else the From address.
    fn envelope_sender(&self, tag: Option<&str>) -> String {
        match (&self.cfg.bounce_tagging, tag) {
            (Some((address, _)), Some(tag)) => address.sender(tag),
            _ => self.cfg.from.email.to_string(),
        }
    }

    /// The bytes to send to `rcpt`: the prebuilt mail when the re-check
    /// kept the planned address (as registered) and addressee, else the
    /// mail built (and, for another addressee, rendered) again.
    fn build_for(
        &self,
        prepared: Prepared,
        (kind, d, data, event): (MailKind, &Claimed, &RoundData, &ev::EventRow),
        rcpt: &str,
        addressee: Addressee,
    ) -> Result<Vec<u8>, String> {
        let same = addressee == prepared.addressee;
        match prepared.prebuilt {
            Some(bytes) if same && rcpt == planned_rcpt(d) => Ok(bytes),
            _ => {
                let rendered = if same {
                    prepared.rendered
                } else {
                    self.render(kind, d, data, event, &addressee)
                };
                rendered.and_then(|m| {
                    self.build(rcpt, &m, d, prepared.tag.as_deref())
                        .map_err(|e| e.to_string())
                })
            }
        }
    }

    /// A delivery whose stored kind or rule this version does not know
    /// (written by a newer one): ended visibly instead of failing the round
    /// again every lease.
    async fn fail_unknown(
        &self,
        d: &Claimed,
        rec: &Recorder,
        what: &str,
        unknown: &Unknown,
    ) -> Result<Transition, StoreError> {
        let error = format!("unknown {what} {unknown}: not sent by this version");
        error!(%error, "delivery failed");
        let failed = Transition::Failed {
            error,
            sent_to: None,
        };
        rec.record(Finish {
            delivery_id: d.id.clone(),
            attempt: None,
            next: failed.clone(),
        })
        .await?;
        Ok(failed)
    }

    /// The send-time re-check: revoked users dropped, the current address
    /// used, users who no longer share an address split off, and the
    /// address taken for the event and kind.
    async fn recheck(
        &self,
        d: &Claimed,
        (rules, planned, actor): (&Rules, &Addressee, Option<&str>),
        recheck: &Rechecker,
    ) -> Result<Recheck, StoreError> {
        let checked = recheck.served_now(&d.id).await?;
        let active = checked.served.iter().filter(|u| u.is_active());
        let address = match recipients::recheck_addresses(
            &d.address,
            active.filter_map(|u| u.email.as_deref()),
        ) {
            AddressCheck::NobodyLeft => {
                return Ok(Recheck::Cancel(
                    "cancelled: every user this mail served was revoked (or left the directory)"
                        .into(),
                ));
            }
            AddressCheck::Send { address, others } => {
                if !others.is_empty() {
                    self.split(d, &others, &checked.served).await?;
                }
                address
            }
        };
        if d.claimed_address.as_deref() != Some(address.as_str())
            && !self.claim_address(d, &address).await?
        {
            return Ok(Recheck::Cancel(
                "cancelled as duplicate: the user's current address already got this mail".into(),
            ));
        }
        let here: Vec<&dl::ServedNow> = checked
            .served
            .iter()
            .filter(|u| u.is_active() && u.email.as_deref() == Some(address.as_str()))
            .collect();
        // Sent as registered (a local part may be case-sensitive); an
        // address registered in several casings as the lowest
        // gebruikersnummer here registered it, as the planner chose.
        let rcpt = here
            .iter()
            .min_by(|a, b| a.gebruikersnummer.cmp(&b.gebruikersnummer))
            .and_then(|u| u.email_registered.clone())
            .unwrap_or_else(|| address.clone());
        // Every user still here: the mail says what was planned (a user's
        // stored rule is only the first that chose it).
        let addressee = if here.len() == checked.served.len() {
            planned.clone()
        } else {
            let rules_here: Vec<Rule> = here.iter().map(|u| u.rule).collect();
            let actor_here = here
                .iter()
                .any(|u| Some(u.gebruikersnummer.as_str()) == actor);
            Addressee::of_users(rules, &rules_here, actor_here)
        };
        Ok(Recheck::Send {
            addressee,
            address,
            rcpt,
            at_ms: checked.at_ms,
        })
    }

    /// An address kept from before the directory checked it (or written by
    /// hand) that mail cannot be sent to: the address is the problem, not
    /// the template. It is undeliverable, so the contact persons hear of it.
    async fn fail_undeliverable(
        &self,
        d: &Claimed,
        kind: MailKind,
        rec: &Recorder,
        event_type: &str,
    ) -> Result<Transition, StoreError> {
        let report = SendReport::permanent(
            "the registered address is not one mail can be sent to; the user corrects it in the portal ('Wijzig'), then `notifier replay deliveries --status failed`".into(),
        );
        error!(reason = %report.detail, "undeliverable address: failed");
        let failed = Transition::Failed {
            error: report.detail.clone(),
            sent_to: None,
        };
        let t = self.finish(rec, d, kind, None, failed).await?;
        if kind.is_module() {
            self.escalate(d, event_type, &report).await?;
        }
        Ok(t)
    }

    /// Sends the built mail on the connection and rate-limit turn it holds,
    /// then classifies and records the attempt.
    async fn send(
        &self,
        s: Sending<'_>,
        bytes: &[u8],
        turn: (impl Sized, impl Sized),
        rec: &Recorder,
    ) -> Result<Transition, StoreError> {
        let d = s.d;
        let started = Utc::now();
        let clock = Instant::now();
        self.on_wire.lock().expect("on-wire set").insert(
            d.id.clone(),
            OnWire {
                delivery: d.clone(),
                kind: s.kind,
                checked_at: s.checked_at,
                started,
                clock,
            },
        );
        let mut report = self.mailer.send(s.sender, s.rcpt, &d.id, bytes).await;
        let duration = clock.elapsed();
        drop(turn);
        let refusal = self.judge_refusal(&mut report, s.address, &d.id).await?;
        self.metrics.smtp_attempt(report.outcome.as_str());

        let now = Utc::now();
        let next = self.next_state(d, &report, s.address, now);
        let attempt = AttemptRecord {
            started_at_ms: ms(started),
            checked_at_ms: s.checked_at,
            duration_ms: duration.as_millis() as i64,
            outcome: report.outcome,
            smtp_code: report.smtp_code.map(i64::from),
            enhanced_code: report.enhanced_code.clone(),
            detail: report.detail.clone(),
            policy_rejection: refusal == Some(RefusalVerdict::Recipient),
            template_source: Some(self.templates.provenance(s.kind).source.clone()),
            template_version: Some(self.templates.provenance(s.kind).version.clone()),
        };
        self.log_attempt(d, s.event, &report, now);
        let t = self
            .finish(rec, d, s.kind, Some(attempt.clone()), next)
            .await;
        self.on_wire.lock().expect("on-wire set").remove(&d.id);
        let t = t?;
        if attempt.policy_rejection && self.breaker.is_refusing() {
            // The run that showed the relay refusing us ended while this
            // refusal was being recorded: it does not count against the recipient.
            self.relay_refuses(std::slice::from_ref(&d.id)).await?;
            return Ok(t);
        }
        if let (Transition::Failed { .. }, true) = (&t, s.kind.is_module()) {
            self.escalate(d, &s.event.event_type, &report).await?;
        }
        Ok(t)
    }

    /// A 5.7.x refusal of a recipient counts against that recipient, unless
    /// the relay refuses everyone (then it is a relay fault, and the earlier
    /// refusals of the run are taken back); any other report feeds the
    /// breaker.
    async fn judge_refusal(
        &self,
        report: &mut SendReport,
        address: &str,
        delivery_id: &str,
    ) -> Result<Option<RefusalVerdict>, StoreError> {
        let refusal = report
            .recipient_policy
            .then(|| self.breaker.recipient_refused(address, delivery_id));
        match &refusal {
            Some(RefusalVerdict::RelayRefuses { earlier }) => {
                report.outcome = AttemptOutcome::RelayFault;
                if !earlier.is_empty() {
                    self.metrics.circuit_open.set(1);
                    error!(reason = %self.breaker.last_reason().unwrap_or_default(),
                        "relay circuit open: dispatch paused; it probes again after breaker.open_for");
                }
                self.relay_refuses(earlier).await?;
            }
            Some(RefusalVerdict::Recipient) => {}
            None => self.observe_relay(report),
        }
        Ok(refusal)
    }

    fn log_attempt(
        &self,
        d: &Claimed,
        event: &ev::EventRow,
        report: &SendReport,
        now: DateTime<Utc>,
    ) {
        match report.outcome {
            AttemptOutcome::Sent => {
                let latency =
                    (now - from_ms(event.occurred_at)).num_milliseconds().max(0) as f64 / 1000.0;
                self.metrics.delivery_latency.observe(latency);
                info!(attempt = d.attempts + 1, "sent");
            }
            outcome => warn!(
                attempt = d.attempts + 1,
                outcome = outcome.as_str(),
                smtp_code = report.smtp_code,
                detail = %redact_addresses(&report.detail),
                "not sent"
            ),
        }
    }

    /// The mail of `d` for `addressee`, rendered now (deadlines count from today).
    fn render(
        &self,
        kind: MailKind,
        d: &Claimed,
        data: &RoundData,
        event: &ev::EventRow,
        addressee: &Addressee,
    ) -> Result<RenderedMail, String> {
        let common = context::Common::at(Utc::now(), &self.cfg.portal_url, addressee);
        let praktijk_of = |agb: &str| data.praktijk.get(agb).map(String::as_str);
        let ctx = match kind {
            MailKind::Module(_) => {
                let m = match data.parsed.get(&d.event_id) {
                    Some(Ok(m)) => m,
                    Some(Err(reason)) => return Err(reason.clone()),
                    None => return Err("stored event is not a module event".into()),
                };
                let praktijk = praktijk_of(m.agb_code.as_str()).unwrap_or(m.agb_code.as_str());
                context::module_context(kind.as_str(), m, praktijk, &common)
            }
            _ => {
                let notice: serde_json::Value = d
                    .notice
                    .as_deref()
                    .map(serde_json::from_str)
                    .transpose()
                    .map_err(|e| format!("stored notice is not JSON: {e}"))?
                    .unwrap_or_default();
                // A notice about a revocation has its AGB code in the notice.
                let agb = (event.agb_code.as_deref())
                    .or_else(|| notice.get("agb_code").and_then(|v| v.as_str()));
                let praktijk = agb.and_then(praktijk_of);
                context::notice_context(kind.as_str(), agb, praktijk, &notice, &common)
            }
        };
        self.templates.render(kind, &ctx).map_err(|e| {
            format!("{e} (fix the template, then `notifier replay deliveries --status failed`)")
        })
    }

    fn observe_relay(&self, r: &SendReport) {
        let opened = match r.outcome {
            AttemptOutcome::RelayFault => self.breaker.failure(&redact_addresses(&r.detail), true),
            // A relay that cannot be reached, or that greets and then
            // hangs, is failing: both count toward the breaker (and a probe
            // that times out keeps the circuit open).
            AttemptOutcome::Transient | AttemptOutcome::Unknown
                if r.connect_failed || r.timed_out =>
            {
                self.breaker.failure(&redact_addresses(&r.detail), false)
            }
            _ => {
                if self.breaker.success() {
                    info!("relay answers again: circuit closed, sending resumes");
                    self.metrics.circuit_open.set(0);
                }
                false
            }
        };
        if opened {
            self.metrics.circuit_open.set(1);
            error!(reason = %redact_addresses(&r.detail), "relay circuit open: dispatch paused; it probes again after breaker.open_for");
        }
    }

    /// The breaker found the relay refusing us: the other deliveries of that
    /// run were recorded as refused recipients; they get their retry step
    /// back and wait for the circuit's probe, and no notice goes out.
    async fn relay_refuses(&self, earlier: &[String]) -> Result<(), StoreError> {
        if earlier.is_empty() {
            return Ok(());
        }
        let due = Utc::now() + self.cfg.breaker_open_for;
        let mut tx = self.store.begin().await?;
        let n = dl::undo_policy_rejections(&mut tx, earlier, ms(due)).await?;
        tx.commit().await?;
        info!(
            deliveries = n,
            "refusals of the run counted as a relay fault, not against the recipients"
        );
        Ok(())
    }

    fn next_state(
        &self,
        d: &Claimed,
        r: &SendReport,
        address: &str,
        now: chrono::DateTime<Utc>,
    ) -> Transition {
        let rules = StateRules {
            retry: self.cfg.retry.clone(),
            breaker_open_for: self.cfg.breaker_open_for,
        };
        let progress = Progress {
            retry_step: d.retry_step,
            policy_rejections: d.policy_rejections,
            deadline: from_ms(d.deadline),
        };
        let attempted = Attempted {
            outcome: r.outcome,
            detail: &r.detail,
            recipient_policy: r.recipient_policy,
            unreachable: r.connect_failed || r.timed_out,
            retry_hint: r.retry_hint,
        };
        delivery::next_state(&rules, progress, &attempted, address, now, rand::random())
    }

    async fn finish_released(&self, d: &Claimed, rec: &Recorder) -> Result<Transition, StoreError> {
        rec.record(Finish {
            delivery_id: d.id.clone(),
            attempt: None,
            next: Transition::Released,
        })
        .await?;
        Ok(Transition::Released)
    }

    /// Users who shared an address no longer do: each of `others` gets its
    /// own delivery through the planner, with `d`'s deadline.
    async fn split(
        &self,
        d: &Claimed,
        others: &[String],
        served: &[dl::ServedNow],
    ) -> Result<(), StoreError> {
        let timing = plan::Timing::due_now(Utc::now(), plan::Deadline::Inherit(d.deadline));
        let mut tx = self.store.begin().await?;
        for other in others {
            let users: Vec<&str> = served
                .iter()
                .filter(|u| u.is_active() && u.email.as_deref() == Some(other))
                .map(|u| u.gebruikersnummer.as_str())
                .collect();
            plan::split_off(&mut tx, &d.id, other, &users, timing).await?;
        }
        tx.commit().await?;
        info!(
            split = others.len(),
            "served users now have different addresses: split into separate deliveries"
        );
        Ok(())
    }

    /// Takes `address` for `d` ([`dl::claim_address`]).
    async fn claim_address(&self, d: &Claimed, address: &str) -> Result<bool, StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        dl::claim_address(&mut conn, &d.id, &self.owner, address).await
    }

    /// Records `next` (and the attempt, if there was one) under this
    /// dispatcher's lease. After a send the outcome exists only in memory
    /// until this commits: it is kept and recording is tried again, with
    /// backoff, for as long as it takes (the round renews the lease
    /// meanwhile), because giving up would send the mail again after the
    /// lease.
    async fn finish(
        &self,
        rec: &Recorder,
        d: &Claimed,
        kind: MailKind,
        attempt: Option<AttemptRecord>,
        next: Transition,
    ) -> Result<Transition, StoreError> {
        let mut backoff = Duration::from_millis(100);
        let sent = attempt.is_some();
        let kept = loop {
            let recorded = rec
                .record(Finish {
                    delivery_id: d.id.clone(),
                    attempt: attempt.clone(),
                    next: next.clone(),
                })
                .await;
            match recorded {
                Ok(kept) => break kept,
                Err(e) if sent && !e.is_data_error() => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "cannot record the outcome of a send: keeping it and trying again (the mail is not sent again)");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        };
        if !kept {
            warn!(
                "lease lost before the result was recorded; another dispatcher owns this delivery now"
            );
            return Ok(next);
        }
        if next.status().is_final() {
            self.metrics
                .delivery_final(kind.as_str(), next.status().as_str());
        }
        Ok(next)
    }

    /// A module mail to a user ended failed: tell the AGB's contact persons,
    /// at most once per user and AGB code per day.
    async fn escalate(
        &self,
        d: &Claimed,
        event_type: &str,
        r: &SendReport,
    ) -> Result<(), StoreError> {
        if EventType::parse(event_type).is_none() {
            return Ok(());
        }
        let mut tx = self.store.begin().await?;
        let failed = escalation::Undeliverable {
            delivery_id: &d.id,
            event_id: &d.event_id,
            event_type,
            address: &d.address,
        };
        let reden = undeliverable_reason(r);
        let n = escalation::escalate(
            &mut tx,
            failed,
            reden,
            Utc::now(),
            self.cfg.deadline,
            &self.metrics,
        )
        .await?;
        tx.commit().await?;
        if n > 0 {
            info!(
                notices = n,
                "undeliverable module mail escalated to the contact persons"
            );
        }
        Ok(())
    }
}

/// The `reden` a `beheer.onbestelbaar` notice gives for the failure.
fn undeliverable_reason(r: &SendReport) -> &'static str {
    if r.no_smtputf8 {
        escalation::REASON_NO_SMTPUTF8
    } else if r.outcome == AttemptOutcome::Permanent {
        escalation::REASON_REFUSED
    } else {
        escalation::REASON_EXPIRED
    }
}

/// The planned address of `d` as registered (the lower-cased one in rows
/// that do not keep it).
fn planned_rcpt(d: &Claimed) -> String {
    crate::domain::ids::EmailAddress::stored(d.address.clone(), d.address_registered.clone())
        .registered()
        .to_owned()
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "notifier".into())
}
/// The AGB code a stored notice is about, when it names one.
fn notice_agb(notice: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(notice).ok()?;
    v.get("agb_code")?.as_str().map(str::to_owned)
}
