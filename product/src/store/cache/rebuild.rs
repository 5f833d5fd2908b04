//! A miss or a stale value: one instance in the cluster reloads from Postgres under a lock, the
//! others serve the stale value or wait for the new one; without Redis, Postgres behind a
//! semaphore.

use std::sync::atomic::Ordering;
use std::time::Duration;

use mall_common::redis::lock;
use mall_common::telemetry::store_span;
use tracing::Instrument;

use super::{CacheKey, Cached, Catalog, ReadError, now_ms, to_json};
use crate::store::catalog;

impl Catalog {
    pub(super) async fn load(&self, key: &CacheKey) -> Result<Cached, ReadError> {
        let found = match self.l2_get(key).await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(error = %e, "L2 unavailable; reading the database");
                self.count("product_redis_fallbacks_total", None);
                return self.load_db_limited(key).await;
            }
        };
        let lock_name = format!("product:lock:{{{}}}", key.name());
        match found {
            Some((exp, value)) if exp > now_ms() => {
                self.count("product_cache_hits_total", Some(("layer", "l2")));
                Ok(value)
            }
            Some((_, stale)) => {
                // Expired: one instance rebuilds in the background; everyone serves the stale
                // value meanwhile, so an expiring hot key never stalls a request.
                self.count("product_stale_served_total", None);
                if let Ok(Some(guard)) =
                    lock::try_acquire(&self.inner.redis, &lock_name, self.inner.settings.lock_lease)
                        .instrument(store_span("redis", "SET NX"))
                        .await
                {
                    self.count("product_lock_acquired_total", None);
                    let this = self.clone();
                    let key = key.clone();
                    // The rebuild stays in the request's trace.
                    tokio::spawn(
                        async move {
                            if let Err(e) = this.rebuild(&key, guard).await {
                                tracing::warn!(error = %e, "background rebuild failed");
                            }
                        }
                        .in_current_span(),
                    );
                }
                Ok(stale)
            }
            None => {
                match lock::try_acquire(&self.inner.redis, &lock_name, self.inner.settings.lock_lease)
                    .instrument(store_span("redis", "SET NX"))
                    .await
                {
                    Ok(Some(guard)) => {
                        self.count("product_lock_acquired_total", None);
                        self.rebuild(key, guard).await
                    }
                    Ok(None) => self.wait_for_rebuild(key).await,
                    Err(_) => self.load_db_limited(key).await,
                }
            }
        }
    }

    /// Another instance holds the lock: poll L2 for its result rather than load ourselves.
    async fn wait_for_rebuild(&self, key: &CacheKey) -> Result<Cached, ReadError> {
        self.count("product_lock_waits_total", None);
        let deadline = tokio::time::Instant::now() + self.inner.settings.lock_wait;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(15)).await;
            if let Ok(Some((_, value))) = self.l2_get(key).await {
                return Ok(value);
            }
        }
        self.count("product_lock_wait_timeouts_total", None);
        self.load_db_limited(key).await
    }

    /// Loads from Postgres and writes L2, renewing the lock's lease while it works.
    async fn rebuild(&self, key: &CacheKey, guard: lock::LockGuard) -> Result<Cached, ReadError> {
        // Checked again under the lock: another instance may have rebuilt and released between
        // our miss and our acquisition, and the whole point is one database load per expiry.
        if let Ok(Some((exp, value))) = self.l2_get(key).await
            && exp > now_ms()
        {
            let _ = guard.release().await;
            return Ok(value);
        }
        let renew_every = guard.lease() / 3;
        let loaded = {
            let load = self.load_db(key);
            tokio::pin!(load);
            loop {
                tokio::select! {
                    r = &mut load => break r,
                    () = tokio::time::sleep(renew_every) => {
                        if !guard.renew().await.unwrap_or(false) {
                            tracing::warn!(key = %key.name(), "rebuild lock lost while loading");
                        }
                    }
                }
            }
        };
        let result = match loaded {
            Ok(value) => {
                if let Err(e) = self.l2_put(key, &value).await {
                    tracing::warn!(error = %e, "could not write L2");
                }
                Ok(value)
            }
            // Given up on error: the lock is released below so another instance can try.
            Err(e) => Err(e),
        };
        let _ = guard.release().await;
        result
    }

    async fn load_db_limited(&self, key: &CacheKey) -> Result<Cached, ReadError> {
        let permit = tokio::time::timeout(Duration::from_millis(250), self.inner.db_permits.acquire())
            .await
            .map_err(|_| ReadError::Saturated)?
            .map_err(|_| ReadError::Saturated)?;
        let result = self.load_db(key).await;
        drop(permit);
        result
    }

    async fn load_db(&self, key: &CacheKey) -> Result<Cached, ReadError> {
        let inflight = self.inner.db_inflight.fetch_add(1, Ordering::AcqRel) + 1;
        let peak = self
            .inner
            .db_inflight_peak
            .fetch_max(inflight, Ordering::AcqRel)
            .max(inflight);
        metrics::gauge!("product_db_inflight_peak", "scope" => self.inner.scope.clone()).set(peak as f64);
        self.count("product_db_loads_total", Some(("kind", key.kind())));
        let span = store_span("postgresql", "SELECT");
        let result = match key {
            CacheKey::Sku(id) => catalog::sku(&self.inner.db, *id)
                .instrument(span)
                .await
                .map(|v| v.map(|v| to_json(&v))),
            CacheKey::Spu(id) => catalog::spu(&self.inner.db, *id)
                .instrument(span)
                .await
                .map(|v| v.map(|v| to_json(&v))),
            CacheKey::Categories => catalog::categories(&self.inner.db)
                .instrument(span)
                .await
                .map(|v| Some(to_json(&v))),
        };
        self.inner.db_inflight.fetch_sub(1, Ordering::AcqRel);
        result.map_err(|e| {
            if mall_common::db::is_unavailable(&e) {
                ReadError::Unavailable(e.to_string())
            } else {
                ReadError::Db(e.to_string())
            }
        })
    }
}
