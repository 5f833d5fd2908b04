//! The flash sale's background work.
//!
//! - [`refresh`] (every instance): reads the sessions on sale and the live counters from Redis
//!   into the in-memory snapshot the hot path answers from.
//! - [`leader`] (one instance at a time, under a Redis lock): loads the items of sessions
//!   starting soon into Redis from the book of admissions, and loads them again whenever Redis
//!   lost or rewound them; publishes the sessions on sale; gives unsold units back to inventory
//!   after a session ended and its admissions are all handed off; cleans up sessions whose
//!   creation died mid-way.
//!
//! The hand-off itself is the outbox relay (`mall_common::outbox::relay`): each booked
//! admission's `flashsale.admitted` event is an outbox row written with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use mall_common::outage::Outage;
use mall_common::redis::lock::{self, LockGuard};
use mall_common::redis::{Redis, client};
use tokio_util::sync::CancellationToken;

use crate::live::{self, on_sale_key};
use crate::state::AppState;
use crate::store::admission::{self, ItemKeys, Load};
use crate::store::book;
use crate::store::sessions::{self, Item, Session};

/// A `creating` session older than this lost its creator; the job releases what it reserved.
const STALE_CREATING_SECS: f64 = 600.0;

/// Sleeps `d` unless `cancel` fires first; `false` if it did.
async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}

/// Keeps one lock: takes it when free, renews it while held, forgets it when lost.
struct Leadership {
    redis: Redis,
    name: &'static str,
    lease: Duration,
    guard: Option<LockGuard>,
    renewed: Instant,
}

impl Leadership {
    fn new(redis: Redis, name: &'static str, lease: Duration) -> Self {
        Self {
            redis,
            name,
            lease,
            guard: None,
            renewed: Instant::now(),
        }
    }

    /// Whether this instance holds the lock now (renewing it when a third of the lease passed).
    async fn hold(&mut self) -> bool {
        match &self.guard {
            Some(_) if self.renewed.elapsed() < self.lease / 3 => return true,
            Some(g) => {
                if g.renew().await.unwrap_or(false) {
                    self.renewed = Instant::now();
                    return true;
                }
                tracing::warn!(lock = self.name, "lost the lock; another instance takes over");
                self.guard = None;
            }
            None => {}
        }
        if let Ok(Some(g)) = lock::try_acquire(&self.redis, self.name, self.lease).await {
            tracing::info!(lock = self.name, "took the lock");
            self.guard = Some(g);
            self.renewed = Instant::now();
        }
        self.guard.is_some()
    }

    async fn release(self) {
        if let Some(g) = self.guard {
            let _ = g.release().await;
        }
    }
}

/// Refreshes this instance's snapshot every `job_interval`.
pub async fn refresh(state: Arc<AppState>, cancel: CancellationToken) {
    loop {
        match live::load(&state.redis).await {
            Ok(Some(s)) => state.on_sale.set(s),
            Ok(None) => tracing::debug!("no sessions on sale in Redis; keeping the last ones"),
            Err(e) => {
                tracing::debug!(error = %e, "refresh of the sessions on sale failed; keeping the last ones")
            }
        }
        if !pause(&cancel, state.flash.job_interval).await {
            return;
        }
    }
}

/// The load / publish / settle job, on one instance at a time.
pub async fn leader(state: Arc<AppState>, cancel: CancellationToken) {
    let lease = (state.flash.job_interval * 6).max(Duration::from_secs(3));
    let mut leadership = Leadership::new(state.redis.clone(), "fs:lock:jobs", lease);
    let mut outage = Outage::new("flash-sale jobs");
    while pause(&cancel, state.flash.job_interval).await {
        if !leadership.hold().await {
            continue;
        }
        match run_jobs(&state).await {
            Ok(()) => outage.succeeded(),
            Err(e) => outage.failed(&e),
        }
    }
    leadership.release().await;
}

