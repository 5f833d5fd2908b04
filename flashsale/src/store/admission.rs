//! Admission: the one Lua script that decides a flash-sale purchase, and the load that puts an
//! item into Redis (from the book of admissions, [`crate::store::book`]). Nothing else touches
//! these keys' counters.
//!
//! Every key of an item shares the hash tag `{fs:<session>:<sku>}`, so both scripts run
//! unchanged on Redis Cluster (all their keys live in one slot).

use std::sync::LazyLock;

use mall_common::redis::{LuaScript, Redis, RedisError, client};

use crate::store::replica::{ReplicaAcks, Replication, wait_for_replicas};

/// `lua/flashsale/admit.lua`.
pub static ADMIT: LazyLock<LuaScript> = LazyLock::new(|| mall_common::lua_script!("flashsale/admit"));
/// `lua/flashsale/load_item.lua`.
pub static LOAD_ITEM: LazyLock<LuaScript> = LazyLock::new(|| mall_common::lua_script!("flashsale/load_item"));
/// `lua/flashsale/mark_booked.lua`.
pub static MARK_BOOKED: LazyLock<LuaScript> =
    LazyLock::new(|| mall_common::lua_script!("flashsale/mark_booked"));
/// `lua/flashsale/restock.lua`.
pub static RESTOCK: LazyLock<LuaScript> = LazyLock::new(|| mall_common::lua_script!("flashsale/restock"));

/// The scripts this module needs loaded at start-up.
pub fn scripts() -> Vec<&'static LuaScript> {
    vec![&ADMIT, &LOAD_ITEM, &MARK_BOOKED, &RESTOCK]
}

/// The Redis keys of one session item.
#[derive(Debug, Clone)]
pub struct ItemKeys {
    /// `{start_ms, end_ms, limit, epoch, run_id}`.
    pub meta: String,
    /// Units left.
    pub stock: String,
    /// Units admitted per user.
    pub users: String,
    /// First answer per request id.
    pub requests: String,
    /// Order ids whose units were given back (cancelled orders).
    pub returned: String,
}

impl ItemKeys {
    /// The keys of `sku` in `session`.
    pub fn new(redis: &Redis, session: i64, sku: i64) -> Self {
        let k = |what: &str| redis.key(&format!("fs:{{fs:{session}:{sku}}}:{what}"));
        Self {
            meta: k("meta"),
            stock: k("stock"),
            users: k("users"),
            requests: k("requests"),
            returned: k("returned"),
        }
    }

    /// Every key, in the order `load_item.lua` takes them.
    pub fn all(&self) -> [&str; 5] {
        [
            &self.meta,
            &self.stock,
            &self.users,
            &self.requests,
            &self.returned,
        ]
    }
}

/// The script's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Admitted now; the order will be created under this id once the book has it.
    Admitted(Admitted),
    /// A repeat of an admitted request id: the same order (booked again if the first attempt
    /// never reached the book).
    Repeat(Admitted),
    /// The item is not loaded (not yet, or Redis lost it and the job is reloading it).
    NotWarmed,
    /// Before the session's start.
    NotStarted,
    /// After the session's end.
    Ended,
    /// No units (or fewer than asked) left.
    SoldOut {
        /// Units left.
        left: i64,
    },
    /// The user would exceed the per-user limit.
    LimitExceeded,
    /// The quantity is not a positive whole number.
    BadQuantity,
}

impl Admission {
    /// The verdict's name, as the admission span records it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Admitted(_) => "admitted",
            Self::Repeat(_) => "repeat",
            Self::NotWarmed => "not_warmed",
            Self::NotStarted => "not_started",
            Self::Ended => "ended",
            Self::SoldOut { .. } => "sold_out",
            Self::LimitExceeded => "limit_exceeded",
            Self::BadQuantity => "bad_quantity",
        }
    }
}

/// What the script admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The order's id.
    pub order_id: String,
    /// Units admitted (those of the first answer, for a repeat).
    pub quantity: i64,
    /// Units left.
    pub left: i64,
    /// The item's load the script ran against.
    pub epoch: i64,
    /// A repeat of an admission already marked as booked ([`mark_booked`]).
    pub booked: bool,
    /// Whether a replica holds it (see [`admit_with`]).
    pub replication: Replication,
}

/// One purchase attempt.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The buyer.
    pub user_id: &'a str,
    /// The client's request id.
    pub request_id: &'a str,
    /// Units.
    pub quantity: i64,
    /// Now, unix milliseconds.
    pub now_ms: i64,
    /// The order id to use if admitted.
    pub order_id: &'a str,
}

/// Runs the admission script, waiting for no replica.
pub async fn admit(redis: &Redis, keys: &ItemKeys, a: Attempt<'_>) -> Result<Admission, RedisError> {
    admit_with(redis, keys, a, ReplicaAcks::NONE).await
}

