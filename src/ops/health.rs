//! Liveness and readiness state shared by the loops and the HTTP endpoints.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// What readiness looks at, updated by the consumer and dispatch.
#[derive(Debug, Default)]
pub struct Health {
    amqp: AtomicBool,
    db: AtomicBool,
    /// Why the last broker session ended (e.g. a certificate the worker
    /// does not trust), until a session consumes again.
    amqp_reason: Mutex<Option<String>>,
}

impl Health {
    /// A state where nothing is up yet; the database counts as up until an error says otherwise.
    pub fn new() -> Self {
        Self {
            amqp: AtomicBool::new(false),
            db: AtomicBool::new(true),
            amqp_reason: Mutex::new(None),
        }
    }

    /// Why the broker is not consumed (`None`: it is, or was never tried).
    pub fn set_amqp_reason(&self, reason: Option<String>) {
        *self.amqp_reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    /// The last reason set by [`Self::set_amqp_reason`].
    pub fn amqp_reason(&self) -> Option<String> {
        self.amqp_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The consumer is connected and consuming.
    pub fn set_amqp(&self, up: bool) {
        self.amqp.store(up, Ordering::Relaxed);
    }

    /// The last database write succeeded.
    pub fn set_db(&self, up: bool) {
        self.db.store(up, Ordering::Relaxed);
    }

    /// Consumer state.
    pub fn amqp(&self) -> bool {
        self.amqp.load(Ordering::Relaxed)
    }

    /// Database state as last seen by the consumer.
    pub fn db(&self) -> bool {
        self.db.load(Ordering::Relaxed)
    }
}
