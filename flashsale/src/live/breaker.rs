//! The Redis circuit breaker of the purchase path.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

// tokio's clock, which a test can pause and advance.
use tokio::time::Instant;

/// A circuit breaker around Redis on the purchase path: after `threshold` consecutive
/// failures it opens for `open_for`, answering at once instead of queueing on a sick Redis;
/// then one probe goes through, and its result closes or reopens it.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open (0: closed).
    open_until_ms: AtomicU64,
    probing: AtomicBool,
    epoch: Instant,
}

/// The breaker's answer for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Go ahead.
    Call,
    /// Go ahead as the one probe of a half-open breaker.
    Probe,
    /// Refuse now.
    Open,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold,
            open_for,
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// May a call go to Redis now?
    pub fn permit(&self) -> Permit {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Permit::Call;
        }
        if self.now_ms() < until {
            return Permit::Open;
        }
        // Half-open: exactly one caller probes.
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            Permit::Probe
        } else {
            Permit::Open
        }
    }

    /// Reports a call's result.
    pub fn record(&self, permit: Permit, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Release);
            if permit == Permit::Probe || self.open_until_ms.load(Ordering::Acquire) != 0 {
                self.open_until_ms.store(0, Ordering::Release);
                self.probing.store(false, Ordering::Release);
                metrics::gauge!("flashsale_redis_breaker_open").set(0.0);
            }
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if permit == Permit::Probe || failures >= self.threshold {
            let until = self.now_ms() + self.open_for.as_millis() as u64;
            self.open_until_ms.store(until.max(1), Ordering::Release);
            self.probing.store(false, Ordering::Release);
            metrics::gauge!("flashsale_redis_breaker_open").set(1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_after_the_threshold_probes_once_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_millis(30));
        for _ in 0..2 {
            assert_eq!(b.permit(), Permit::Call);
            b.record(Permit::Call, false);
        }
        assert_eq!(b.permit(), Permit::Call);
        b.record(Permit::Call, false);
        assert_eq!(b.permit(), Permit::Open, "open after 3 failures");
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(b.permit(), Permit::Probe);
        assert_eq!(b.permit(), Permit::Open, "one probe at a time");
        b.record(Permit::Probe, false);
        assert_eq!(b.permit(), Permit::Open, "a failed probe reopens");
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(b.permit(), Permit::Probe);
        b.record(Permit::Probe, true);
        assert_eq!(b.permit(), Permit::Call, "a good probe closes");
    }
}
