//! Redis: lazily connected multiplexed connections, key prefixes, typed Lua scripts and the
//! distributed lock.
//!
//! Every key a service touches is `prefix + rest` (default prefix `mall:`), so tests isolate
//! themselves with a prefix of their own and nothing else changes. Scripts are embedded at
//! compile time from `lua/` and loaded at start-up: a script Redis refuses to compile stops the
//! service from starting, rather than failing the first sale.
//!
//! Connections are redis-rs `ConnectionManager`s: each pipelines the commands of every task over
//! one socket and reconnects by itself. A checked-out pool connection (deadpool-redis, before)
//! was first verified with an `UNWATCH` + `PING` round trip, so every command paid two round
//! trips; here it pays one. Nothing in mall uses `WATCH`, blocking commands or subscriptions on
//! these connections, which is what a multiplexed connection cannot share.
//!
//! On a serving thread (`MALL_HTTP_THREADS`, see `server`) a handler gets that thread's own
//! connection, made on first use: its driver task runs on the thread's runtime, so a command's
//! round trip never wakes another core. Everything else (background work, the shared runtime)
//! uses the process's connections.

pub mod lock;
mod script;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use url::Url;

pub use redis as client;
pub use script::{LuaScript, ScriptLoadError};

/// Redis settings (`MALL_REDIS_*`).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `MALL_REDIS_URL`.
    pub url: Url,
    /// `MALL_REDIS_PREFIX`: prepended to every key.
    pub key_prefix: String,
    /// `MALL_REDIS_CONNECTIONS`: multiplexed connections per process, used in turn.
    pub connections: usize,
    /// `MALL_REDIS_TIMEOUT`: connect timeout, and the longest a command waits for its answer.
    pub timeout: Duration,
}

/// Errors talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// No connection could be had (a bad URL).
    #[error("redis connection: {0}")]
    Pool(String),
    /// A command failed (including: Redis unreachable, or no answer within the timeout).
    #[error("redis command: {0}")]
    Command(#[from] client::RedisError),
    /// The command ran, but its answer is not one this build knows (a script newer or older
    /// than the binary): whatever it did happened.
    #[error("redis reply: {0}")]
    Reply(String),
}

/// Whether a command failed because its connection is dead: exactly the errors after which
/// redis-rs's `ConnectionManager` replaces the connection, so a resend goes to a fresh one.
pub fn is_dead_connection(e: &client::RedisError) -> bool {
    e.is_io_error() || e.is_unrecoverable_error()
}

/// A service's Redis handle.
#[derive(Clone)]
pub struct Redis {
    connections: Arc<[ConnectionManager]>,
    next: Arc<AtomicUsize>,
    prefix: Arc<str>,
    /// Names this handle (and its clones) among the serving threads' connections.
    id: usize,
    client: client::Client,
    config: ConnectionManagerConfig,
}

thread_local! {
    /// A serving thread's own connections, one per `Redis` handle it used.
    static THREAD_CONNECTIONS: RefCell<Vec<(usize, ConnectionManager)>> = const { RefCell::new(Vec::new()) };
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("prefix", &self.prefix).finish()
    }
}

/// A connection to send commands on: `&mut *conn` is what redis-rs calls take.
#[derive(Clone)]
pub struct Conn(ConnectionManager);

impl std::ops::Deref for Conn {
    type Target = ConnectionManager;

    fn deref(&self) -> &ConnectionManager {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut ConnectionManager {
        &mut self.0
    }
}

impl Redis {
    /// Creates the connections without connecting: each connects on its first command, so a
    /// service starts while Redis is down and works once it is up.
    pub fn connect_lazy(settings: &RedisSettings) -> Result<Self, RedisError> {
        let client =
            client::Client::open(settings.url.as_str()).map_err(|e| RedisError::Pool(e.to_string()))?;
        // A command while Redis is down fails within about two timeouts rather than waiting
        // through a long reconnect schedule: callers (readiness, breakers, degraded reads)
        // need to learn of it quickly, and the next command tries again.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let connections = (0..settings.connections.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        static IDS: AtomicUsize = AtomicUsize::new(0);
        Ok(Self {
            connections: connections.into(),
            next: Arc::new(AtomicUsize::new(0)),
            prefix: settings.key_prefix.as_str().into(),
            id: IDS.fetch_add(1, Ordering::Relaxed),
            client,
            config,
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

    /// A connection (the next one in turn). Never waits: connecting happens on the first
    /// command, whose error says when Redis cannot be reached.
    pub async fn conn(&self) -> Result<Conn, RedisError> {
        if crate::server::on_serving_thread() {
            return self.thread_conn().map(Conn);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        Ok(Conn(self.connections[i].clone()))
    }

    fn thread_conn(&self) -> Result<ConnectionManager, RedisError> {
        THREAD_CONNECTIONS.with_borrow_mut(|mine| {
            if let Some((_, conn)) = mine.iter().find(|(id, _)| *id == self.id) {
                return Ok(conn.clone());
            }
            let conn = ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())?;
            mine.push((self.id, conn.clone()));
            Ok(conn)
        })
    }

    /// Runs `op` on a connection and, if it failed because that connection is dead, once more
    /// on the same connection, which is reconnecting by then: a connection whose last attempt
    /// was refused while Redis was down fails its next command once even though Redis is back.
    /// Only for operations that are safe to repeat (reads, scripts idempotent by request id).
    pub async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T, RedisError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let conn = self.conn().await?;
        match op(conn.clone()).await {
            Err(RedisError::Command(e)) if is_dead_connection(&e) => op(conn).await,
            other => other,
        }
    }

    /// Readiness: `PING` answers (retried once on a dead connection, so readiness comes back
    /// with Redis rather than one failed probe per idle connection later).
    pub async fn check(&self) -> Result<(), String> {
        let pong: String = self
            .retrying(|mut conn| async move { Ok(client::cmd("PING").query_async(&mut *conn).await?) })
            .await
            .map_err(|e| e.to_string())?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(format!("unexpected PING answer {pong:?}"))
        }
    }
}
