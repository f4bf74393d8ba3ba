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

    /// Records a relay-level failure; returns true when this opened the circuit.
    pub fn failure(&self, reason: &str, immediate: bool) -> bool {
        let mut g = self.inner.lock().expect("breaker lock");
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
