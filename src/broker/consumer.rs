//! The consumer: takes what is ready (up to `prefetch`) as one batch, ingests
//! it in one transaction, and acks the batch (`multiple`) only after commit.
//!
//! - Broker gone: the session ends; a supervisor reconnects with capped,
//!   doubling backoff and declares the topology again.
//! - Database gone: the batch stays unacked and is retried with backoff; with
//!   the prefetch window full the broker sends nothing more. No nack, so the
//!   delivery limit is not burnt by an outage.
//! - Bad data: when the database refuses a batch because of one message's
//!   data, the messages are ingested one by one, the refused one goes to
//!   quarantine with the database's reason and the rest is acked.
//! - Redelivered messages (the broker's `redelivered` flag: a worker took
//!   them and died, or lost the connection, before acking) are suspects:
//!   they come in batches of their own, and each is ingested and acked on
//!   its own, side by side, so the one message that takes workers down
//!   alone runs into the delivery limit; its batch-mates are committed.
//! - Dead-lettered messages (past `x-delivery-limit`) are consumed from the
//!   dead-letter queue on their own channel, one at a time, and kept in
//!   quarantine.
//! - Size: a batch is bounded by `amqp.batch_max_bytes` as well as by
//!   `prefetch`, and only the bounded prefix of an oversized body is copied.

use super::{BrokerError, topology};
use crate::config::AmqpSettings;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::pipeline::ingest::{Incoming, IngestOutcome, Ingestor, Source};
use crate::pipeline::wake::DueSignal;
use futures_util::{FutureExt, StreamExt};
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::{ConnectionProperties, DefaultConnectionBuilder};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Consumes portal events until shutdown.
#[derive(Clone)]
pub struct Consumer {
    settings: AmqpSettings,
    ingestor: Ingestor,
    metrics: Metrics,
    health: Arc<Health>,
    /// Told when a batch committed deliveries (they are due at once).
    due: Option<DueSignal>,
    /// For `amqps://` ([`super::tls_config`]).
    tls: OwnedTLSConfig,
}

impl Consumer {
    /// A consumer feeding `ingestor`.
    pub fn new(
        settings: AmqpSettings,
        ingestor: Ingestor,
        metrics: Metrics,
        health: Arc<Health>,
    ) -> Self {
        Self {
            settings,
            ingestor,
            metrics,
            health,
            due: None,
            tls: OwnedTLSConfig::default(),
        }
    }

    /// Connects over `amqps://` with `tls` ([`super::tls_config`]) instead
    /// of the system's roots alone.
    pub fn with_tls(mut self, tls: OwnedTLSConfig) -> Self {
        self.tls = tls;
        self
    }

    /// Wakes the dispatchers through `due` after every commit that added deliveries.
    pub fn with_due_signal(mut self, due: DueSignal) -> Self {
        self.due = Some(due);
        self
    }

    /// Supervises sessions until `shutdown` turns true.
    pub async fn run(&self, shutdown: CancellationToken) {
        let min = self.settings.reconnect_min.0;
        let max = self.settings.reconnect_max.0;
        let mut backoff = min;
        while !shutdown.is_cancelled() {
            let started = std::time::Instant::now();
            let result = self.session(&shutdown).await;
            self.set_connected(false);
            match result {
                Ok(()) => break,
                Err(e) => {
                    if started.elapsed() > max {
                        backoff = min;
                    }
                    let hint = super::session_error_hint(&e);
                    self.health.set_amqp_reason(Some(format!("{e}; {hint}")));
                    // The URL is shown redacted: host, port and vhost, never the password.
                    error!(error = %e, broker = %self.settings.url, retry_in_ms = backoff.as_millis() as u64,
                        "RabbitMQ session ended; reconnecting ({hint})");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(max);
                }
            }
        }
        info!("consumer stopped");
    }

    fn set_connected(&self, up: bool) {
        self.health.set_amqp(up);
        self.metrics.amqp_connected.set(i64::from(up));
    }

