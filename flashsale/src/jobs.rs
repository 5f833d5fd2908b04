//! The flash sale's background work.
//!
//! - [`refresh`] (every instance): reads the catalog and the live counters from Redis into the
//!   in-memory snapshot the hot path answers from.
//! - [`leader`] (one instance at a time, under a Redis lock): loads sessions starting soon into
//!   Redis (warm-up), publishes the catalog, gives unsold units back to inventory after a
//!   session ended and its admissions are all handed off, and cleans up sessions whose
//!   creation died mid-way.
//! - [`handoff`] (one instance at a time, under its own lock): publishes recorded admissions
//!   to RabbitMQ with publisher confirms, in stream order, and only then moves the item's
//!   cursor; a crash between the two publishes again, and the order service's idempotency by
//!   order id absorbs the repeat.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::types::FieldTable;
use mall_common::events::{FLASHSALE_ADMITTED, FLASHSALE_EVENTS, FlashAdmitted};
use mall_common::outage::Outage;
use mall_common::redis::lock::{self, LockGuard};
use mall_common::redis::{Redis, client};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::http::Shared;
use crate::live::{self, catalog_key};
use crate::store::admission::{self, ItemKeys, Recorded, Warm};
use crate::store::sessions::{self, Item, Session};

/// A `creating` session older than this lost its creator; the job releases what it reserved.
const STALE_CREATING_SECS: f64 = 600.0;
/// Admissions published per item per round.
const HANDOFF_BATCH: usize = 256;

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
pub async fn refresh(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        match live::load(&shared.redis).await {
            Ok(s) => shared.catalog.set(s),
            Err(e) => tracing::debug!(error = %e, "catalog refresh failed; keeping the last one"),
        }
        if !pause(&cancel, shared.flash.job_interval).await {
            return;
        }
    }
}

/// The warm-up / catalog / settle job, on one instance at a time.
pub async fn leader(shared: Arc<Shared>, cancel: CancellationToken) {
    let lease = (shared.flash.job_interval * 6).max(Duration::from_secs(3));
    let mut leadership = Leadership::new(shared.redis.clone(), "fs:lock:jobs", lease);
    let mut outage = Outage::new("flash-sale jobs");
    while pause(&cancel, shared.flash.job_interval).await {
        if !leadership.hold().await {
            continue;
        }
        match run_jobs(&shared).await {
            Ok(()) => outage.succeeded(),
            Err(e) => outage.failed(&e),
        }
    }
    leadership.release().await;
}

async fn run_jobs(shared: &Shared) -> anyhow::Result<()> {
    let mut open = sessions::open(&shared.db).await?;
    let now = Utc::now();
    let lead = chrono::Duration::from_std(shared.flash.warm_lead)?;
    let tail = chrono::Duration::from_std(shared.flash.key_tail)?;
    let settle_after = chrono::Duration::from_std(shared.flash.settle_after)?;

    for s in open.iter().filter(|s| s.status == "creating") {
        if sessions::creating_for_longer_than(&shared.db, s.session_id, STALE_CREATING_SECS).await? {
            for item in &s.items {
                crate::inventory::release(&shared.inventory, item.reservation_id).await?;
            }
            sessions::finish_creating(&shared.db, s.session_id, "failed").await?;
            tracing::warn!(
                session_id = s.session_id,
                "a session stuck in creation was failed and its stock released"
            );
        }
    }
    open.retain(|s| s.status == "active");

    for s in open.iter_mut() {
        if s.warmed || s.starts_at - lead > now || s.ends_at <= now {
            continue;
        }
        for item in &s.items {
            let keys = ItemKeys::new(&shared.redis, s.session_id, item.sku_id);
            let warm = Warm {
                start_ms: s.starts_ms(),
                end_ms: s.ends_ms(),
                limit: item.per_user_limit,
                quantity: item.quantity,
                expire_at_ms: (s.ends_at + tail).timestamp_millis(),
            };
            admission::warm_item(&shared.redis, &keys, warm).await?;
        }
        sessions::mark_warmed(&shared.db, s.session_id).await?;
        s.warmed = true;
        tracing::info!(session_id = s.session_id, "session loaded into Redis");
    }

    let catalog = serde_json::to_string(&open)?;
    {
        let mut conn = shared.redis.conn().await?;
        let () = client::cmd("SET")
            .arg(catalog_key(&shared.redis))
            .arg(catalog)
            .query_async(&mut *conn)
            .await?;
    }

    for s in open.iter().filter(|s| s.ends_at + settle_after <= now) {
        settle(shared, s).await?;
    }
    Ok(())
}

/// Gives an ended session's unsold units back to inventory, item by item, once every admission
/// of the item was handed off (an order still to be created needs the session's reservation).
async fn settle(shared: &Shared, s: &Session) -> anyhow::Result<()> {
    for item in s.items.iter().filter(|i| !i.released) {
        if s.warmed {
            let keys = ItemKeys::new(&shared.redis, s.session_id, item.sku_id);
            let progress = admission::progress(&shared.redis, &keys).await?;
            if progress.backlog() > 0 {
                tracing::info!(
                    session_id = s.session_id,
                    sku_id = item.sku_id,
                    backlog = progress.backlog(),
                    "settle waits for the hand-off"
                );
                continue;
            }
        }
        crate::inventory::release(&shared.inventory, item.reservation_id).await?;
        sessions::mark_released(&shared.db, s.session_id, item.sku_id).await?;
    }
    if sessions::settle_if_released(&shared.db, s.session_id).await? {
        tracing::info!(
            session_id = s.session_id,
            "session settled; unsold units are back in inventory"
        );
    }
    Ok(())
}

