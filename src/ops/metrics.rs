//! Every Prometheus metric the notifier exports, named in one place. Labels
//! carry types, statuses and outcomes only: never an address, name or id.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(&'static str, String)>;

/// The metrics handles, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    events_received: Family<Labels, Counter>,
    deliveries: Family<Labels, Counter>,
    smtp_attempts: Family<Labels, Counter>,
    unroutable: Counter,
    directory_skipped: Family<Labels, Counter>,
    bounces: Family<Labels, Counter>,
    /// Event time to relay acceptance.
    pub delivery_latency: Histogram,
    pub deliveries_pending: Gauge,
    pub oldest_pending_age: Gauge<f64, AtomicU64>,
    pub dispatch_lag: Gauge<f64, AtomicU64>,
    pub quarantined: Gauge,
    pub circuit_open: Gauge,
    pub amqp_connected: Gauge,
    pub stuck_events: Gauge,
    /// Messages the broker delivered again (a worker stopped before acking).
    pub redelivered: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let events_received = Family::<Labels, Counter>::default();
        let deliveries = Family::<Labels, Counter>::default();
        let smtp_attempts = Family::<Labels, Counter>::default();
        let directory_skipped = Family::<Labels, Counter>::default();
        let bounces = Family::<Labels, Counter>::default();
        let unroutable = Counter::default();
        let delivery_latency =
            Histogram::new([1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0]);
        let deliveries_pending = Gauge::default();
        let oldest_pending_age = Gauge::<f64, AtomicU64>::default();
        let dispatch_lag = Gauge::<f64, AtomicU64>::default();
        let quarantined = Gauge::default();
        let circuit_open = Gauge::default();
        let amqp_connected = Gauge::default();
        let stuck_events = Gauge::default();
        let redelivered = Counter::default();
        r.register(
            "notifier_messages_redelivered",
            "Messages RabbitMQ delivered again because a worker stopped before acking them; ingested one by one",
            redelivered.clone(),
        );
        r.register(
            "notifier_bounces",
            "Messages read back from the bounce mailbox, by outcome (hard, delayed, auto_reply, unmatched, forged, unparseable)",
            bounces.clone(),
        );
        r.register(
            "notifier_events_received",
            "Portal events received, by type and outcome (accepted, duplicate, stale, quarantined)",
            events_received.clone(),
        );
        r.register(
            "notifier_deliveries",
            "Deliveries that reached a final status, by mail kind and status",
            deliveries.clone(),
        );
        r.register(
            "notifier_smtp_attempts",
            "SMTP attempts by outcome (sent, transient, permanent, unknown, relay_fault)",
            smtp_attempts.clone(),
        );
        r.register(
            "notifier_unroutable_events",
            "Module events with no recipient and no active contact person",
            unroutable.clone(),
        );
        r.register(
            "notifier_directory_updates_skipped",
            "Directory updates not applied, by reason (stale, unknown_user)",
            directory_skipped.clone(),
        );
        r.register(
            "notifier_delivery_latency_seconds",
            "Seconds from the event time to acceptance by the relay",
            delivery_latency.clone(),
        );
        r.register(
            "notifier_deliveries_pending",
            "Deliveries not yet final",
            deliveries_pending.clone(),
        );
        r.register(
            "notifier_oldest_pending_age_seconds",
            "Age of the oldest delivery that is not yet final",
            oldest_pending_age.clone(),
        );
        r.register(
            "notifier_dispatch_lag_seconds",
            "Seconds since the oldest delivery that is due (not waiting for a retry) became due: how far dispatch is behind",
            dispatch_lag.clone(),
        );
        r.register(
            "notifier_quarantined_events",
            "Messages in quarantine (open)",
            quarantined.clone(),
        );
        r.register(
            "notifier_smtp_circuit_open",
            "1 while the relay circuit is open",
            circuit_open.clone(),
        );
        r.register(
            "notifier_amqp_connected",
            "1 while consuming from RabbitMQ",
            amqp_connected.clone(),
        );
        r.register(
            "notifier_stuck_events",
            "Accepted events with a delivery overdue past the reconciliation threshold",
            stuck_events.clone(),
        );
        Self {
            registry: Arc::new(r),
            events_received,
            deliveries,
            smtp_attempts,
            unroutable,
            directory_skipped,
            bounces,
            delivery_latency,
            deliveries_pending,
            oldest_pending_age,
            dispatch_lag,
            quarantined,
            circuit_open,
            amqp_connected,
            stuck_events,
            redelivered,
        }
    }

    /// Counts one received event.
    pub fn event_received(&self, event_type: &str, outcome: &str) {
        self.events_received
            .get_or_create(&vec![
                ("type", event_type.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    /// Counts a delivery reaching a final status.
    pub fn delivery_final(&self, kind: &str, status: &str) {
        self.deliveries
            .get_or_create(&vec![
                ("type", kind.to_owned()),
                ("status", status.to_owned()),
            ])
            .inc();
    }

    /// Counts one SMTP attempt.
    pub fn smtp_attempt(&self, outcome: &str) {
        self.smtp_attempts
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
    }

    /// Counts an unroutable event.
    pub fn unroutable(&self) {
        self.unroutable.inc();
    }

    /// Counts one message read back from the bounce mailbox.
    pub fn bounce(&self, outcome: &str) {
        self.bounces
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
    }

    /// Counts a directory update that was not applied.
    pub fn directory_skipped(&self, reason: &str) {
        self.directory_skipped
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
