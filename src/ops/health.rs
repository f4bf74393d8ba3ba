//! Liveness and readiness state shared by the loops and the HTTP endpoints.

use std::sync::atomic::{AtomicBool, Ordering};

/// What readiness looks at, updated by the consumer and dispatch.
#[derive(Debug, Default)]
pub struct Health {
    amqp: AtomicBool,
    db: AtomicBool,
}

impl Health {
    /// A state where nothing is up yet; the database counts as up until an error says otherwise.
    pub fn new() -> Self {
        Self {
            amqp: AtomicBool::new(false),
            db: AtomicBool::new(true),
        }
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
