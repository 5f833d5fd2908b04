//! Purchases whose retries must reach Redis even when the item looks sold out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

// tokio's clock, which a test can pause and advance.
use tokio::time::Instant;

/// Purchases whose admission call may have run in Redis although this instance never got the
/// answer (a timeout, or an error after the command was sent). The sold-out flag must not
/// answer their retries: the script remembers their first answer, which may be an admission.
#[derive(Debug)]
pub struct Uncertain {
    /// Request ids by user, so a look-up borrows instead of building a key.
    entries: std::sync::Mutex<HashMap<String, HashMap<String, Instant>>>,
    /// Entries held, readable without the lock: every sold-out answer asks, and almost always
    /// there are none, so that answer never takes a lock shared by the serving threads.
    len: AtomicUsize,
    /// When the newest entry runs out, in milliseconds since `epoch`: past it every entry is
    /// stale, and the sold-out answer skips the lock again even though nothing removed them.
    live_until_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Uncertain {
    fn default() -> Self {
        Self {
            entries: Default::default(),
            len: AtomicUsize::new(0),
            live_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

/// How long a retry of an uncertain purchase bypasses the sold-out flag.
const UNCERTAIN_TTL: Duration = Duration::from_secs(60);

impl Uncertain {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether any entry may still match, known without the lock: when not, a caller need not
    /// even work out which user is asking.
    pub fn may_hold_any(&self) -> bool {
        self.len.load(Ordering::Acquire) > 0 && self.now_ms() < self.live_until_ms.load(Ordering::Acquire)
    }

    /// Publishes the count (under the lock, after the change it counts).
    fn count(&self, entries: &HashMap<String, HashMap<String, Instant>>) {
        self.len
            .store(entries.values().map(HashMap::len).sum(), Ordering::Release);
    }

    /// Remembers `(user, request_id)`.
    pub fn add(&self, user: &str, request_id: &str) {
        let mut entries = self.entries.lock().expect("not poisoned");
        let now = Instant::now();
        if self.len.load(Ordering::Relaxed) > 10_000 {
            for ids in entries.values_mut() {
                ids.retain(|_, at| now.duration_since(*at) < UNCERTAIN_TTL);
            }
            entries.retain(|_, ids| !ids.is_empty());
        }
        entries
            .entry(user.to_owned())
            .or_default()
            .insert(request_id.to_owned(), now);
        self.live_until_ms.store(
            // A millisecond past the entry's own expiry, so rounding never ends it early.
            self.now_ms() + UNCERTAIN_TTL.as_millis() as u64 + 1,
            Ordering::Release,
        );
        self.count(&entries);
    }

    /// Forgets `(user, request_id)`: the script answered it `sold_out`, so no admission is
    /// recorded under it and the flag's answer is now the script's. Without this, every retry
    /// of a purchase whose first answer was lost went to Redis for the whole TTL, at the moment
    /// Redis was struggling. An answer that admits (or repeats an admission) keeps the entry:
    /// its retries must keep getting that admission, not the flag's `sold_out`.
    pub fn resolve(&self, user: &str, request_id: &str) {
        if !self.may_hold_any() {
            return;
        }
        let mut entries = self.entries.lock().expect("not poisoned");
        let Some(ids) = entries.get_mut(user) else {
            return;
        };
        if ids.remove(request_id).is_none() {
            return;
        }
        if ids.is_empty() {
            entries.remove(user);
        }
        self.count(&entries);
    }

    /// Whether `(user, request_id)` is a retry of an uncertain purchase.
    pub fn contains(&self, user: &str, request_id: &str) -> bool {
        // Stored under the lock after the insert, so a purchase that follows the one that added
        // an entry (its retry) sees it.
        if !self.may_hold_any() {
            return false;
        }
        let entries = self.entries.lock().expect("not poisoned");
        entries
            .get(user)
            .and_then(|ids| ids.get(request_id))
            .is_some_and(|at| at.elapsed() < UNCERTAIN_TTL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncertain_purchases_are_known_by_user_and_request_id() {
        let u = Uncertain::default();
        assert!(!u.contains("7", "r1"), "none yet");
        u.add("7", "r1");
        u.add("7", "r2");
        u.add("8", "r1");
        assert!(u.contains("7", "r1"));
        assert!(u.contains("7", "r2"));
        assert!(u.contains("8", "r1"));
        assert!(!u.contains("8", "r2"), "another request of a known user");
        assert!(!u.contains("9", "r1"), "another user");
        assert_eq!(u.len.load(Ordering::Acquire), 3);
        u.add("7", "r1");
        assert_eq!(u.len.load(Ordering::Acquire), 3, "a repeat is one entry");

        u.resolve("7", "r1");
        assert!(!u.contains("7", "r1"), "answered by the script: forgotten");
        assert!(
            u.contains("7", "r2"),
            "the user's other purchase is still uncertain"
        );
        u.resolve("9", "r1");
        u.resolve("7", "r9");
        assert_eq!(u.len.load(Ordering::Acquire), 2, "unknown entries change nothing");
        u.resolve("7", "r2");
        u.resolve("8", "r1");
        assert_eq!(u.len.load(Ordering::Acquire), 0);
        assert!(
            u.entries.lock().unwrap().is_empty(),
            "no user left without entries"
        );
    }
}