/// The hand-off loop, on one instance at a time.
pub async fn handoff(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut leadership = Leadership::new(shared.redis.clone(), "fs:lock:handoff", Duration::from_secs(10));
    // Admissions wait in Redis while it fails.
    let mut outage = Outage::new("hand-off");
    loop {
        let mut idle = true;
        if leadership.hold().await {
            match handoff_round(&shared).await {
                Ok(published) => {
                    outage.succeeded();
                    idle = published == 0;
                }
                Err(e) => outage.failed(&e),
            }
        } else {
            metrics::gauge!("flashsale_handoff_backlog").set(0.0);
            metrics::gauge!("flashsale_handoff_oldest_age_seconds").set(0.0);
        }
        let wait = if idle {
            shared.flash.handoff_interval
        } else {
            Duration::ZERO
        };
        if !pause(&cancel, wait).await {
            break;
        }
    }
    leadership.release().await;
}

/// One pass over every loaded item; returns how many admissions were published.
async fn handoff_round(shared: &Shared) -> anyhow::Result<u64> {
    let snapshot = shared.catalog.get();
    // First the backlog of every item (so the gauges tell the truth even while publishing
    // hangs on a broken broker), then the publishing.
    let mut work = Vec::new();
    let (mut backlog, mut oldest_ms) = (0i64, None::<i64>);
    for s in snapshot.sessions.iter().filter(|s| s.warmed) {
        for item in &s.items {
            let keys = ItemKeys::new(&shared.redis, s.session_id, item.sku_id);
            let progress = admission::progress(&shared.redis, &keys).await?;
            if progress.backlog() == 0 {
                continue;
            }
            let batch =
                admission::recorded_after(&shared.redis, &keys, &progress.last_id, HANDOFF_BATCH).await?;
            let Some(first) = batch.first() else { continue };
            oldest_ms = Some(oldest_ms.map_or(first.admitted_ms, |o| o.min(first.admitted_ms)));
            backlog += progress.backlog();
            work.push((s.session_id, item, keys, batch));
        }
    }
    let gauges = |backlog: i64, oldest_ms: Option<i64>| {
        metrics::gauge!("flashsale_handoff_backlog").set(backlog.max(0) as f64);
        let age = oldest_ms.filter(|_| backlog > 0).map_or(0.0, |ms| {
            ((Utc::now().timestamp_millis() - ms).max(0) as f64) / 1000.0
        });
        metrics::gauge!("flashsale_handoff_oldest_age_seconds").set(age);
    };
    gauges(backlog, oldest_ms);

    let (mut published, mut failure) = (0u64, None);
    for (session_id, item, keys, batch) in work {
        let results =
            futures_util::future::join_all(batch.iter().map(|r| publish(shared, session_id, item, r))).await;
        // Only a fully confirmed prefix moves the cursor; the rest is published again.
        let confirmed = results.iter().take_while(|r| r.is_ok()).count();
        if let Some(err) = results.into_iter().find_map(Result::err) {
            failure = Some(err);
        }
        if confirmed > 0 {
            let last = &batch[confirmed - 1].entry_id;
            admission::mark_handed(&shared.redis, &keys, last, confirmed as i64).await?;
            published += confirmed as u64;
            backlog -= confirmed as i64;
            metrics::counter!("flashsale_handoffs_total").increment(confirmed as u64);
        }
    }
    if published > 0 {
        gauges(backlog, if backlog > 0 { oldest_ms } else { None });
    }
    match failure {
        Some(e) if published == 0 => Err(e),
        Some(e) => {
            tracing::warn!(error = %e, "part of the hand-off failed; the rest is retried");
            Ok(published)
        }
        None => Ok(published),
    }
}

/// Publishes one admission, with confirms, in a producer span continuing the buyer's trace.
async fn publish(shared: &Shared, session_id: i64, item: &Item, r: &Recorded) -> anyhow::Result<()> {
    let span = tracing::info_span!(
        "flashsale.handoff",
        otel.name = "mall.flashsale.events publish",
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.destination.name = FLASHSALE_EVENTS,
        order_id = %r.order_id,
    );
    if !r.trace.is_empty() {
        let _ = span.set_parent(mall_common::telemetry::propagation::extract_traceparent(&r.trace));
    }
    async {
        let order_id = match Uuid::parse_str(&r.order_id) {
            Ok(id) => id,
            Err(_) => {
                // Only this service writes the stream; a malformed entry is a bug, and holding
                // the whole item's hand-off behind it would lose the others.
                tracing::error!(entry = %r.entry_id, "admission with a malformed order id skipped");
                return Ok(());
            }
        };
        let event = FlashAdmitted {
            event_id: order_id,
            order_id,
            session_id,
            sku_id: item.sku_id,
            user_id: r.user_id.clone(),
            quantity: r.quantity,
            price_cents: item.price_cents,
            reservation_id: item.reservation_id,
            admitted_ms: r.admitted_ms,
        };
        let mut headers = FieldTable::default();
        mall_common::telemetry::propagation::inject_amqp(&mut headers);
        shared
            .amqp
            .publish(
                FLASHSALE_EVENTS,
                FLASHSALE_ADMITTED,
                &r.order_id,
                &serde_json::to_vec(&event)?,
                headers,
            )
            .await?;
        Ok(())
    }
    .instrument(span)
    .await
}
