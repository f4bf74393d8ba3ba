//! Deliveries: the kinds of mail, their states, the outcome of one SMTP
//! attempt, and the retry schedule. Pure types and arithmetic.

use super::event::EventType;
use chrono::{DateTime, Duration, Utc};

/// Which mail a delivery sends: a module event's mail or a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MailKind {
    Module(EventType),
    GeenOntvanger,
    GeenTekenbevoegde,
    LaatsteTekenbevoegdeIngetrokken,
    CertificaatIngetrokken,
    Onbestelbaar,
    EmailGewijzigd,
    EmailGewijzigdOudAdres,
}

impl MailKind {
    /// The notices and directory mails (everything that is not a module mail).
    pub const NOTICES: [MailKind; 7] = [
        Self::GeenOntvanger,
        Self::GeenTekenbevoegde,
        Self::LaatsteTekenbevoegdeIngetrokken,
        Self::CertificaatIngetrokken,
        Self::Onbestelbaar,
        Self::EmailGewijzigd,
        Self::EmailGewijzigdOudAdres,
    ];

    /// Every kind with a template.
    pub fn all() -> Vec<MailKind> {
        EventType::ALL
            .into_iter()
            .filter(|t| t.is_module())
            .map(MailKind::Module)
            .chain(Self::NOTICES)
            .collect()
    }

    /// The kind's name (also its template folder).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Module(t) => t.as_str(),
            Self::GeenOntvanger => "beheer.geen_ontvanger",
            Self::GeenTekenbevoegde => "beheer.geen_tekenbevoegde",
            Self::LaatsteTekenbevoegdeIngetrokken => "beheer.laatste_tekenbevoegde_ingetrokken",
            Self::CertificaatIngetrokken => "certificaat.ingetrokken",
            Self::Onbestelbaar => "beheer.onbestelbaar",
            Self::EmailGewijzigd => "gebruiker.emailadres_gewijzigd",
            Self::EmailGewijzigdOudAdres => "gebruiker.emailadres_gewijzigd.oud_adres",
        }
    }

    /// Parses a kind name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::all().into_iter().find(|k| k.as_str() == s)
    }

    /// True for the mails about a module event (the ones that escalate when undeliverable).
    pub fn is_module(self) -> bool {
        matches!(self, Self::Module(_))
    }
}

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// Waiting for its due time.
    Pending,
    /// Claimed by a dispatcher under a lease.
    Sending,
    /// Accepted by the relay. Final.
    Sent,
    /// Will not be sent: permanent rejection or deadline passed. Final.
    Failed,
    /// Not needed any more: recipient revoked, duplicate address. Final.
    Cancelled,
}

impl DeliveryStatus {
    /// All states.
    pub const ALL: [DeliveryStatus; 5] = [
        Self::Pending,
        Self::Sending,
        Self::Sent,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the stored word.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// True for `sent`, `failed` and `cancelled`.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Sent | Self::Failed | Self::Cancelled)
    }
}

/// How one SMTP attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// 2xx after the data.
    Sent,
    /// Try again later (4xx, connection failure before the data, mailbox full).
    Transient,
    /// This recipient or message is refused for good.
    Permanent,
    /// The data went out but no reply came: the relay may have it.
    Unknown,
    /// The relay itself is unusable (policy, auth, protocol, TLS).
    RelayFault,
}

impl AttemptOutcome {
    /// All outcomes.
    pub const ALL: [AttemptOutcome; 5] = [
        Self::Sent,
        Self::Transient,
        Self::Permanent,
        Self::Unknown,
        Self::RelayFault,
    ];

    /// The stored word (also the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::Unknown => "unknown",
            Self::RelayFault => "relay_fault",
        }
    }
}

/// The retry schedule: fixed steps, then a repeating interval until the deadline.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub schedule: Vec<std::time::Duration>,
    pub repeat: std::time::Duration,
    /// Relative jitter, e.g. 0.2 for ±20 %.
    pub jitter: f64,
}

impl RetryPolicy {
    /// The delay before retry number `step` (0 = first retry), before jitter.
    pub fn base_delay(&self, step: u32) -> std::time::Duration {
        self.schedule
            .get(step as usize)
            .copied()
            .unwrap_or(self.repeat)
    }

    /// When to try again after a retryable outcome, or `None` when that would
    /// be past the deadline. `unit` in `[0, 1)` draws the jitter; a relay's
    /// own "try again in N seconds" wins when it is longer.
    ///
    /// A relay's hint is a value from outside and may be absurd: one that
    /// reaches past the deadline means one more try at the deadline (the
    /// relay may be back sooner than it says), never an overflow and never
    /// an immediate failure.
    pub fn next_due(
        &self,
        step: u32,
        now: DateTime<Utc>,
        deadline: DateTime<Utc>,
        relay_hint: Option<std::time::Duration>,
        unit: f64,
    ) -> Option<DateTime<Utc>> {
        let base = self.base_delay(step).as_secs_f64();
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        let scheduled = base * factor;
        let hinted = relay_hint.map(|h| h.as_secs_f64()).unwrap_or(0.0);
        let due = after_secs(now, scheduled.max(hinted));
        match due {
            Some(due) if due <= deadline => Some(due),
            _ if hinted > scheduled && now < deadline => Some(deadline),
            _ => None,
        }
    }
}