    async fn session(&self, shutdown: &CancellationToken) -> Result<(), BrokerError> {
        let s = &self.settings;
        let conn = DefaultConnectionBuilder::new()?
            .with_uri_str(s.url.expose_secret().to_owned())
            .with_properties(
                ConnectionProperties::default().with_connection_name("zorginkoop-notifier".into()),
            )
            .with_tls_config(self.tls.clone())
            .connect()
            .await?;
        let ch = conn.create_channel().await?;
        topology::declare(&ch, s).await?;
        let mut events = consume(&ch, &s.queue, s.prefetch).await?;
        let dead_ch = conn.create_channel().await?;
        let mut dead = consume(&dead_ch, &s.dead_letter_queue, s.prefetch).await?;
        self.set_connected(true);
        self.health.set_amqp_reason(None);
        info!(queue = %s.queue, prefetch = s.prefetch, "consuming portal events");

        // A delivery read ahead that did not fit the batch before it.
        let mut held: Option<Delivery> = None;
        let mut suspects = Suspects::default();
        let result = loop {
            if let Some(first) = held.take() {
                let (batch, rest) =
                    drain(first, &mut events, s.prefetch as usize, s.batch_max_bytes);
                held = rest;
                if !self.handle_batch(batch, shutdown, &mut suspects).await? {
                    break Ok(());
                }
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                next = events.next() => match next {
                    None => break Err(BrokerError::Cancelled),
                    Some(Err(e)) => break Err(e.into()),
                    Some(Ok(first)) => held = Some(first),
                },
                // Dead-lettered messages already made the worker fail: one
                // at a time, so none of them can take another down with it.
                next = dead.next() => match next {
                    None => break Err(BrokerError::Cancelled),
                    Some(Err(e)) => break Err(e.into()),
                    Some(Ok(one)) => {
                        if !self.handle(vec![one], Source::DeadLetter, Ack::EachOne, shutdown).await? {
                            break Ok(());
                        }
                    }
                },
            }
        };
        self.set_connected(false);
        suspects.tasks.abort_all();
        // Unacked messages go back to the queue when the channel closes.
        let _ = ch.close(200, "shutdown".into()).await;
        let _ = dead_ch.close(200, "shutdown".into()).await;
        let _ = conn.close(200, "shutdown".into()).await;
        result
    }

    /// A batch of first deliveries is ingested as one, here. Redelivered
    /// ones are each handed to a task of their own (at most
    /// [`SUSPECTS_SIDE_BY_SIDE`] at once) and the consumer reads on: one
    /// that never finishes holds one slot, not the queue.
    async fn handle_batch(
        &self,
        batch: Vec<Delivery>,
        shutdown: &CancellationToken,
        suspects: &mut Suspects,
    ) -> Result<bool, BrokerError> {
        if !batch.first().is_some_and(|d| d.redelivered) {
            // A `multiple` ack would also ack suspects still being ingested.
            suspects.reap()?;
            let ack = if suspects.tasks.is_empty() {
                Ack::Multiple
            } else {
                Ack::EachOne
            };
            return self.handle(batch, Source::Amqp, ack, shutdown).await;
        }
        self.metrics.redelivered.inc_by(batch.len() as u64);
        warn!(
            messages = batch.len(),
            "redelivered messages (a worker stopped before acking them): ingesting each on its own"
        );
        for d in batch {
            let permit = tokio::select! {
                p = suspects.slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                () = shutdown.cancelled() => return Ok(false),
            };
            let me = self.clone();
            let stop = shutdown.clone();
            suspects.tasks.spawn(async move {
                let r = me.handle(vec![d], Source::Amqp, Ack::EachOne, &stop).await;
                drop(permit);
                r
            });
        }
        suspects.reap()?;
        Ok(true)
    }

