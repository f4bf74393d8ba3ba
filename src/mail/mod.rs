//! Everything that turns a delivery into bytes at a relay: building the MIME
//! message, the SMTP connection pool, classifying each attempt, protecting
//! the relay (circuit breaker, rate limit), and the `.eml` outbox used when
//! no relay is configured.

pub mod classify;
pub mod context;
pub mod message;
pub mod outbox;
pub mod relay;
pub mod smtp;
pub mod target;

pub use target::{Relay, SmtpTarget, TlsMode};

use crate::domain::delivery::AttemptOutcome;
use std::time::Duration;

/// A mail-side problem that is not the outcome of an attempt.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("cannot build the message: {0}")]
    Build(String),
}

/// The result of one send attempt, classified.
#[derive(Debug, Clone, PartialEq)]
pub struct SendReport {
    pub outcome: AttemptOutcome,
    pub smtp_code: Option<u16>,
    pub enhanced_code: Option<String>,
    /// The relay's reply text or the error (never contains the recipient address).
    pub detail: String,
    /// The relay could not be reached at all (counts toward the breaker).
    pub connect_failed: bool,
    /// A "try again in N" from the relay.
    pub retry_hint: Option<Duration>,
    /// A 5.7.x refusal of this recipient at RCPT
    /// ([`classify::is_recipient_policy`]).
    pub recipient_policy: bool,
    /// The relay did not answer within `smtp.timeout` (a relay that greets
    /// and then hangs): counts toward the circuit breaker.
    pub timed_out: bool,
    /// The recipient address has no ASCII form and the relay does not offer
    /// SMTPUTF8: permanent, nothing was sent, and the contact persons'
    /// notice says why.
    pub no_smtputf8: bool,
}

impl SendReport {
    /// A report of an attempt that got no SMTP reply to classify.
    pub fn without_reply(outcome: AttemptOutcome, detail: String) -> Self {
        Self {
            outcome,
            smtp_code: None,
            enhanced_code: None,
            detail,
            connect_failed: false,
            retry_hint: None,
            recipient_policy: false,
            timed_out: false,
            no_smtputf8: false,
        }
    }

    /// A report for a mail refused for good before any relay saw it.
    pub fn permanent(detail: String) -> Self {
        Self::without_reply(AttemptOutcome::Permanent, detail)
    }

    /// A report for an attempt that succeeded.
    pub fn sent(code: u16, detail: String) -> Self {
        Self {
            outcome: AttemptOutcome::Sent,
            smtp_code: Some(code),
            enhanced_code: classify::enhanced_code(&detail),
            detail,
            connect_failed: false,
            retry_hint: None,
            recipient_policy: false,
            timed_out: false,
            no_smtputf8: false,
        }
    }
}

/// Where mails go: a relay, or `.eml` files.
pub enum Mailer {
    Smtp(Box<smtp::SmtpPool>),
    Outbox(outbox::Outbox),
}

impl Mailer {
    /// Sends to the relay at `target`, or into `outbox_dir` when there is none.
    pub fn new(target: Option<SmtpTarget>, outbox_dir: &str, options: smtp::PoolOptions) -> Self {
        match target {
            None => Self::Outbox(outbox::Outbox::new(outbox_dir)),
            Some(t) => Self::Smtp(Box::new(smtp::SmtpPool::new(t, options))),
        }
    }

    /// Sends one message to one recipient.
    pub async fn send(&self, from: &str, to: &str, delivery_id: &str, bytes: &[u8]) -> SendReport {
        match self {
            Self::Smtp(p) => p.send(from, to, bytes).await,
            Self::Outbox(o) => o.write(delivery_id, bytes).await,
        }
    }

    /// Closes idle connections (shutdown).
    pub async fn close(&self) {
        if let Self::Smtp(p) = self {
            p.close().await;
        }
    }
}
