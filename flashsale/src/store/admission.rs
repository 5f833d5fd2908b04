//! Admission: the one Lua script that decides a flash-sale purchase, and the warm-up that
//! loads an item for it. Nothing else touches these keys' counters.
//!
//! Every key of an item shares the hash tag `{fs:<session>:<sku>}`, so both scripts run
//! unchanged on Redis Cluster (all their keys live in one slot).

use std::sync::LazyLock;

use mall_common::redis::{LuaScript, Redis, RedisError, client};

/// `lua/flashsale/admit.lua`.
pub static ADMIT: LazyLock<LuaScript> = LazyLock::new(|| mall_common::lua_script!("flashsale/admit"));
/// `lua/flashsale/warm_item.lua`.
pub static WARM_ITEM: LazyLock<LuaScript> = LazyLock::new(|| mall_common::lua_script!("flashsale/warm_item"));
/// `lua/flashsale/restock.lua`.
pub static RESTOCK: LazyLock<LuaScript> = LazyLock::new(|| mall_common::lua_script!("flashsale/restock"));

/// The scripts this module needs loaded at start-up.
pub fn scripts() -> Vec<&'static LuaScript> {
    vec![&ADMIT, &WARM_ITEM, &RESTOCK]
}

/// The Redis keys of one session item.
#[derive(Debug, Clone)]
pub struct ItemKeys {
    /// `{start_ms, end_ms, limit}`.
    pub meta: String,
    /// Units left.
    pub stock: String,
    /// Units admitted per user.
    pub users: String,
    /// First answer per request id.
    pub requests: String,
    /// The durable record of admissions (a stream).
    pub admissions: String,
    /// The hand-off's progress: hash `{id: last stream id published, n: entries published}`.
    pub handed: String,
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
            admissions: k("admissions"),
            handed: k("handed"),
            returned: k("returned"),
        }
    }

    fn all(&self) -> [&str; 5] {
        [
            &self.meta,
            &self.stock,
            &self.users,
            &self.requests,
            &self.admissions,
        ]
    }
}

/// The script's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Admitted now; the order will be created under this id.
    Admitted {
        /// The new order's id.
        order_id: String,
        /// Units left after this one.
        left: i64,
    },
    /// A repeat of an admitted request id: the same order.
    Repeat {
        /// The order of the first answer.
        order_id: String,
    },
    /// The item was never loaded (no warm-up yet).
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
    /// The admission's W3C `traceparent` (empty if none), stored with the record.
    pub trace: &'a str,
}