/// `now` plus `secs` seconds; `None` when that is beyond what a timestamp holds.
pub fn after_secs(now: DateTime<Utc>, secs: f64) -> Option<DateTime<Utc>> {
    if !secs.is_finite() || !(0.0..=MAX_DELAY_SECS).contains(&secs) {
        return None;
    }
    now.checked_add_signed(Duration::try_milliseconds((secs * 1000.0) as i64)?)
}

/// Delays beyond this (about 100 years) are treated as "never" by
/// [`after_secs`], far inside what chrono can add without overflow.
pub const MAX_DELAY_SECS: f64 = 100.0 * 365.25 * 86_400.0;

/// Parses a relay's "try again in N seconds/minutes" (greylisting) hint.
pub fn retry_hint(text: &str) -> Option<std::time::Duration> {
    let lower = text.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == ',' || c == '.' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    for w in words.windows(2) {
        if let Ok(n) = w[0].parse::<u64>() {
            let unit = w[1];
            // Saturating: the number is the relay's, and may be anything.
            let secs = if unit.starts_with("sec") || unit == "s" {
                n
            } else if unit.starts_with("min") {
                n.saturating_mul(60)
            } else if unit.starts_with("hour") {
                n.saturating_mul(3600)
            } else {
                continue;
            };
            if lower.contains("again")
                || lower.contains("retry")
                || lower.contains("wait")
                || lower.contains("grey")
                || lower.contains("gray")
            {
                return Some(std::time::Duration::from_secs(secs));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as StdDuration;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            schedule: [30, 120, 600].map(StdDuration::from_secs).to_vec(),
            repeat: StdDuration::from_secs(4 * 3600),
            jitter: 0.2,
        }
    }

    #[test]
    fn schedule_steps_then_repeats() {
        let p = policy();
        assert_eq!(p.base_delay(0).as_secs(), 30);
        assert_eq!(p.base_delay(2).as_secs(), 600);
        assert_eq!(p.base_delay(3).as_secs(), 4 * 3600);
        assert_eq!(p.base_delay(40).as_secs(), 4 * 3600);
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_deadline_is_respected() {
        let p = policy();
        let now = Utc::now();
        let far = now + Duration::days(3);
        let lo = p.next_due(0, now, far, None, 0.0).unwrap();
        let hi = p.next_due(0, now, far, None, 0.999).unwrap();
        assert_eq!((lo - now).num_seconds(), 24);
        assert!((hi - now).num_milliseconds() <= 36_000);
        assert!(
            p.next_due(3, now, now + Duration::hours(1), None, 0.5)
                .is_none()
        );
        let hinted = p
            .next_due(0, now, far, Some(StdDuration::from_secs(300)), 0.5)
            .unwrap();
        assert_eq!((hinted - now).num_seconds(), 300);
    }

    #[test]
    fn an_absurd_relay_hint_means_one_more_try_at_the_deadline() {
        let p = policy();
        let now = Utc::now();
        let deadline = now + Duration::hours(72);
        let hint = retry_hint("451 4.7.1 Service busy, try again in 9000000000000 seconds");
        assert_eq!(hint, Some(StdDuration::from_secs(9_000_000_000_000)));
        assert_eq!(p.next_due(0, now, deadline, hint, 0.5), Some(deadline));
        let huge = retry_hint("try again in 18446744073709551615 hours");
        assert_eq!(p.next_due(0, now, deadline, huge, 0.5), Some(deadline));
        // At (or past) the deadline there is no further try.
        assert_eq!(p.next_due(0, deadline, deadline, hint, 0.5), None);
        // Without a hint, a step past the deadline still ends the retries.
        assert_eq!(
            p.next_due(3, now, now + Duration::hours(1), None, 0.5),
            None
        );
    }

    #[test]
    fn relay_hints_are_read() {
        assert_eq!(
            retry_hint("4.2.0 Greylisted, try again in 120 seconds"),
            Some(StdDuration::from_secs(120))
        );
        assert_eq!(
            retry_hint("please retry in 5 minutes"),
            Some(StdDuration::from_secs(300))
        );
        assert_eq!(retry_hint("4.3.0 mailbox busy"), None);
    }

    #[test]
    fn kinds_round_trip() {
        for k in MailKind::all() {
            assert_eq!(MailKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(MailKind::all().len(), 19);
    }
}
