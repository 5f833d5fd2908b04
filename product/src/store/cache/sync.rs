//! Keeping an instance in step: its bloom filters, and other instances' invalidations (the
//! loops that call these are in `crate::jobs`).

use std::time::Duration;

use futures_util::StreamExt;
use mall_common::redis::{RedisError, lock};

use super::Catalog;
use crate::store::bloom::{Bloom, BloomKind};
use crate::store::catalog;

impl Catalog {
    /// Loads both bloom filters from Redis, or builds a missing one from the database (one
    /// instance at a time); a failure is logged and left to the next pass.
    pub(crate) async fn sync_blooms(&self) {
        for bloom in [&self.inner.skus, &self.inner.spus] {
            if let Err(e) = self.sync_bloom(bloom).await {
                tracing::debug!(error = %e, kind = bloom.kind().as_str(), "bloom filter sync failed; retrying");
            }
        }
    }

    async fn sync_bloom(&self, bloom: &Bloom) -> Result<(), String> {
        if bloom.load(&self.inner.redis).await.map_err(|e| e.to_string())? {
            return Ok(());
        }
        // Nothing in Redis: one instance builds it from the database.
        let name = format!("product:lock:bloom:{}", bloom.kind().as_str());
        let Some(guard) = lock::try_acquire(&self.inner.redis, &name, Duration::from_secs(60))
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let table = match bloom.kind() {
            BloomKind::Sku => "skus",
            BloomKind::Spu => "spus",
        };
        let built = async {
            let ids = catalog::all_ids(&self.inner.db, table)
                .await
                .map_err(|e| e.to_string())?;
            for id in &ids {
                bloom.insert_local(*id);
            }
            bloom
                .publish_built(&self.inner.redis)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(
                kind = bloom.kind().as_str(),
                ids = ids.len(),
                "bloom filter built from the database"
            );
            Ok::<(), String>(())
        }
        .await;
        let _ = guard.release().await;
        built
    }

    /// Applies other instances' invalidations to L1 until the subscription ends.
    pub(crate) async fn follow_invalidations(&self) -> Result<(), RedisError> {
        let mut messages = self.inner.redis.subscribe(&self.channel()).await?;
        while let Some(text) = messages.next().await {
            for key in self.apply(&text) {
                self.inner.l1.invalidate(&key).await;
                self.count("product_invalidations_received_total", None);
            }
        }
        Ok(())
    }
}
