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

    /// Parses a stored kind, keeping a name this version does not know.
    pub fn parse_stored(s: &str) -> Result<Self, Unknown> {
        Self::parse(s).ok_or_else(|| Unknown(s.to_owned()))
    }

    /// True for the mails about a module event (the ones that escalate when undeliverable).
    pub fn is_module(self) -> bool {
        matches!(self, Self::Module(_))
    }
}

/// A stored name (a mail kind, a rule) this version does not know: a row
/// written by a newer version. Such a delivery is ended visibly, never sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown(pub String);

impl std::fmt::Display for Unknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
    /// Accepted by the relay, then refused by the recipient's server (a
    /// hard bounce read back). Final; reached only from `sent`.
    Bounced,
}

impl DeliveryStatus {
    /// All states.
    pub const ALL: [DeliveryStatus; 6] = [
        Self::Pending,
        Self::Sending,
        Self::Sent,
        Self::Failed,
        Self::Cancelled,
        Self::Bounced,
    ];

    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Bounced => "bounced",
        }
    }

    /// Parses the stored word.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// True for `sent`, `failed`, `cancelled` and `bounced`.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Sent | Self::Failed | Self::Cancelled | Self::Bounced
        )
    }

    /// True when a bounce read back may move a delivery in this state to
    /// `bounced`: `sent → bounced` is the only way out of a final state.
    pub fn may_bounce(self) -> bool {
        self == Self::Sent
    }
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for DeliveryStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
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

    /// Parses the stored word.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl serde::Serialize for AttemptOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What an entry of a delivery's attempt log records: an SMTP attempt
/// (numbered), or a report read back after the relay accepted the mail
/// (no number; it raises neither `attempts` nor the attempt metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogOutcome {
    /// An SMTP attempt and how it ended.
    Attempt(AttemptOutcome),
    /// The recipient's server refused the mail for good (a hard bounce).
    Bounced,
    /// The recipient's server reported the mail delayed.
    Delayed,
}

impl LogOutcome {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attempt(a) => a.as_str(),
            Self::Bounced => "bounced",
            Self::Delayed => "delayed",
        }
    }

    /// Parses the stored word.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bounced" => Some(Self::Bounced),
            "delayed" => Some(Self::Delayed),
            _ => AttemptOutcome::parse(s).map(Self::Attempt),
        }
    }
}

impl serde::Serialize for LogOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
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

/// Where a delivery goes after an attempt (or a check before one).
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Sent {
        sent_to: String,
        at_ms: i64,
    },
    Retry {
        due_ms: i64,
        retry_step: i64,
        error: String,
        sent_to: Option<String>,
    },
    Failed {
        error: String,
        sent_to: Option<String>,
    },
    Cancelled {
        reason: String,
    },
    /// Handed back unsent (the worker is stopping): `pending` as before the
    /// claim, `last_error` and the retry step untouched.
    Released,
}

impl Transition {
    /// The status this transition leads to.
    pub fn status(&self) -> DeliveryStatus {
        match self {
            Self::Sent { .. } => DeliveryStatus::Sent,
            Self::Retry { .. } => DeliveryStatus::Pending,
            Self::Failed { .. } => DeliveryStatus::Failed,
            Self::Cancelled { .. } => DeliveryStatus::Cancelled,
            Self::Released => DeliveryStatus::Pending,
        }
    }
}

/// How often a 5.7.x refusal of a recipient at RCPT is retried before the
/// delivery fails.
pub const MAX_POLICY_RETRIES: i64 = 2;

/// What an attempt showed, as far as the next state depends on it.
#[derive(Debug, Clone)]
pub struct Attempted<'a> {
    pub outcome: AttemptOutcome,
    /// The relay's reply or the error, kept as the delivery's last error.
    pub detail: &'a str,
    /// A 5.7.x refusal of this recipient at RCPT.
    pub recipient_policy: bool,
    /// The relay could not be reached, or greeted and then hung.
    pub unreachable: bool,
    /// A relay's own "try again in N".
    pub retry_hint: Option<std::time::Duration>,
}

/// Where a delivery stood when it was claimed.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub retry_step: i64,
    pub policy_rejections: i64,
    pub deadline: DateTime<Utc>,
}

/// The rules [`next_state`] applies.
#[derive(Debug, Clone)]
pub struct StateRules {
    pub retry: RetryPolicy,
    /// How long the relay circuit stays open: a relay's fault comes back then.
    pub breaker_open_for: std::time::Duration,
}

