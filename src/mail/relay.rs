//! Relay protection: a circuit breaker that pauses dispatch while the relay is
//! down or misconfigured (and lets one probe through to find out when it is
//! back), and a rate limit that bounds how fast a backlog drains.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The breaker's state, as shown in logs, readiness and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Sending normally.
    Closed,
    /// Paused until the instant; nothing is claimed.
    Open,
    /// One probe is allowed to find out whether the relay is back.
    HalfOpen,
}

impl CircuitState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

struct BreakerInner {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    last_reason: Option<String>,
    /// The current run of distinct recipients refused with 5.7.x at RCPT:
    /// (lower-cased address, delivery id). Memory only, never logged.
    refusals: Vec<(String, String)>,
    /// The circuit is open because such a run reached the threshold.
    refusing: bool,
}

/// What a 5.7.x refusal at RCPT means once the breaker has seen the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalVerdict {
    /// About this recipient: retried a few times, then permanent.
    Recipient,
    /// `breaker.failure_threshold` distinct recipients in a row were refused:
    /// the relay refuses us. The circuit is open; `earlier` are the other
    /// deliveries of that run, already recorded as recipient refusals.
    RelayRefuses { earlier: Vec<String> },
}

/// Counts relay-level failures across deliveries and opens after
/// `threshold` in a row (or at once on a relay fault).
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    inner: Mutex<BreakerInner>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            inner: Mutex::new(BreakerInner {
                consecutive_failures: 0,
                open_until: None,
                last_reason: None,
                refusals: Vec::new(),
                refusing: false,
            }),
        }
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        let g = self.inner.lock().expect("breaker lock");
        match g.open_until {
            None => CircuitState::Closed,
            Some(t) if Instant::now() < t => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// Why it last opened (for readiness and logs).
    pub fn last_reason(&self) -> Option<String> {
        self.inner.lock().expect("breaker lock").last_reason.clone()
    }

    /// How long until a probe may go (zero when not open).
    pub fn wait(&self) -> Duration {
        let g = self.inner.lock().expect("breaker lock");
        g.open_until
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }

    /// Records a 5.7.x refusal at RCPT of `address` (delivery `delivery_id`)
    /// and says whether it is about the recipient or about us.
    pub fn recipient_refused(&self, address: &str, delivery_id: &str) -> RefusalVerdict {
        let mut g = self.inner.lock().expect("breaker lock");
        if g.refusing && g.open_until.is_some() {
            // Still refused after the pause (a probe, or a send that was in
            // flight when the run was detected): keep the circuit open.
            g.open_until = Some(Instant::now() + self.open_for);
            return RefusalVerdict::RelayRefuses {
                earlier: Vec::new(),
            };
        }
        if g.open_until.take().is_some() {
            // A probe after a pause for another reason: the relay answers.
            g.consecutive_failures = 0;
            g.last_reason = None;
        }
        let address = address.to_ascii_lowercase();
        if !g.refusals.iter().any(|(a, _)| *a == address) {
            g.refusals.push((address, delivery_id.to_owned()));
        }
        if (g.refusals.len() as u32) < self.threshold {
            return RefusalVerdict::Recipient;
        }
        let run = std::mem::take(&mut g.refusals);
        g.open_until = Some(Instant::now() + self.open_for);
        g.refusing = true;
        g.last_reason = Some(format!(
            "the relay refuses our mail: {} distinct recipients in a row were refused with 5.7.x at RCPT (relay access denied? check the relay's permissions for this sender)",
            run.len()
        ));
        RefusalVerdict::RelayRefuses {
            earlier: run
                .into_iter()
                .map(|(_, id)| id)
                .filter(|id| id != delivery_id)
                .collect(),
        }
    }

    /// True while the circuit is open because the relay refuses our mail.
    pub fn is_refusing(&self) -> bool {
        let g = self.inner.lock().expect("breaker lock");
        g.refusing && g.open_until.is_some()
    }

    /// Records a relay-level failure; returns true when this opened the circuit.
    pub fn failure(&self, reason: &str, immediate: bool) -> bool {
        let mut g = self.inner.lock().expect("breaker lock");
        g.refusals.clear();
        g.consecutive_failures += 1;
        let was_open = g.open_until.is_some();
        if immediate || g.consecutive_failures >= self.threshold || was_open {
            g.open_until = Some(Instant::now() + self.open_for);
            g.last_reason = Some(reason.to_owned());
            return !was_open;
        }
        false
    }

    /// Records that the relay answered normally; returns true when this closed the circuit.
    pub fn success(&self) -> bool {
        let mut g = self.inner.lock().expect("breaker lock");
        g.consecutive_failures = 0;
        g.refusals.clear();
        g.refusing = false;
        let was_open = g.open_until.take().is_some();
        if was_open {
            g.last_reason = None;
        }
        was_open
    }
}

