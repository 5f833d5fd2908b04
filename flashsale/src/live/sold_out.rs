//! Sold-out flags: late buyers of a sold-out item are answered from memory.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

// tokio's clock, which a test can pause and advance.
use tokio::time::Instant;

/// Items known to be sold out, remembered for a short time so late buyers are answered
/// without Redis. Short, because units of cancelled orders come back.
///
/// When a flag runs out, the instance re-checks the item's stock in Redis in the background
/// (one re-check at a time, [`Check::Recheck`]) while every late buyer, the one who noticed
/// included, is still answered from memory; the stock it reads renews the flag or drops it.
/// Letting every late buyer through at once sent a burst of full purchases (two HMACs and a
/// script call each) to Redis every `ttl`; letting one buyer's purchase be the re-check (before)
/// made that buyer wait on Redis, and on a saturated machine a few of them waited out the
/// admission timeout and were told 503 for an item that was simply sold out.
#[derive(Debug)]
pub struct SoldOut {
    ttl: Duration,
    flags: RwLock<HashMap<(i64, i64), Flag>>,
}

#[derive(Debug, Clone, Copy)]
struct Flag {
    until: Instant,
    /// A re-check is reading the stock (see [`Check::Recheck`]).
    probing: bool,
}

/// What the flag says about a purchase of one item.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Not known to be sold out: the purchase goes to Redis.
    Open,
    /// Sold out (or being re-checked): answer `sold_out` from memory.
    SoldOut,
    /// Sold out as far as this instance knows, but the flag ran out: answer `sold_out` from
    /// memory and start the re-check, which ends in [`SoldOut::learn`] (the stock it read) or
    /// [`SoldOut::renew`] (it could not read it); until then every purchase gets `SoldOut`.
    Recheck,
}

impl SoldOut {
    /// Flags live `ttl` (zero turns them off).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            flags: RwLock::new(HashMap::new()),
        }
    }

    /// What to do with a purchase of `(session, sku)`; see [`Check`].
    pub fn check(&self, session: i64, sku: i64) -> Check {
        let key = (session, sku);
        let now = Instant::now();
        let answer = |flag: Option<&Flag>| match flag {
            None => Some(Check::Open),
            Some(f) if now < f.until || f.probing => Some(Check::SoldOut),
            Some(_) => None,
        };
        if let Some(answer) = answer(self.flags.read().expect("not poisoned").get(&key)) {
            return answer;
        }
        let mut flags = self.flags.write().expect("not poisoned");
        if let Some(answer) = answer(flags.get(&key)) {
            return answer;
        }
        match flags.get_mut(&key) {
            Some(flag) => {
                flag.probing = true;
                Check::Recheck
            }
            // Dropped (units came back) between the two looks.
            None => Check::Open,
        }
    }

    /// A re-check could not read the stock (Redis failing or slow): the last answer stands for
    /// another `ttl`, and the next purchase after that starts another re-check. Redis being
    /// down does not make an item that was sold out available; its buyers would only be told
    /// 503 instead.
    pub fn renew(&self, session: i64, sku: i64) {
        let mut flags = self.flags.write().expect("not poisoned");
        if let Some(flag) = flags.get_mut(&(session, sku)) {
            flag.until = Instant::now() + self.ttl;
            flag.probing = false;
        }
    }

    /// What Redis said is left of `(session, sku)` after a purchase: none flags it (again),
    /// some drops the flag (units came back).
    pub fn learn(&self, session: i64, sku: i64, left: i64) {
        if left > 0 {
            // The common case (no flag) only reads: admissions must not queue on the write lock.
            if self
                .flags
                .read()
                .expect("not poisoned")
                .contains_key(&(session, sku))
            {
                self.clear(session, sku);
            }
        } else {
            self.set(session, sku);
        }
    }

    /// Flags `(session, sku)`.
    pub fn set(&self, session: i64, sku: i64) {
        if self.ttl.is_zero() {
            return;
        }
        let mut flags = self.flags.write().expect("not poisoned");
        let now = Instant::now();
        flags.retain(|_, f| f.until > now || f.probing);
        flags.insert(
            (session, sku),
            Flag {
                until: now + self.ttl,
                probing: false,
            },
        );
        metrics::gauge!("flashsale_sold_out_flags").set(flags.len() as f64);
    }

    /// Drops the flag of `(session, sku)` (units came back).
    pub fn clear(&self, session: i64, sku: i64) {
        let mut flags = self.flags.write().expect("not poisoned");
        if flags.remove(&(session, sku)).is_some() {
            metrics::gauge!("flashsale_sold_out_flags").set(flags.len() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_expired_flag_is_rechecked_once_while_every_purchase_is_answered() {
        let s = SoldOut::new(Duration::from_millis(20));
        assert_eq!(s.check(1, 2), Check::Open);
        s.set(1, 2);
        assert_eq!(s.check(1, 2), Check::SoldOut);
        tokio::time::advance(Duration::from_millis(30)).await;
        assert_eq!(s.check(1, 2), Check::Recheck, "the flag ran out");
        assert_eq!(s.check(1, 2), Check::SoldOut, "one re-check at a time");
        s.learn(1, 2, 0);
        assert_eq!(s.check(1, 2), Check::SoldOut, "still none left: renewed");
        tokio::time::advance(Duration::from_millis(30)).await;
        assert_eq!(s.check(1, 2), Check::Recheck, "expired again");
        s.renew(1, 2);
        assert_eq!(
            s.check(1, 2),
            Check::SoldOut,
            "a re-check that read nothing keeps the last answer"
        );
        tokio::time::advance(Duration::from_millis(30)).await;
        assert_eq!(s.check(1, 2), Check::Recheck, "and tries again after a ttl");
        s.learn(1, 2, 3);
        assert_eq!(s.check(1, 2), Check::Open, "units came back: dropped");
        s.renew(1, 2);
        assert_eq!(s.check(1, 2), Check::Open, "renewing no flag makes none");
    }

    #[test]
    fn a_zero_ttl_never_flags() {
        let s = SoldOut::new(Duration::ZERO);
        s.learn(1, 2, 0);
        assert!(matches!(s.check(1, 2), Check::Open));
    }

    #[tokio::test(start_paused = true)]
    async fn sold_out_flags_expire() {
        let s = SoldOut::new(Duration::from_millis(20));
        s.set(1, 2);
        assert!(matches!(s.check(1, 2), Check::SoldOut));
        assert!(matches!(s.check(1, 3), Check::Open));
        tokio::time::advance(Duration::from_millis(30)).await;
        assert_eq!(s.check(1, 2), Check::Recheck);
        s.set(1, 2);
        s.clear(1, 2);
        assert!(matches!(s.check(1, 2), Check::Open));
    }
}