/// The delivery state machine: where a delivery at `progress` goes after an
/// attempt to `address` that showed `a` at `now`. `unit` in `[0, 1)` draws
/// the retry jitter. Pure: the caller records the result.
pub fn next_state(
    rules: &StateRules,
    progress: Progress,
    a: &Attempted<'_>,
    address: &str,
    now: DateTime<Utc>,
    unit: f64,
) -> Transition {
    let sent_to = Some(address.to_owned());
    let error = a.detail.to_owned();
    let on_schedule = |error: String, sent_to: Option<String>, hint| match rules.retry.next_due(
        progress.retry_step.clamp(0, i64::from(u32::MAX)) as u32,
        now,
        progress.deadline,
        hint,
        unit,
    ) {
        Some(due) => Transition::Retry {
            due_ms: due.timestamp_millis(),
            retry_step: progress.retry_step + 1,
            error,
            sent_to,
        },
        None => Transition::Failed {
            error: format!("deadline passed: {error}"),
            sent_to,
        },
    };
    match a.outcome {
        AttemptOutcome::Sent => Transition::Sent {
            sent_to: address.to_owned(),
            at_ms: now.timestamp_millis(),
        },
        // A recipient's policy refusal is often a passing block (a
        // reputation list, a full quota mislabelled): two more tries on the
        // recipient schedule, then it is permanent.
        AttemptOutcome::Permanent
            if a.recipient_policy && progress.policy_rejections < MAX_POLICY_RETRIES =>
        {
            on_schedule(error, sent_to, None)
        }
        AttemptOutcome::Permanent => Transition::Failed { error, sent_to },
        AttemptOutcome::RelayFault if now > progress.deadline => Transition::Failed {
            error: format!("deadline passed while the relay was unusable: {error}"),
            sent_to: None,
        },
        // The relay's fault, not the recipient's: the retry step stays, and
        // the delivery comes back when the circuit probes again.
        AttemptOutcome::RelayFault => Transition::Retry {
            due_ms: later(now, rules.breaker_open_for),
            retry_step: progress.retry_step,
            error,
            sent_to: None,
        },
        AttemptOutcome::Transient if a.unreachable => {
            if now > progress.deadline {
                Transition::Failed {
                    error: format!("deadline passed: {error}"),
                    sent_to: None,
                }
            } else {
                Transition::Retry {
                    due_ms: later(now, rules.breaker_open_for.min(rules.retry.base_delay(0))),
                    retry_step: progress.retry_step,
                    error,
                    sent_to: None,
                }
            }
        }
        AttemptOutcome::Transient | AttemptOutcome::Unknown => {
            on_schedule(error, sent_to, a.retry_hint)
        }
    }
}

