//! Redis: a lazy connection pool, key prefixes, typed Lua scripts and the distributed lock.
//!
//! Every key a service touches is `prefix + rest` (default prefix `mall:`), so tests isolate
//! themselves with a prefix of their own and nothing else changes. Scripts are embedded at
//! compile time from `lua/` and loaded at start-up: a script Redis refuses to compile stops the
//! service from starting, rather than failing the first sale.

pub mod lock;
mod script;

use std::time::Duration;

use deadpool_redis::{Config, Pool, PoolConfig, Runtime, Timeouts};
use url::Url;

pub use deadpool_redis::redis as client;
pub use script::{LuaScript, ScriptLoadError};

/// Redis settings (`MALL_REDIS_*`).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `MALL_REDIS_URL`.
    pub url: Url,
    /// `MALL_REDIS_PREFIX`: prepended to every key.
    pub key_prefix: String,
    /// `MALL_REDIS_POOL_SIZE`: connections per process.
    pub pool_size: usize,
    /// `MALL_REDIS_TIMEOUT`: connect / wait-for-connection timeout.
    pub timeout: Duration,
}

/// Errors talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// No connection could be had (Redis down, pool exhausted).
    #[error("redis connection: {0}")]
    Pool(String),
    /// A command failed.
    #[error("redis command: {0}")]
    Command(#[from] client::RedisError),
}

/// A service's Redis handle.
#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    prefix: std::sync::Arc<str>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("prefix", &self.prefix).finish()
    }
}

impl Redis {
    /// Creates the pool without connecting.
    pub fn connect_lazy(settings: &RedisSettings) -> Result<Self, RedisError> {
        let mut cfg = Config::from_url(settings.url.as_str());
        cfg.pool = Some(PoolConfig {
            max_size: settings.pool_size,
            timeouts: Timeouts {
                wait: Some(settings.timeout),
                create: Some(settings.timeout),
                recycle: Some(settings.timeout),
            },
            ..PoolConfig::default()
        });
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| RedisError::Pool(e.to_string()))?;
        Ok(Self {
            pool,
            prefix: settings.key_prefix.as_str().into(),
        })
    }

    /// The full key for `rest`, e.g. `key("product:sku:42")` -> `mall:product:sku:42`.
    pub fn key(&self, rest: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + rest.len());
        key.push_str(&self.prefix);
        key.push_str(rest);
        key
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A pooled connection.
    pub async fn conn(&self) -> Result<deadpool_redis::Connection, RedisError> {
        self.pool.get().await.map_err(|e| RedisError::Pool(e.to_string()))
    }

    /// Readiness: `PING` answers.
    pub async fn check(&self) -> Result<(), String> {
        let mut conn = self.conn().await.map_err(|e| e.to_string())?;
        let pong: String = client::cmd("PING")
            .query_async(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(format!("unexpected PING answer {pong:?}"))
        }
    }
}
