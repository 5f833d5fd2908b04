//! Reads through four layers, so hot reads never reach Postgres and unknown ids never reach
//! anything: bloom filter -> L1 (moka, per instance) -> L2 (Redis) -> Postgres under a cluster
//! lock.
//!
//! - **Bloom** (local copy): an id it rules out is a 404 at once.
//! - **L1**: moka, `MALL_PRODUCT_L1_TTL`, bounded; concurrent misses of one key in one instance
//!   share one load (single flight).
//! - **L2**: Redis `"<logical expiry ms>|<json>"` (empty json: known missing, a short negative
//!   entry). Logical TTLs carry ±`MALL_PRODUCT_L2_JITTER` so entries written together do not
//!   expire together; the physical TTL adds a grace period so a stale value is there to serve.
//! - **Rebuild**: on an L2 miss or a logically expired value, one instance in the cluster takes
//!   `product:lock:{<key>}` (in the slot of the value, `product:{<key>}`; SET NX PX + token,
//!   lease renewed while loading, compare-and-delete release) and reloads from Postgres. The
//!   others serve the stale value, or, with none, wait up to `MALL_PRODUCT_LOCK_WAIT` for the
//!   new one.
//! - **Redis down**: reads go to Postgres through a semaphore of `MALL_PRODUCT_DB_CONCURRENCY`
//!   permits (L1 still absorbs repeats), so an outage cannot become a database storm; a read that
//!   cannot get a permit quickly is a 503.
//! - **Writes** commit to Postgres, delete the L2 keys, tell every instance to drop its L1 copy
//!   (Redis pub/sub, sharded on a cluster), and repeat the delete a moment later, which closes
//!   the race with a rebuild that read the old row just before the commit.

mod changes;
mod rebuild;
mod sync;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mall_common::db::Db;
use mall_common::redis::{Redis, RedisError, client};
use mall_common::telemetry::store_span;
use metrics::SharedString;
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::bloom::{Bloom, BloomKind};
use super::catalog::{self, Price};
use super::views::Page;
use crate::domain::SearchQuery;

/// The cache's knobs (`MALL_PRODUCT_*`).
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// `MALL_PRODUCT_L1_TTL` (2s).
    pub l1_ttl: Duration,
    /// `MALL_PRODUCT_L1_CAPACITY` (100000 entries).
    pub l1_capacity: u64,
    /// `MALL_PRODUCT_L2_TTL` (5m): logical lifetime of an L2 entry.
    pub l2_ttl: Duration,
    /// `MALL_PRODUCT_L2_JITTER` (0.2): ± share of the TTL, random per entry.
    pub l2_jitter: f64,
    /// `MALL_PRODUCT_NEGATIVE_TTL` (30s): lifetime of a "does not exist" entry.
    pub negative_ttl: Duration,
    /// `MALL_PRODUCT_LOCK_LEASE` (3s): rebuild lock lease, renewed while loading.
    pub lock_lease: Duration,
    /// `MALL_PRODUCT_LOCK_WAIT` (1s): how long a reader without a value waits for a rebuild.
    pub lock_wait: Duration,
    /// `MALL_PRODUCT_BLOOM_CAPACITY` (1000000): ids per filter at 1% false positives.
    pub bloom_capacity: u64,
    /// `MALL_PRODUCT_DB_CONCURRENCY` (8): Postgres reads at once when Redis is down.
    pub db_concurrency: usize,
}

/// What is cached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// `GET /api/skus/{id}`.
    Sku(i64),
    /// `GET /api/products/{id}`.
    Spu(i64),
    /// `GET /api/categories`.
    Categories,
}