/// `now + d` in epoch milliseconds, saturating.
fn later(now: DateTime<Utc>, d: std::time::Duration) -> i64 {
    now.timestamp_millis()
        .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

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

    /// One row of the state machine's table: the attempt, where the
    /// delivery stood, and what it must become.
    struct Row {
        name: &'static str,
        outcome: AttemptOutcome,
        recipient_policy: bool,
        unreachable: bool,
        hint_secs: Option<u64>,
        retry_step: i64,
        policy_rejections: i64,
        /// Deadline relative to now, in seconds (negative: passed).
        deadline_in: i64,
        expect: Expect,
    }

    #[derive(Debug, PartialEq)]
    enum Expect {
        Sent,
        /// Retry after this many seconds (±jitter), at this step, with or
        /// without the address it was sent to.
        Retry {
            after: i64,
            step: i64,
            sent_to: bool,
        },
        Failed {
            deadline: bool,
            sent_to: bool,
        },
    }

    #[test]
    fn the_state_machine_follows_its_table() {
        use AttemptOutcome as O;
        let rules = StateRules {
            retry: RetryPolicy {
                schedule: [30, 120].map(StdDuration::from_secs).to_vec(),
                repeat: StdDuration::from_secs(3600),
                jitter: 0.0,
            },
            breaker_open_for: StdDuration::from_secs(60),
        };
        let day = 86_400;
        let row = |name, outcome, deadline_in, expect| Row {
            name,
            outcome,
            recipient_policy: false,
            unreachable: false,
            hint_secs: None,
            retry_step: 0,
            policy_rejections: 0,
            deadline_in,
            expect,
        };
        let table = [
            row("accepted", O::Sent, day, Expect::Sent),
            row(
                "accepted after the deadline still counts",
                O::Sent,
                -1,
                Expect::Sent,
            ),
            row(
                "refused for good",
                O::Permanent,
                day,
                Expect::Failed {
                    deadline: false,
                    sent_to: true,
                },
            ),
            row(
                "4xx: first step",
                O::Transient,
                day,
                Expect::Retry {
                    after: 30,
                    step: 1,
                    sent_to: true,
                },
            ),
            Row {
                retry_step: 1,
                ..row(
                    "4xx: second step",
                    O::Transient,
                    day,
                    Expect::Retry {
                        after: 120,
                        step: 2,
                        sent_to: true,
                    },
                )
            },
            Row {
                retry_step: 7,
                ..row(
                    "4xx: then the repeat",
                    O::Transient,
                    day,
                    Expect::Retry {
                        after: 3600,
                        step: 8,
                        sent_to: true,
                    },
                )
            },
            row(
                "4xx: step past the deadline",
                O::Transient,
                10,
                Expect::Failed {
                    deadline: true,
                    sent_to: true,
                },
            ),
            row(
                "no reply to the data: on the schedule",
                O::Unknown,
                day,
                Expect::Retry {
                    after: 30,
                    step: 1,
                    sent_to: true,
                },
            ),
            Row {
                hint_secs: Some(300),
                ..row(
                    "greylisting hint wins when longer",
                    O::Transient,
                    day,
                    Expect::Retry {
                        after: 300,
                        step: 1,
                        sent_to: true,
                    },
                )
            },
            Row {
                hint_secs: Some(10 * day as u64),
                ..row(
                    "a hint past the deadline: one try at it",
                    O::Transient,
                    day,
                    Expect::Retry {
                        after: day,
                        step: 1,
                        sent_to: true,
                    },
                )
            },
            Row {
                unreachable: true,
                ..row(
                    "relay unreachable: soon, step kept",
                    O::Transient,
                    day,
                    Expect::Retry {
                        after: 30,
                        step: 0,
                        sent_to: false,
                    },
                )
            },
            Row {
                unreachable: true,
                ..row(
                    "relay unreachable after the deadline",
                    O::Transient,
                    -1,
                    Expect::Failed {
                        deadline: true,
                        sent_to: false,
                    },
                )
            },
            Row {
                retry_step: 2,
                ..row(
                    "relay fault: after the circuit, step kept",
                    O::RelayFault,
                    day,
                    Expect::Retry {
                        after: 60,
                        step: 2,
                        sent_to: false,
                    },
                )
            },
            row(
                "relay fault after the deadline",
                O::RelayFault,
                -1,
                Expect::Failed {
                    deadline: true,
                    sent_to: false,
                },
            ),
            Row {
                recipient_policy: true,
                ..row(
                    "5.7.x at RCPT: retried",
                    O::Permanent,
                    day,
                    Expect::Retry {
                        after: 30,
                        step: 1,
                        sent_to: true,
                    },
                )
            },
            Row {
                recipient_policy: true,
                policy_rejections: 1,
                retry_step: 1,
                ..row(
                    "5.7.x at RCPT: second retry",
                    O::Permanent,
                    day,
                    Expect::Retry {
                        after: 120,
                        step: 2,
                        sent_to: true,
                    },
                )
            },
            Row {
                recipient_policy: true,
                policy_rejections: MAX_POLICY_RETRIES,
                ..row(
                    "5.7.x at RCPT: then permanent",
                    O::Permanent,
                    day,
                    Expect::Failed {
                        deadline: false,
                        sent_to: true,
                    },
                )
            },
        ];
        let now = Utc::now();
        for r in table {
            let a = Attempted {
                outcome: r.outcome,
                detail: "450 4.2.0 try later",
                recipient_policy: r.recipient_policy,
                unreachable: r.unreachable,
                retry_hint: r.hint_secs.map(StdDuration::from_secs),
            };
            let progress = Progress {
                retry_step: r.retry_step,
                policy_rejections: r.policy_rejections,
                deadline: now + Duration::seconds(r.deadline_in),
            };
            let t = next_state(&rules, progress, &a, "a@b.example", now, 0.5);
            let got = match &t {
                Transition::Sent { sent_to, at_ms } => {
                    assert_eq!(
                        (sent_to.as_str(), *at_ms),
                        ("a@b.example", now.timestamp_millis()),
                        "{}",
                        r.name
                    );
                    Expect::Sent
                }
                Transition::Retry {
                    due_ms,
                    retry_step,
                    error,
                    sent_to,
                } => {
                    assert_eq!(error, "450 4.2.0 try later", "{}", r.name);
                    Expect::Retry {
                        after: (due_ms - now.timestamp_millis()) / 1000,
                        step: *retry_step,
                        sent_to: sent_to.is_some(),
                    }
                }
                Transition::Failed { error, sent_to } => Expect::Failed {
                    deadline: error.starts_with("deadline passed"),
                    sent_to: sent_to.is_some(),
                },
                other => panic!("{}: unexpected {other:?}", r.name),
            };
            assert_eq!(got, r.expect, "{}", r.name);
        }
    }
}
