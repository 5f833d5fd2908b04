//! What every instance keeps in memory for the hot path: the sessions on sale (read from
//! Redis, never from Postgres, refreshed in the background), sold-out flags, uncertain
//! purchases and the Redis breaker.

mod breaker;
mod sold_out;
mod uncertain;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub use breaker::{Breaker, Permit};
pub use sold_out::{Check, SoldOut};
pub use uncertain::Uncertain;

use bytes::Bytes;
use chrono::Utc;
use mall_common::redis::{Redis, RedisError, client};
use serde_json::json;

use crate::store::admission::{self, ItemKeys};
use crate::store::sessions::Session;

/// The Redis key of the sessions the job publishes (every session not yet settled).
pub fn on_sale_key(redis: &Redis) -> String {
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

/// Reads the sessions on sale and the live stock counters from Redis into a new snapshot; `None`
/// when Redis holds no such list (not published yet, or lost with Redis's data until the job
/// publishes it again: the last snapshot is better than none).
pub async fn load(redis: &Redis) -> Result<Option<Snapshot>, RedisError> {
    let key = &on_sale_key(redis);
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
pub struct OnSale(Arc<RwLock<Arc<Snapshot>>>);

impl OnSale {
    /// The current snapshot.
    pub fn get(&self) -> Arc<Snapshot> {
        self.0.read().expect("not poisoned").clone()
    }

    /// Replaces the snapshot.
    pub fn set(&self, s: Snapshot) {
        *self.0.write().expect("not poisoned") = Arc::new(s);
    }
}