    /// Ingests one batch and acks what got committed. Returns false when
    /// shutdown interrupted a wait for the database (the rest of the batch
    /// stays unacked and is redelivered).
    ///
    /// Each body is copied only as far as validation and quarantine can use
    /// it, and the delivery's own buffer is dropped at once: a 40 MB message
    /// costs its size once, for as long as lapin holds it, and no longer.
    async fn handle(
        &self,
        batch: Vec<Delivery>,
        source: Source,
        ack: Ack,
        shutdown: &CancellationToken,
    ) -> Result<bool, BrokerError> {
        let (ackers, incoming): (Vec<Acker>, Vec<Incoming>) = batch
            .into_iter()
            .map(|d| {
                let mut m =
                    Incoming::bounded(&d.data, Some(d.routing_key.to_string()), source);
                if source == Source::DeadLetter {
                    m.forced_rejection = Some(format!(
                        "delivery limit exceeded: RabbitMQ dead-lettered this message after {} deliveries; it made the worker fail repeatedly",
                        self.settings.delivery_limit
                    ));
                }
                (d.acker, m)
            })
            .unzip();
        let mut done = 0;
        let mut backoff = Duration::from_millis(500);
        while done < incoming.len() {
            let result = self.ingestor.ingest_split(&incoming[done..]).await;
            if result.committed > 0 {
                if let Some(due) = &self.due
                    && result.outcomes.iter().any(adds_deliveries)
                {
                    due.due_now().await;
                }
                let from = done;
                done += result.committed;
                match ack {
                    Ack::Multiple => {
                        ackers[done - 1]
                            .ack(BasicAckOptions { multiple: true })
                            .await?;
                    }
                    Ack::EachOne => {
                        for a in &ackers[from..done] {
                            a.ack(BasicAckOptions::default()).await?;
                        }
                    }
                }
            }
            let Some(e) = result.error else {
                self.health.set_db(true);
                continue;
            };
            self.health.set_db(false);
            warn!(error = %e, messages = incoming.len() - done, retry_in_ms = backoff.as_millis() as u64,
                "cannot commit the batch: holding it unacked and taking no new messages until the database answers");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => return Ok(false),
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        Ok(true)
    }
}

/// Consumes `queue` on `ch` with at most `prefetch` messages unacked.
async fn consume(
    ch: &lapin::Channel,
    queue: &str,
    prefetch: u16,
) -> Result<lapin::Consumer, BrokerError> {
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    Ok(ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?)
}

fn adds_deliveries(o: &IngestOutcome) -> bool {
    matches!(
        o,
        IngestOutcome::Accepted { deliveries, .. } | IngestOutcome::Applied { deliveries, .. }
            if *deliveries > 0
    )
}

/// How many redelivered messages are ingested at once: each takes a
/// database connection, and one that hangs must leave room for the rest.
const SUSPECTS_SIDE_BY_SIDE: usize = 4;

/// How a batch's committed messages are acked.
#[derive(Debug, Clone, Copy)]
enum Ack {
    /// One `multiple` ack up to the last: only when no earlier delivery on
    /// the channel is still unacked by someone else.
    Multiple,
    /// One ack each.
    EachOne,
}

/// The tasks ingesting redelivered messages, and their slots.
struct Suspects {
    tasks: tokio::task::JoinSet<Result<bool, BrokerError>>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Suspects {
    /// Collects the finished tasks; a broker error of one ends the session.
    fn reap(&mut self) -> Result<(), BrokerError> {
        while let Some(done) = self.tasks.try_join_next() {
            match done {
                Ok(Err(e)) => return Err(e),
                // Unacked, so the broker delivers it again.
                Err(e) if e.is_panic() => {
                    error!("ingesting a redelivered message panicked; it stays unacked")
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl Default for Suspects {
    fn default() -> Self {
        Self {
            tasks: tokio::task::JoinSet::new(),
            slots: Arc::new(tokio::sync::Semaphore::new(SUSPECTS_SIDE_BY_SIDE)),
        }
    }
}

/// The first delivery plus whatever else is ready now, up to `max`
/// messages and about `max_bytes` of bodies, all first deliveries or all
/// redelivered (so that a `multiple` ack never covers a suspect). Returns
/// the delivery read ahead that belongs to the next batch.
fn drain(
    first: Delivery,
    stream: &mut lapin::Consumer,
    max: usize,
    max_bytes: usize,
) -> (Vec<Delivery>, Option<Delivery>) {
    let mut bytes = first.data.len();
    let redelivered = first.redelivered;
    let mut batch = vec![first];
    while batch.len() < max && bytes < max_bytes {
        match stream.next().now_or_never() {
            Some(Some(Ok(d))) if d.redelivered != redelivered => return (batch, Some(d)),
            Some(Some(Ok(d))) => {
                bytes += d.data.len();
                batch.push(d);
            }
            _ => break,
        }
    }
    (batch, None)
}
