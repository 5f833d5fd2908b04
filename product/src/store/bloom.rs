//! Bloom filters of the SKU and SPU ids that exist, so a request for an id that cannot exist is
//! answered 404 without touching Redis or Postgres (cache penetration).
//!
//! The filter lives in Redis as a bitmap (one per kind, hash-tagged) and in every instance as a
//! local copy that answers the checks. Sized for `MALL_PRODUCT_BLOOM_CAPACITY` ids at a 1% false
//! positive rate. Built from the database when Redis has none (one instance, under a lock, merged
//! with `BITOP OR` so ids added meanwhile survive), refreshed every few seconds, and updated on
//! create in Redis (one script) and locally (the creating instance at once, the others through
//! the invalidation channel). Until a filter is ready, checks let everything through, and
//! `/readyz` says so.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use mall_common::redis::{LuaScript, Redis, RedisError, client};

/// `lua/product/bloom_add.lua`.
pub static BLOOM_ADD: LazyLock<LuaScript> = LazyLock::new(|| mall_common::lua_script!("product/bloom_add"));

/// Which ids a filter holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BloomKind {
    /// SKU ids.
    Sku,
    /// SPU ids.
    Spu,
}

impl BloomKind {
    /// The name in keys and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sku => "sku",
            Self::Spu => "spu",
        }
    }
}

/// One filter: its local bits and where they live in Redis.
pub struct Bloom {
    kind: BloomKind,
    bits: Vec<AtomicU8>,
    m: u64,
    k: u32,
    ready: AtomicBool,
}

/// The Redis key of `kind`'s filter (hash-tagged, so scripts run on Redis Cluster).
fn key_of(redis: &Redis, kind: BloomKind) -> String {
    redis.key(&format!("product:bloom:{{{}}}", kind.as_str()))
}

/// splitmix64's finaliser: a stable, well-mixed hash of an integer (the same in every process
/// and every Rust version, which `DefaultHasher` does not promise).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Bloom {
    /// A filter for `capacity` ids at a 1% false-positive rate.
    pub fn new(kind: BloomKind, capacity: u64) -> Self {
        let n = capacity.max(1000) as f64;
        let m = (-(n * 0.01f64.ln()) / (std::f64::consts::LN_2.powi(2))).ceil() as u64;
        let m = m.div_ceil(8) * 8;
        let k = ((m as f64 / n) * std::f64::consts::LN_2).round().max(1.0) as u32;
        Self {
            kind,
            bits: (0..m / 8).map(|_| AtomicU8::new(0)).collect(),
            m,
            k,
            ready: AtomicBool::new(false),
        }
    }

    /// The filter's kind.
    pub fn kind(&self) -> BloomKind {
        self.kind
    }

    /// The Redis key (hash-tagged, so scripts run on Redis Cluster).
    pub fn redis_key(&self, redis: &Redis) -> String {
        key_of(redis, self.kind)
    }

    /// Whether the filter has been loaded or built.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The bit offsets of `id` (double hashing).
    pub fn positions(&self, id: i64) -> impl Iterator<Item = u64> + '_ {
        let h1 = mix(id as u64);
        let h2 = mix(h1 ^ 0xA076_1D64_78BD_642F) | 1;
        (0..u64::from(self.k)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % self.m)
    }

    /// False means the id certainly does not exist. Before the filter is ready: true.
    pub fn might_contain(&self, id: i64) -> bool {
        if !self.is_ready() {
            return true;
        }
        // Redis bit order: offset 0 is the most significant bit of byte 0.
        self.positions(id)
            .all(|p| self.bits[(p / 8) as usize].load(Ordering::Relaxed) & (0x80 >> (p % 8)) != 0)
    }

    /// Sets the id's bits locally.
    pub fn insert_local(&self, id: i64) {
        for p in self.positions(id) {
            self.bits[(p / 8) as usize].fetch_or(0x80 >> (p % 8), Ordering::Relaxed);
        }
    }

    /// ORs a Redis bitmap into the local copy and marks the filter ready.
    pub fn merge(&self, bytes: &[u8]) {
        for (local, b) in self.bits.iter().zip(bytes) {
            if *b != 0 {
                local.fetch_or(*b, Ordering::Relaxed);
            }
        }
        self.ready.store(true, Ordering::Release);
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.bits.iter().map(|b| b.load(Ordering::Relaxed)).collect()
    }

    /// Adds an id in Redis (atomically) and locally.
    pub async fn add(&self, redis: &Redis, id: i64) -> Result<(), RedisError> {
        self.insert_local(id);
        let mut conn = redis.conn().await?;
        let mut inv = BLOOM_ADD.prepare();
        inv.key(self.redis_key(redis));
        for p in self.positions(id) {
            inv.arg(p);
        }
        let _: i64 = inv.invoke_async(&mut *conn).await?;
        Ok(())
    }

    /// Loads the Redis bitmap into the local copy; `false` if Redis has none yet.
    pub async fn load(&self, redis: &Redis) -> Result<bool, RedisError> {
        let mut conn = redis.conn().await?;
        let bytes: Option<Vec<u8>> = client::cmd("GET")
            .arg(self.redis_key(redis))
            .query_async(&mut *conn)
            .await?;
        match bytes {
            Some(b) => {
                self.merge(&b);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Drops the Redis bitmaps of both kinds, for ids written behind the service's back (the
    /// seed command writes straight to the database): with none in Redis, an instance builds
    /// them from the database again within its next sync (about 10 s), and every instance's
    /// local copy takes the rebuilt bits in. Left alone, a filter built before the seed
    /// answered 404 for every seeded id.
    pub async fn forget_all(redis: &Redis) -> Result<(), RedisError> {
        let mut conn = redis.conn().await?;
        let mut del = client::cmd("DEL");
        for kind in [BloomKind::Sku, BloomKind::Spu] {
            del.arg(key_of(redis, kind));
        }
        let _: i64 = del.query_async(&mut *conn).await?;
        Ok(())
    }

    /// Publishes the locally built bits, merged with whatever Redis already has.
    pub async fn publish_built(&self, redis: &Redis) -> Result<(), RedisError> {
        let key = self.redis_key(redis);
        let tmp = redis.key(&format!("product:bloom:{{{}}}:build", self.kind.as_str()));
        let mut conn = redis.conn().await?;
        let _: () = client::pipe()
            .atomic()
            .cmd("SET")
            .arg(&tmp)
            .arg(self.to_bytes())
            .ignore()
            .cmd("BITOP")
            .arg("OR")
            .arg(&key)
            .arg(&key)
            .arg(&tmp)
            .ignore()
            .cmd("DEL")
            .arg(&tmp)
            .ignore()
            .query_async(&mut *conn)
            .await?;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_ids_are_found_and_the_false_positive_rate_is_near_one_percent() {
        let b = Bloom::new(BloomKind::Sku, 10_000);
        b.ready.store(true, Ordering::Release);
        for id in 0..10_000 {
            b.insert_local(id);
        }
        assert!((0..10_000).all(|id| b.might_contain(id)), "no false negatives");
        let fp = (1_000_000..1_100_000).filter(|id| b.might_contain(*id)).count();
        assert!(fp < 1_500, "false positives {fp} of 100000");
    }

    #[test]
    fn merging_the_redis_bytes_reproduces_the_bits() {
        let a = Bloom::new(BloomKind::Spu, 1000);
        a.insert_local(42);
        let b = Bloom::new(BloomKind::Spu, 1000);
        b.merge(&a.to_bytes());
        assert!(b.might_contain(42));
        assert!(!b.might_contain(43) || !b.might_contain(44));
    }
}
