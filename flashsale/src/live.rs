//! What every instance keeps in memory for the hot path: the catalog of sessions (read from
//! Redis, never from Postgres, refreshed in the background), sold-out flags, the Redis breaker
//! and the in-flight limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use mall_common::redis::{Redis, RedisError, client};
use serde_json::json;

use crate::store::admission::{self, ItemKeys};
use crate::store::sessions::Session;

/// The Redis key of the catalog the job publishes (every session not yet settled).
pub fn catalog_key(redis: &Redis) -> String {
    redis.key("fs:catalog")
}

/// One instance's view of the sale.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Sessions not yet settled, by start.
    pub sessions: Vec<Session>,
    /// The public `GET /api/flashsale/sessions` body, rendered once per refresh.
    pub public: Bytes,
    /// The Redis keys of every item, by `(session, sku)`: built once per refresh rather than
    /// formatted (seven keys, fourteen strings) on every purchase.
    keys: HashMap<(i64, i64), Arc<ItemKeys>>,
}

impl Snapshot {
    /// A session by id.
    pub fn session(&self, id: i64) -> Option<&Session> {
        self.sessions.iter().find(|s| s.session_id == id)
    }

    /// The keys of `sku` in `session`: the snapshot's, or made now for an item it does not
    /// know yet (a session warmed since the last refresh; the script decides either way).
    pub fn item_keys(&self, redis: &Redis, session: i64, sku: i64) -> Arc<ItemKeys> {
        match self.keys.get(&(session, sku)) {
            Some(keys) => keys.clone(),
            None => Arc::new(ItemKeys::new(redis, session, sku)),
        }
    }
}

/// Reads the catalog and the live stock counters from Redis into a new snapshot; `None` when
/// Redis holds no catalog (not published yet, or lost with Redis's data until the job publishes
/// it again: the last snapshot is better than none).
pub async fn load(redis: &Redis) -> Result<Option<Snapshot>, RedisError> {
    let key = &catalog_key(redis);
    let raw: Option<String> = redis
        .retrying(|mut conn| async move { Ok(client::cmd("GET").arg(key).query_async(&mut *conn).await?) })
        .await?;
    let Some(raw) = raw else { return Ok(None) };
    let sessions: Vec<Session> = serde_json::from_str(&raw).unwrap_or_default();
    let keys: Vec<ItemKeys> = sessions
        .iter()
        .flat_map(|s| {
            s.items
                .iter()
                .map(|i| ItemKeys::new(redis, s.session_id, i.sku_id))
        })
        .collect();
    let mut left = admission::stock_left(redis, &keys).await?.into_iter();
    let now = Utc::now();
    let mut public = Vec::new();
    let mut running_left = 0;
    for s in &sessions {
        let running = s.status == "active" && s.starts_at <= now && now < s.ends_at;
        let items: Vec<_> = s
            .items
            .iter()
            .map(|i| {
                let remaining = left.next().flatten().unwrap_or(i.quantity);
                if running {
                    running_left += remaining.max(0);
                }
                json!({
                    "sku_id": i.sku_id,
                    "price_cents": i.price_cents,
                    "quantity": i.quantity,
                    "per_user_limit": i.per_user_limit,
                    "remaining": remaining,
                })
            })
            .collect();
        if s.ends_at <= now || s.status != "active" {
            continue;
        }
        public.push(json!({
            "session_id": s.session_id,
            "starts_at": s.starts_at,
            "ends_at": s.ends_at,
            "status": if s.starts_at <= now { "running" } else { "upcoming" },
            "items": items,
        }));
    }
    metrics::gauge!("flashsale_remaining_units").set(running_left as f64);
    let body = serde_json::to_vec(&json!({ "sessions": public })).expect("json");
    let ids = sessions
        .iter()
        .flat_map(|s| s.items.iter().map(|i| (s.session_id, i.sku_id)));
    let keys = ids.zip(keys.into_iter().map(Arc::new)).collect();
    Ok(Some(Snapshot {
        sessions,
        public: Bytes::from(body),
        keys,
    }))
}

/// The snapshot shared by the request handlers and the background tasks.
#[derive(Debug, Default, Clone)]
pub struct Catalog(Arc<RwLock<Arc<Snapshot>>>);

impl Catalog {
    /// The current snapshot.
    pub fn get(&self) -> Arc<Snapshot> {
        self.0.read().expect("not poisoned").clone()
    }

    /// Replaces the snapshot.
    pub fn set(&self, s: Snapshot) {
        *self.0.write().expect("not poisoned") = Arc::new(s);
    }
}

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

    #[test]
    fn the_breaker_opens_after_the_threshold_probes_once_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_millis(30));
        for _ in 0..2 {
            assert_eq!(b.permit(), Permit::Call);
            b.record(Permit::Call, false);
        }
        assert_eq!(b.permit(), Permit::Call);
        b.record(Permit::Call, false);
        assert_eq!(b.permit(), Permit::Open, "open after 3 failures");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.permit(), Permit::Probe);
        assert_eq!(b.permit(), Permit::Open, "one probe at a time");
        b.record(Permit::Probe, false);
        assert_eq!(b.permit(), Permit::Open, "a failed probe reopens");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.permit(), Permit::Probe);
        b.record(Permit::Probe, true);
        assert_eq!(b.permit(), Permit::Call, "a good probe closes");
    }

    #[test]
    fn an_expired_flag_is_rechecked_once_while_every_purchase_is_answered() {
        let s = SoldOut::new(Duration::from_millis(20));
        assert_eq!(s.check(1, 2), Check::Open);
        s.set(1, 2);
        assert_eq!(s.check(1, 2), Check::SoldOut);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(s.check(1, 2), Check::Recheck, "the flag ran out");
        assert_eq!(s.check(1, 2), Check::SoldOut, "one re-check at a time");
        s.learn(1, 2, 0);
        assert_eq!(s.check(1, 2), Check::SoldOut, "still none left: renewed");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(s.check(1, 2), Check::Recheck, "expired again");
        s.renew(1, 2);
        assert_eq!(
            s.check(1, 2),
            Check::SoldOut,
            "a re-check that read nothing keeps the last answer"
        );
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(s.check(1, 2), Check::Recheck, "and tries again after a ttl");
        s.learn(1, 2, 3);
        assert_eq!(s.check(1, 2), Check::Open, "units came back: dropped");
        s.renew(1, 2);
        assert_eq!(s.check(1, 2), Check::Open, "renewing no flag makes none");
    }

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

    #[test]
    fn a_zero_ttl_never_flags() {
        let s = SoldOut::new(Duration::ZERO);
        s.learn(1, 2, 0);
        assert!(matches!(s.check(1, 2), Check::Open));
    }

    #[test]
    fn sold_out_flags_expire() {
        let s = SoldOut::new(Duration::from_millis(20));
        s.set(1, 2);
        assert!(matches!(s.check(1, 2), Check::SoldOut));
        assert!(matches!(s.check(1, 3), Check::Open));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(s.check(1, 2), Check::Recheck);
        s.set(1, 2);
        s.clear(1, 2);
        assert!(matches!(s.check(1, 2), Check::Open));
    }
}