async fn run_jobs(state: &AppState) -> anyhow::Result<()> {
    let mut open = sessions::open(&state.db).await?;
    let now = Utc::now();
    let lead = chrono::Duration::from_std(state.flash.warm_lead)?;
    let tail = chrono::Duration::from_std(state.flash.key_tail)?;
    let settle_after = chrono::Duration::from_std(state.flash.settle_after)?;

    for s in open.iter().filter(|s| s.status == "creating") {
        if sessions::creating_for_longer_than(&state.db, s.session_id, STALE_CREATING_SECS).await? {
            for item in &s.items {
                crate::peers::release(&state.inventory, item.reservation_id).await?;
            }
            sessions::finish_creating(&state.db, s.session_id, "failed").await?;
            tracing::warn!(
                session_id = s.session_id,
                "a session stuck in creation was failed and its stock released"
            );
        }
    }
    open.retain(|s| s.status == "active");

    let selling: Vec<i64> = open
        .iter()
        .filter(|s| s.starts_at - lead <= now && now < s.ends_at)
        .map(|s| s.session_id)
        .collect();
    if !selling.is_empty() {
        let epochs = book::epochs(&state.db, &selling).await?;
        for s in open.iter_mut().filter(|s| selling.contains(&s.session_id)) {
            let keys: Vec<ItemKeys> = s
                .items
                .iter()
                .map(|i| ItemKeys::new(&state.redis, s.session_id, i.sku_id))
                .collect();
            let loaded = admission::loaded(&state.redis, &keys).await?;
            let run_ids = admission::run_ids(&state.redis, &keys).await?;
            for (((item, keys), seen), run_id) in s.items.iter().zip(&keys).zip(loaded).zip(run_ids) {
                let epoch = epochs.get(&(s.session_id, item.sku_id)).copied().unwrap_or(0);
                let current = seen
                    .as_ref()
                    .is_some_and(|(e, r)| *e == epoch && epoch > 0 && *r == run_id);
                if !current {
                    load(state, s, item, keys, seen, &run_id, tail).await?;
                }
            }
            if !s.warmed {
                sessions::mark_warmed(&state.db, s.session_id).await?;
                s.warmed = true;
                tracing::info!(session_id = s.session_id, "session loaded into Redis");
            }
        }
    }
    let (backlog, oldest) = book::backlog(&state.db).await?;
    metrics::gauge!("flashsale_handoff_backlog").set(backlog as f64);
    metrics::gauge!("flashsale_handoff_oldest_age_seconds").set(oldest);

    let on_sale = serde_json::to_string(&open)?;
    {
        let mut conn = state.redis.conn().await?;
        let () = client::cmd("SET")
            .arg(on_sale_key(&state.redis))
            .arg(on_sale)
            .query_async(&mut *conn)
            .await?;
    }

    for s in open.iter().filter(|s| s.ends_at + settle_after <= now) {
        settle(state, s).await?;
    }
    Ok(())
}

/// Gives an ended session's unsold units back to inventory, item by item, once every admission
/// of the item has become an order: the order carves its units out of the session's
/// reservation, which refuses the carve once released (the order would be lost).
async fn settle(state: &AppState, s: &Session) -> anyhow::Result<()> {
    for item in s.items.iter().filter(|i| !i.released) {
        // The book, not Redis, says what is still to be handed off: a Redis that lost its
        // state would say nothing is.
        let counts = book::counts(&state.db, s.session_id, item.sku_id).await?;
        if counts.booked > counts.handed {
            deferred(s, item.sku_id, "handoff", counts.booked - counts.handed);
            continue;
        }
        // Handed to the broker is not yet an order: the order service may be down or behind.
        if let Some(carved) = crate::peers::carved(&state.inventory, item.reservation_id).await?
            && carved < counts.units
        {
            deferred(s, item.sku_id, "orders", counts.units - carved);
            continue;
        }
        crate::peers::release(&state.inventory, item.reservation_id).await?;
        sessions::mark_released(&state.db, s.session_id, item.sku_id).await?;
    }
    if sessions::settle_if_released(&state.db, s.session_id).await? {
        tracing::info!(
            session_id = s.session_id,
            "session settled; unsold units are back in inventory"
        );
    }
    Ok(())
}

/// Counts and logs a settlement put off: `missing` admissions not yet handed off, or units
/// not yet carved by their orders.
fn deferred(s: &Session, sku_id: i64, waiting_for: &'static str, missing: i64) {
    metrics::counter!("flashsale_settlements_deferred_total", "waiting_for" => waiting_for).increment(1);
    tracing::info!(
        session_id = s.session_id,
        sku_id,
        waiting_for,
        missing,
        "settlement waits"
    );
}

/// Loads an item into Redis from the book: the first time, or again because Redis lost it
/// (`seen` is `None`), holds an older load, or restarted since (another `run_id`).
async fn load(
    state: &AppState,
    s: &Session,
    item: &Item,
    keys: &ItemKeys,
    seen: Option<(i64, String)>,
    run_id: &str,
    tail: chrono::Duration,
) -> anyhow::Result<()> {
    let books = book::begin_load(
        &state.db,
        s.session_id,
        item.sku_id,
        seen.as_ref().map(|(e, _)| *e),
    )
    .await?;
    let l = Load {
        start_ms: s.starts_ms(),
        end_ms: s.ends_ms(),
        limit: item.per_user_limit,
        quantity: item.quantity,
        expire_at_ms: (s.ends_at + tail).timestamp_millis(),
        epoch: books.epoch,
        run_id,
        booked: &books.booked,
    };
    admission::load_item(&state.redis, keys, &l).await?;
    if books.epoch > 1 {
        let why = match &seen {
            None => "Redis lost the item",
            Some((_, r)) if r != run_id => "Redis restarted or failed over",
            Some(_) => "Redis holds an older load",
        };
        metrics::counter!("flashsale_reloads_total").increment(1);
        tracing::warn!(
            session_id = s.session_id,
            sku_id = item.sku_id,
            why,
            booked = books.booked.len(),
            remaining = item.quantity - books.held(),
            "item reloaded into Redis from the book of admissions"
        );
    }
    state.sold_out.clear(s.session_id, item.sku_id);
    Ok(())
}