/// Runs the admission script.
pub async fn admit(redis: &Redis, keys: &ItemKeys, a: Attempt<'_>) -> Result<Admission, RedisError> {
    let mut conn = redis.conn().await?;
    let mut inv = ADMIT.prepare();
    for k in keys.all() {
        inv.key(k);
    }
    inv.arg(a.user_id)
        .arg(a.request_id)
        .arg(a.quantity)
        .arg(a.now_ms)
        .arg(a.order_id)
        .arg(a.trace);
    let (code, order_id, left): (i64, String, i64) = inv.invoke_async(&mut *conn).await?;
    Ok(match code {
        1 => Admission::Admitted { order_id, left },
        2 => Admission::Repeat { order_id },
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

/// One item as the warm-up loads it.
#[derive(Debug, Clone, Copy)]
pub struct Warm {
    /// Session start, unix milliseconds.
    pub start_ms: i64,
    /// Session end, unix milliseconds.
    pub end_ms: i64,
    /// Units per user.
    pub limit: i64,
    /// Units for sale.
    pub quantity: i64,
    /// When the keys expire (past the end).
    pub expire_at_ms: i64,
}

/// Loads an item; `true` if its stock was loaded now, `false` if it already was.
pub async fn warm_item(redis: &Redis, keys: &ItemKeys, w: Warm) -> Result<bool, RedisError> {
    let mut conn = redis.conn().await?;
    let mut inv = WARM_ITEM.prepare();
    for k in keys.all() {
        inv.key(k);
    }
    inv.arg(w.start_ms)
        .arg(w.end_ms)
        .arg(w.limit)
        .arg(w.quantity)
        .arg(w.expire_at_ms);
    let loaded: i64 = inv.invoke_async(&mut *conn).await?;
    Ok(loaded == 1)
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

/// One recorded admission, as the hand-off reads it from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The stream entry id.
    pub entry_id: String,
    /// The order id given to the buyer.
    pub order_id: String,
    /// The buyer.
    pub user_id: String,
    /// Units.
    pub quantity: i64,
    /// When admitted, unix ms.
    pub admitted_ms: i64,
    /// The admission's `traceparent` (empty if none).
    pub trace: String,
}

/// Where the hand-off of an item stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The last stream id published (`0-0` before the first).
    pub last_id: String,
    /// Entries published so far.
    pub handed: i64,
    /// Entries recorded so far.
    pub recorded: i64,
}

impl Progress {
    /// Admissions recorded but not yet published.
    pub fn backlog(&self) -> i64 {
        (self.recorded - self.handed).max(0)
    }
}

/// The hand-off's progress on an item.
pub async fn progress(redis: &Redis, keys: &ItemKeys) -> Result<Progress, RedisError> {
    let mut conn = redis.conn().await?;
    let ((last_id, handed), recorded): ((Option<String>, Option<i64>), i64) = client::pipe()
        .cmd("HMGET")
        .arg(&keys.handed)
        .arg("id")
        .arg("n")
        .cmd("XLEN")
        .arg(&keys.admissions)
        .query_async(&mut *conn)
        .await?;
    Ok(Progress {
        last_id: last_id.unwrap_or_else(|| "0-0".to_owned()),
        handed: handed.unwrap_or(0),
        recorded,
    })
}

/// Up to `count` admissions recorded after `after` (a stream id), oldest first.
pub async fn recorded_after(
    redis: &Redis,
    keys: &ItemKeys,
    after: &str,
    count: usize,
) -> Result<Vec<Recorded>, RedisError> {
    let mut conn = redis.conn().await?;
    let reply: client::streams::StreamRangeReply = client::cmd("XRANGE")
        .arg(&keys.admissions)
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(&mut *conn)
        .await?;
    Ok(reply
        .ids
        .into_iter()
        .map(|e| {
            let text = |f: &str| e.get::<String>(f).unwrap_or_default();
            Recorded {
                order_id: text("order_id"),
                user_id: text("user_id"),
                quantity: e.get::<i64>("quantity").unwrap_or(0),
                admitted_ms: e.get::<i64>("admitted_ms").unwrap_or(0),
                trace: text("trace"),
                entry_id: e.id,
            }
        })
        .collect())
}

/// Records that the admissions up to `last_id` (`published` more of them) are published. The
/// progress key expires with the item's other keys.
pub async fn mark_handed(
    redis: &Redis,
    keys: &ItemKeys,
    last_id: &str,
    published: i64,
) -> Result<(), RedisError> {
    let mut conn = redis.conn().await?;
    let ttl_ms: i64 = client::cmd("PTTL")
        .arg(&keys.admissions)
        .query_async(&mut *conn)
        .await?;
    let mut pipe = client::pipe();
    pipe.atomic()
        .cmd("HSET")
        .arg(&keys.handed)
        .arg("id")
        .arg(last_id)
        .ignore()
        .cmd("HINCRBY")
        .arg(&keys.handed)
        .arg("n")
        .arg(published)
        .ignore();
    if ttl_ms > 0 {
        pipe.cmd("PEXPIRE").arg(&keys.handed).arg(ttl_ms).ignore();
    }
    let () = pipe.query_async(&mut *conn).await?;
    Ok(())
}

/// Units left of each item (`None` where the item is not loaded), in the order given.
pub async fn stock_left(redis: &Redis, keys: &[ItemKeys]) -> Result<Vec<Option<i64>>, RedisError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = redis.conn().await?;
    let mut pipe = client::pipe();
    for k in keys {
        // One GET per key rather than MGET: the keys live in different cluster slots.
        pipe.cmd("GET").arg(&k.stock);
    }
    Ok(pipe.query_async(&mut *conn).await?)
}