/// Runs the admission script and, for an admission not yet booked, waits until `acks` replicas
/// hold it (see [`crate::store::replica`]).
pub async fn admit_with(
    redis: &Redis,
    keys: &ItemKeys,
    a: Attempt<'_>,
    acks: ReplicaAcks,
) -> Result<Admission, RedisError> {
    // The replica wait holds its connection: it gets one of the thread's lanes, not the one
    // every other command of the thread shares.
    let mut conn = if acks.replicas > 0 {
        redis.blocking_conn().await?
    } else {
        redis.conn().await?
    };
    // Safe to send twice: a repeat of the request id gets the first answer.
    let (code, order_id, left, epoch, quantity, booked): (i64, String, i64, i64, i64, i64) =
        Redis::retrying_on(conn.clone(), |mut conn| async move {
            let mut inv = ADMIT.prepare();
            inv.key(&keys.meta)
                .key(&keys.stock)
                .key(&keys.users)
                .key(&keys.requests);
            inv.arg(a.user_id)
                .arg(a.request_id)
                .arg(a.quantity)
                .arg(a.now_ms)
                .arg(a.order_id);
            Ok(inv.invoke_async(&mut *conn).await?)
        })
        .await?;
    let replication = if code == 1 || (code == 2 && booked == 0) {
        wait_for_replicas(&mut conn, &keys.meta, acks).await?
    } else {
        Replication::NotAsked
    };
    let admitted = || Admitted {
        order_id: order_id.clone(),
        quantity,
        left,
        epoch,
        booked: booked == 1,
        replication,
    };
    Ok(match code {
        1 => Admission::Admitted(admitted()),
        2 => Admission::Repeat(admitted()),
        -1 => Admission::NotWarmed,
        -2 => Admission::NotStarted,
        -3 => Admission::Ended,
        -4 => Admission::SoldOut { left },
        -5 => Admission::LimitExceeded,
        -6 => Admission::BadQuantity,
        other => {
            return Err(RedisError::Reply(format!(
                "admit.lua returned an unknown code {other}"
            )));
        }
    })
}

/// Marks an admission as booked in Postgres, so its repeats are answered without writing there
/// again; `false` if the answer is no longer there.
pub async fn mark_booked(
    redis: &Redis,
    keys: &ItemKeys,
    user_id: &str,
    request_id: &str,
    a: &Admitted,
) -> Result<bool, RedisError> {
    let mut conn = redis.conn().await?;
    let mut inv = MARK_BOOKED.prepare();
    inv.key(&keys.requests)
        .arg(user_id)
        .arg(request_id)
        .arg(a.quantity)
        .arg(&a.order_id);
    let marked: i64 = inv.invoke_async(&mut *conn).await?;
    Ok(marked == 1)
}

/// One item as [`load_item`] puts it into Redis.
#[derive(Debug, Clone)]
pub struct Load<'a> {
    /// Session start, unix milliseconds.
    pub start_ms: i64,
    /// Session end, unix milliseconds.
    pub end_ms: i64,
    /// Units per user.
    pub limit: i64,
    /// Units put on sale.
    pub quantity: i64,
    /// When the keys expire (past the end).
    pub expire_at_ms: i64,
    /// This load's epoch (from [`crate::store::book::begin_load`]).
    pub epoch: i64,
    /// The `run_id` of the Redis being loaded.
    pub run_id: &'a str,
    /// The booked admissions.
    pub booked: &'a [crate::store::book::Booked],
}

/// Loads an item, replacing whatever an older load left; `false` if a load of the same or a
/// newer epoch is already there.
pub async fn load_item(redis: &Redis, keys: &ItemKeys, l: &Load<'_>) -> Result<bool, RedisError> {
    let mut conn = redis.conn().await?;
    let mut inv = LOAD_ITEM.prepare();
    for k in keys.all() {
        inv.key(k);
    }
    inv.arg(l.start_ms)
        .arg(l.end_ms)
        .arg(l.limit)
        .arg(l.quantity)
        .arg(l.expire_at_ms)
        .arg(l.epoch)
        .arg(l.run_id);
    for b in l.booked {
        inv.arg(&b.order_id)
            .arg(&b.user_id)
            .arg(&b.request_id)
            .arg(b.quantity)
            .arg(i64::from(b.returned));
    }
    let loaded: i64 = inv.invoke_async(&mut *conn).await?;
    Ok(loaded == 1)
}

