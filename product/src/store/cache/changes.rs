//! Writes through the cache: commit to Postgres, then invalidate everywhere.

use std::time::Duration;

use mall_common::redis::{RedisError, client};
use mall_common::telemetry::store_span;
use tracing::Instrument;

use super::{CacheKey, Catalog};
use crate::domain::{NewProduct, SkuPatch};
use crate::store::bloom::Bloom;
use crate::store::catalog::{self, WriteError};

impl Catalog {
    /// Creates a product and makes its ids known to every instance's filters.
    pub async fn create(&self, p: &NewProduct) -> Result<(i64, Vec<i64>), WriteError> {
        let (spu_id, sku_ids) = catalog::create(&self.inner.db, p)
            .instrument(store_span("postgresql", "INSERT"))
            .await?;
        let mut notes = vec![format!("bloom:spu:{spu_id}")];
        self.add_to_bloom(&self.inner.spus, spu_id).await;
        for id in &sku_ids {
            self.add_to_bloom(&self.inner.skus, *id).await;
            notes.push(format!("bloom:sku:{id}"));
        }
        // A negative entry may exist from before (someone asked for this id); drop it.
        let mut keys = vec![CacheKey::Spu(spu_id)];
        keys.extend(sku_ids.iter().map(|id| CacheKey::Sku(*id)));
        self.invalidate(keys, notes).await;
        Ok((spu_id, sku_ids))
    }

    async fn add_to_bloom(&self, bloom: &Bloom, id: i64) {
        if let Err(e) = bloom.add(&self.inner.redis, id).await {
            // The local bit is set; the next rebuild from the database restores Redis.
            tracing::warn!(error = %e, id, kind = bloom.kind().as_str(), "could not add to the Redis bloom filter");
        }
    }

    /// Patches a SKU, then invalidates it and its SPU everywhere.
    pub async fn patch(&self, sku_id: i64, p: &SkuPatch) -> Result<(), WriteError> {
        let spu_id = catalog::patch(&self.inner.db, sku_id, p)
            .instrument(store_span("postgresql", "UPDATE"))
            .await?;
        self.invalidate(vec![CacheKey::Sku(sku_id), CacheKey::Spu(spu_id)], Vec::new())
            .await;
        Ok(())
    }

    /// Deletes L2, drops L1 here, tells every other instance, and repeats the delete shortly
    /// after (a rebuild that read the old row before our commit may write it back meanwhile).
    async fn invalidate(&self, keys: Vec<CacheKey>, notes: Vec<String>) {
        for k in &keys {
            self.inner.l1.invalidate(k).await;
        }
        self.delete_l2(&keys).await;
        let mut messages: Vec<String> = keys.iter().map(CacheKey::name).collect();
        messages.extend(notes);
        self.broadcast(&messages).await;
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            this.delete_l2(&keys).await;
            for k in &keys {
                this.inner.l1.invalidate(k).await;
            }
            this.broadcast(&keys.iter().map(CacheKey::name).collect::<Vec<_>>())
                .await;
        });
    }

    async fn delete_l2(&self, keys: &[CacheKey]) {
        let names: Vec<String> = keys.iter().map(|k| self.l2_key(k)).collect();
        let deleted: Result<(), RedisError> = async {
            let mut conn = self.inner.redis.conn().await?;
            let _: i64 = client::cmd("DEL").arg(&names).query_async(&mut *conn).await?;
            Ok(())
        }
        .await;
        if let Err(e) = deleted {
            tracing::warn!(error = %e, "could not delete L2 entries; they expire on their own");
        }
    }

    pub(super) fn channel(&self) -> String {
        self.inner.redis.key("product:invalidate")
    }

    async fn broadcast(&self, messages: &[String]) {
        if let Err(e) = self
            .inner
            .redis
            .publish(&self.channel(), &messages.join(" "))
            .await
        {
            tracing::warn!(error = %e, "invalidation not broadcast; other instances catch up within the L1 TTL");
        }
    }

    pub(super) fn apply(&self, message: &str) -> Vec<CacheKey> {
        let mut invalidated = Vec::new();
        for item in message.split_whitespace() {
            if let Some(rest) = item.strip_prefix("bloom:") {
                match rest.split_once(':') {
                    Some(("sku", id)) => id
                        .parse()
                        .into_iter()
                        .for_each(|id| self.inner.skus.insert_local(id)),
                    Some(("spu", id)) => id
                        .parse()
                        .into_iter()
                        .for_each(|id| self.inner.spus.insert_local(id)),
                    _ => {}
                }
            } else if let Some(key) = CacheKey::parse(item) {
                invalidated.push(key);
            }
        }
        invalidated
    }
}