impl CacheKey {
    fn name(&self) -> String {
        match self {
            Self::Sku(id) => format!("sku:{id}"),
            Self::Spu(id) => format!("spu:{id}"),
            Self::Categories => "categories".to_owned(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Sku(_) => "sku",
            Self::Spu(_) => "spu",
            Self::Categories => "categories",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name.split_once(':') {
            Some(("sku", id)) => id.parse().ok().map(Self::Sku),
            Some(("spu", id)) => id.parse().ok().map(Self::Spu),
            None if name == "categories" => Some(Self::Categories),
            _ => None,
        }
    }
}

/// A cached answer: the JSON body, or `None` for "does not exist".
type Cached = Option<Bytes>;

/// Why a read failed.
#[derive(Debug, thiserror::Error, Clone)]
pub enum ReadError {
    /// Postgres failed.
    #[error("database: {0}")]
    Db(String),
    /// No database connection could be had in time, or Postgres is unreachable.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Redis is down and the database fallback is saturated.
    #[error("the database fallback is saturated")]
    Saturated,
}

struct Inner {
    db: Db,
    redis: Redis,
    settings: CacheSettings,
    l1: moka::future::Cache<CacheKey, Arc<Cached>>,
    skus: Bloom,
    spus: Bloom,
    db_permits: Semaphore,
    db_inflight: AtomicUsize,
    db_inflight_peak: AtomicUsize,
    /// Metric label shared by every instance of one deployment (and one test).
    scope: SharedString,
}

/// The catalog as handlers see it.
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<Inner>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Catalog {
    /// A catalog over `db` and `redis`; `crate::jobs::run` keeps its filters and L1 in
    /// step with the cluster.
    pub fn new(db: Db, redis: Redis, settings: CacheSettings) -> Self {
        let l1 = moka::future::Cache::builder()
            .max_capacity(settings.l1_capacity)
            .time_to_live(settings.l1_ttl)
            .build();
        let scope = SharedString::from(db.schema().to_owned());
        let cache = Self {
            inner: Arc::new(Inner {
                skus: Bloom::new(BloomKind::Sku, settings.bloom_capacity),
                spus: Bloom::new(BloomKind::Spu, settings.bloom_capacity),
                db_permits: Semaphore::new(settings.db_concurrency),
                db_inflight: AtomicUsize::new(0),
                db_inflight_peak: AtomicUsize::new(0),
                db,
                redis,
                settings,
                l1,
                scope,
            }),
        };
        // Exported at zero from the start, so the dashboard's shares and the alerts see the
        // first event.
        for kind in ["sku", "spu"] {
            cache
                .counter("product_bloom_rejections_total", Some(("kind", kind)))
                .increment(0);
            cache
                .counter("product_db_loads_total", Some(("kind", kind)))
                .increment(0);
        }
        for layer in ["l1", "l2"] {
            cache
                .counter("product_cache_hits_total", Some(("layer", layer)))
                .increment(0);
        }
        for name in [
            "product_lock_waits_total",
            "product_lock_wait_timeouts_total",
            "product_redis_fallbacks_total",
            "product_stale_served_total",
        ] {
            cache.counter(name, None).increment(0);
        }
        metrics::gauge!("product_db_inflight_peak", "scope" => cache.inner.scope.clone()).set(0.0);
        cache
    }

    fn counter(&self, name: &'static str, label: Option<(&'static str, &'static str)>) -> metrics::Counter {
        let scope = ("scope", self.inner.scope.clone());
        match label {
            Some((k, v)) => metrics::counter!(name, &[scope, (k, SharedString::const_str(v))]),
            None => metrics::counter!(name, &[scope]),
        }
    }

    fn count(&self, name: &'static str, label: Option<(&'static str, &'static str)>) {
        self.counter(name, label).increment(1);
    }

    /// Whether both bloom filters are ready (readiness).
    pub fn blooms_ready(&self) -> bool {
        self.inner.skus.is_ready() && self.inner.spus.is_ready()
    }

    /// A cached read: the JSON body, or `None` when the entity does not exist (404).
    pub async fn get(&self, key: CacheKey) -> Result<Cached, ReadError> {
        let ruled_out = match key {
            CacheKey::Sku(id) => !self.inner.skus.might_contain(id),
            CacheKey::Spu(id) => !self.inner.spus.might_contain(id),
            CacheKey::Categories => false,
        };
        if ruled_out {
            self.count("product_bloom_rejections_total", Some(("kind", key.kind())));
            return Ok(None);
        }
        if let Some(hit) = self.inner.l1.get(&key).await {
            self.count("product_cache_hits_total", Some(("layer", "l1")));
            return Ok((*hit).clone());
        }
        let this = self.clone();
        let loaded = self
            .inner
            .l1
            .try_get_with(key.clone(), async move { this.load(&key).await.map(Arc::new) })
            .await
            .map_err(|e: Arc<ReadError>| (*e).clone())?;
        Ok((*loaded).clone())
    }

    fn l2_key(&self, key: &CacheKey) -> String {
        // `{name}`: the value and its rebuild lock share a cluster slot.
        self.inner.redis.key(&format!("product:{{{}}}", key.name()))
    }

    async fn l2_get(&self, key: &CacheKey) -> Result<Option<(u64, Cached)>, RedisError> {
        let raw: Option<Vec<u8>> = async {
            let mut conn = self.inner.redis.conn().await?;
            let raw = client::cmd("GET")
                .arg(self.l2_key(key))
                .query_async(&mut *conn)
                .await?;
            Ok::<_, RedisError>(raw)
        }
        .instrument(store_span("redis", "GET"))
        .await?;
        Ok(raw.and_then(|raw| {
            let bar = raw.iter().position(|b| *b == b'|')?;
            let exp: u64 = std::str::from_utf8(&raw[..bar]).ok()?.parse().ok()?;
            let body = &raw[bar + 1..];
            Some((exp, (!body.is_empty()).then(|| Bytes::copy_from_slice(body))))
        }))
    }

    /// The logical TTL of a new entry: jittered for values, short for negatives.
    fn logical_ttl(&self, value: &Cached) -> Duration {
        if value.is_none() {
            return self.inner.settings.negative_ttl;
        }
        let base = self.inner.settings.l2_ttl.as_secs_f64();
        let j = self.inner.settings.l2_jitter;
        Duration::from_secs_f64(base * (1.0 + j * (2.0 * rand::random::<f64>() - 1.0)))
    }

    async fn l2_put(&self, key: &CacheKey, value: &Cached) -> Result<(), RedisError> {
        let ttl = self.logical_ttl(value);
        let mut raw = format!("{}|", now_ms() + ttl.as_millis() as u64).into_bytes();
        if let Some(body) = value {
            raw.extend_from_slice(body);
        }
        // The physical TTL outlives the logical one so a stale value can be served while one
        // instance rebuilds.
        let physical = ttl + Duration::from_secs(600);
        async {
            let mut conn = self.inner.redis.conn().await?;
            let _: () = client::cmd("SET")
                .arg(self.l2_key(key))
                .arg(raw)
                .arg("PX")
                .arg(physical.as_millis() as u64)
                .query_async(&mut *conn)
                .await?;
            Ok(())
        }
        .instrument(store_span("redis", "SET"))
        .await
    }

    /// The listing (not cached).
    pub async fn search(&self, q: &SearchQuery) -> Result<Page, sqlx::Error> {
        catalog::search(&self.inner.db, q)
            .instrument(store_span("postgresql", "SELECT"))
            .await
    }

    /// Current prices (the order service's internal read; always from Postgres).
    pub async fn prices(&self, ids: &[i64]) -> Result<Vec<Price>, sqlx::Error> {
        catalog::prices(&self.inner.db, ids)
            .instrument(store_span("postgresql", "SELECT"))
            .await
    }
}

/// A view as the JSON bytes that are cached and sent.
fn to_json<T: serde::Serialize>(view: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(view).expect("views serialize"))
}