/// What Redis holds of an item's load: `(epoch, run_id)`, `None` where nothing is loaded.
pub async fn loaded(redis: &Redis, keys: &[ItemKeys]) -> Result<Vec<Option<(i64, String)>>, RedisError> {
    let conn = redis.conn().await?;
    // One command per item, sent together: the items live in different cluster slots, which
    // one pipeline may not span.
    let rows = futures_util::future::try_join_all(keys.iter().map(|k| {
        let mut conn = conn.clone();
        async move {
            let row: (Option<i64>, Option<String>) = client::cmd("HMGET")
                .arg(&k.meta)
                .arg("epoch")
                .arg("run_id")
                .query_async(&mut *conn)
                .await?;
            Ok::<_, RedisError>(row)
        }
    }))
    .await?;
    Ok(rows
        .into_iter()
        .map(|(epoch, run_id)| epoch.zip(run_id))
        .collect())
}

/// The `run_id` of the Redis server holding each item (another one after every restart or
/// failover), in the order given.
pub async fn run_ids(redis: &Redis, keys: &[ItemKeys]) -> Result<Vec<String>, RedisError> {
    let conn = redis.conn().await?;
    let info = client::cmd("INFO").arg("server").clone();
    let ask = |key: &str| {
        let (mut conn, info) = (conn.clone(), &info);
        let key = key.to_owned();
        async move {
            let text: String = conn.query_owner(info, &key).await?;
            text.lines()
                .find_map(|l| l.strip_prefix("run_id:"))
                .map(|id| id.trim().to_owned())
                .ok_or_else(|| RedisError::Reply("INFO server has no run_id".to_owned()))
        }
    };
    if !redis.is_cluster() {
        let Some(first) = keys.first() else {
            return Ok(Vec::new());
        };
        let id = ask(&first.meta).await?;
        return Ok(vec![id; keys.len()]);
    }
    futures_util::future::try_join_all(keys.iter().map(|k| ask(&k.meta))).await
}

/// What [`restock`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restock {
    /// The units are for sale again, and the buyer's count went down.
    Returned,
    /// This order's units were given back before.
    AlreadyReturned,
    /// The session's keys are gone (long ended): nothing to give back to.
    Gone,
}

/// Gives a cancelled flash order's units back to its session, once per order id.
pub async fn restock(
    redis: &Redis,
    keys: &ItemKeys,
    order_id: &str,
    user_id: &str,
    quantity: i64,
) -> Result<Restock, RedisError> {
    let mut conn = redis.conn().await?;
    let mut inv = RESTOCK.prepare();
    inv.key(&keys.meta)
        .key(&keys.stock)
        .key(&keys.users)
        .key(&keys.returned);
    inv.arg(order_id).arg(user_id).arg(quantity);
    let code: i64 = inv.invoke_async(&mut *conn).await?;
    Ok(match code {
        1 => Restock::Returned,
        0 => Restock::AlreadyReturned,
        _ => Restock::Gone,
    })
}

/// Units left of each item (`None` where the item is not loaded), in the order given.
pub async fn stock_left(redis: &Redis, keys: &[ItemKeys]) -> Result<Vec<Option<i64>>, RedisError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    // One GET per key rather than MGET or a pipeline: the keys live in different cluster slots.
    redis
        .retrying(|conn| async move {
            futures_util::future::try_join_all(
                keys.iter().map(|k| {
                    let mut conn = conn.clone();
                    async move {
                        Ok::<_, RedisError>(client::cmd("GET").arg(&k.stock).query_async(&mut *conn).await?)
                    }
                }),
            )
            .await
        })
        .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mall_common::redis::RedisSettings;
    use mall_common::redis::client::cluster_routing::Slot;

    use super::*;

    // A runtime only because connections are made (never used) with the handle.
    #[tokio::test]
    async fn every_script_call_keeps_its_keys_in_one_cluster_slot() {
        let redis = Redis::connect_lazy(&RedisSettings {
            url: "redis://127.0.0.1:6379".parse().unwrap(),
            cluster_nodes: Vec::new(),
            key_prefix: "mall:".into(),
            connections: 1,
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        for (session, sku) in [(1, 2), (12, 34), (987_654, 1)] {
            let k = ItemKeys::new(&redis, session, sku);
            // The key sets each script is called with (admit, load_item, restock, mark_booked).
            let calls: [&[&str]; 4] = [
                &[&k.meta, &k.stock, &k.users, &k.requests],
                &k.all(),
                &[&k.meta, &k.stock, &k.users, &k.returned],
                &[&k.requests],
            ];
            for keys in calls {
                let slots: std::collections::HashSet<Slot> = keys.iter().map(Slot::for_key).collect();
                assert_eq!(slots.len(), 1, "{keys:?}");
            }
        }
        // Two items do not share a slot by construction (they spread over the cluster).
        let (a, b) = (ItemKeys::new(&redis, 1, 2), ItemKeys::new(&redis, 1, 3));
        assert_ne!(Slot::for_key(&a.meta), Slot::for_key(&b.meta));
    }
}