struct LimiterInner {
    completions: VecDeque<Instant>,
    in_flight: u32,
}

/// At most `per_second` sends in any one-second window, counted the way the
/// relay sees them.
///
/// A send may start only while (sends completed in the last second) plus
/// (sends in flight) is below the limit. Whatever the relay's latency, the
/// sends it accepts inside any one-second window then number at most the
/// limit: of those, the last to start saw every other one either in flight
/// or completed less than a second before.
pub struct RateLimiter {
    per_second: u32,
    window: Duration,
    inner: Mutex<LimiterInner>,
    freed: Notify,
}

/// Holds a send slot; completion is recorded when dropped.
pub struct Permit<'a> {
    limiter: Option<&'a RateLimiter>,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.limiter {
            let mut g = l.inner.lock().expect("limiter lock");
            g.in_flight -= 1;
            g.completions.push_back(Instant::now());
            drop(g);
            l.freed.notify_waiters();
        }
    }
}

impl RateLimiter {
    /// A limiter for `per_second` sends per second; 0 means unlimited.
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window: Duration::from_secs(1),
            inner: Mutex::new(LimiterInner {
                completions: VecDeque::new(),
                in_flight: 0,
            }),
            freed: Notify::new(),
        }
    }

    /// Waits for a send slot.
    pub async fn acquire(&self) -> Permit<'_> {
        if self.per_second == 0 {
            return Permit { limiter: None };
        }
        loop {
            let notified = self.freed.notified();
            let wait = {
                let mut g = self.inner.lock().expect("limiter lock");
                let now = Instant::now();
                while g
                    .completions
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    g.completions.pop_front();
                }
                if (g.completions.len() as u32) + g.in_flight < self.per_second {
                    g.in_flight += 1;
                    return Permit {
                        limiter: Some(self),
                    };
                }
                g.completions
                    .front()
                    .map(|t| self.window.saturating_sub(now.duration_since(*t)))
            };
            match wait {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_threshold_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_secs(60));
        assert!(!b.failure("refused", false));
        assert!(!b.failure("refused", false));
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.failure("refused", false));
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.success());
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.failure("535 auth", true));
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn a_run_of_distinct_refused_recipients_is_the_relay_refusing_us() {
        let b = Breaker::new(3, Duration::from_secs(60));
        assert_eq!(
            b.recipient_refused("a@x.nl", "d1"),
            RefusalVerdict::Recipient
        );
        // The same recipient again does not make the run longer.
        assert_eq!(
            b.recipient_refused("A@x.nl", "d1b"),
            RefusalVerdict::Recipient
        );
        assert_eq!(
            b.recipient_refused("b@x.nl", "d2"),
            RefusalVerdict::Recipient
        );
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(
            b.recipient_refused("c@x.nl", "d3"),
            RefusalVerdict::RelayRefuses {
                earlier: vec!["d1".into(), "d2".into()]
            }
        );
        assert_eq!(b.state(), CircuitState::Open);
        assert!(matches!(
            b.recipient_refused("d@x.nl", "d4"),
            RefusalVerdict::RelayRefuses { .. }
        ));
        // Anything else the relay says breaks the run.
        b.success();
        b.recipient_refused("a@x.nl", "d1");
        b.recipient_refused("b@x.nl", "d2");
        b.success();
        assert_eq!(
            b.recipient_refused("c@x.nl", "d3"),
            RefusalVerdict::Recipient
        );
    }

    #[test]
    fn breaker_half_opens_after_its_pause() {
        let b = Breaker::new(1, Duration::ZERO);
        b.failure("refused", false);
        assert_eq!(b.state(), CircuitState::HalfOpen);
    }

    #[tokio::test]
    async fn limiter_counts_in_flight_sends() {
        let l = RateLimiter::new(2);
        let a = l.acquire().await;
        let _b = l.acquire().await;
        let third = tokio::time::timeout(Duration::from_millis(50), l.acquire()).await;
        assert!(
            third.is_err(),
            "a third send must wait while two are in flight"
        );
        drop(a);
        let third = tokio::time::timeout(Duration::from_millis(50), l.acquire()).await;
        assert!(third.is_err(), "a completed send still counts for a second");
    }
}
