//! Redis: lazily connected multiplexed connections to one node or a Redis Cluster, key
//! prefixes, typed Lua scripts, broadcasts and the distributed lock.
//!
//! Every key a service touches is `prefix + rest` (default prefix `mall:`), so tests isolate
//! themselves with a prefix of their own and nothing else changes. Keys a script or a
//! multi-key command uses together share a hash tag (`{...}` in `rest`), so they live in one
//! cluster slot; in debug builds a script call whose keys do not is refused
//! ([`script_keys_in_one_slot`]). Scripts are embedded at
//! compile time from `lua/` and loaded at start-up: a script Redis refuses to compile stops the
//! service from starting, rather than failing the first sale.
//!
//! `MALL_REDIS_CLUSTER_NODES` (seeds) picks a cluster, else `MALL_REDIS_URL` names one node;
//! callers see one [`Connection`] type either way. Each connection pipelines the commands of
//! every task over one socket (per node) and reconnects by itself. Nothing in mall uses
//! `WATCH` or blocking list commands on these connections, which a multiplexed connection
//! cannot share; subscriptions get connections of their own ([`Redis::subscribe`]).
//!
//! On a serving thread (`MALL_HTTP_THREADS`, see `server`) a handler gets that thread's own
//! connection, made on first use: its driver task runs on the thread's runtime, so a command's
//! round trip never wakes another core. Everything else (background work, the shared runtime)
//! uses the process's connections.

mod connection;
pub mod lock;
mod pubsub;
mod script;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use url::Url;

pub use connection::{Connection, script_keys_in_one_slot};
pub use redis as client;
pub use script::{LuaScript, ScriptLoadError};

/// Redis settings (`MALL_REDIS_*`).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `MALL_REDIS_URL`: the one node, unless `cluster_nodes` is set.
    pub url: Url,
    /// `MALL_REDIS_CLUSTER_NODES`: seed nodes of a Redis Cluster; when not empty every
    /// connection is a cluster connection and `url` is not used.
    pub cluster_nodes: Vec<Url>,
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

/// Connections per serving thread for commands that hold theirs ([`Redis::blocking_conn`]).
pub const BLOCKING_LANES: usize = 4;

/// What the connections are made from.
enum Backend {
    Node {
        client: client::Client,
        config: ConnectionManagerConfig,
    },
    Cluster {
        client: ClusterClient,
        seeds: Vec<Url>,
    },
}

impl Backend {
    fn connect(&self) -> Result<Connection, RedisError> {
        Ok(match self {
            Self::Node { client, config } => Connection::Node(ConnectionManager::new_lazy_with_config(
                client.clone(),
                config.clone(),
            )?),
            // Connects to the nodes in the background: the first command says if it cannot.
            Self::Cluster { client, .. } => Connection::Cluster(
                client.get_pending_async_connection_with_config(client::cluster::ClusterConfig::new()),
            ),
        })
    }
}

/// A service's Redis handle.
#[derive(Clone)]
pub struct Redis {
    connections: Arc<[Connection]>,
    next: Arc<AtomicUsize>,
    prefix: Arc<str>,
    /// Names this handle (and its clones) among the serving threads' connections.
    id: usize,
    backend: Arc<Backend>,
}

thread_local! {
    /// A serving thread's own connections, one per `Redis` handle it used.
    static THREAD_CONNECTIONS: RefCell<Vec<(usize, Connection)>> = const { RefCell::new(Vec::new()) };
    /// A serving thread's lanes for commands that hold their connection ([`Redis::blocking_conn`]),
    /// per `Redis` handle, with the next one to use.
    static THREAD_LANES: RefCell<Vec<(usize, Vec<Connection>, usize)>> = const { RefCell::new(Vec::new()) };
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("cluster", &self.is_cluster())
            .finish()
    }
}

/// A connection to send commands on: `&mut *conn` is what redis-rs calls take.
#[derive(Clone)]
pub struct Conn(Connection);

impl std::ops::Deref for Conn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.0
    }
}

impl Redis {
    /// Creates the connections without connecting: each connects on its first command, so a
    /// service starts while Redis is down and works once it is up.
    pub fn connect_lazy(settings: &RedisSettings) -> Result<Self, RedisError> {
        let backend = if settings.cluster_nodes.is_empty() {
            let client =
                client::Client::open(settings.url.as_str()).map_err(|e| RedisError::Pool(e.to_string()))?;
            // A command while Redis is down fails within about two timeouts rather than
            // waiting through a long reconnect schedule: callers (readiness, breakers,
            // degraded reads) need to learn of it quickly, and the next command tries again.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.timeout))
                .set_response_timeout(Some(settings.timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500));
            Backend::Node { client, config }
        } else {
            // Redirections and a failover's slot moves are retried a few times, inside twice
            // the command timeout: long enough to follow a promotion, short enough to fail fast.
            let client = ClusterClientBuilder::new(settings.cluster_nodes.iter().map(Url::as_str))
                .connection_timeout(settings.timeout)
                .response_timeout(settings.timeout)
                .overall_response_timeout(Some(settings.timeout * 2))
                .retries(4)
                .min_retry_wait(20)
                .max_retry_wait(500)
                .build()
                .map_err(|e| RedisError::Pool(e.to_string()))?;
            Backend::Cluster {
                client,
                seeds: settings.cluster_nodes.clone(),
            }
        };
        let connections = (0..settings.connections.max(1))
            .map(|_| backend.connect())
            .collect::<Result<Vec<_>, _>>()?;
        static IDS: AtomicUsize = AtomicUsize::new(0);
        Ok(Self {
            connections: connections.into(),
            next: Arc::new(AtomicUsize::new(0)),
            prefix: settings.key_prefix.as_str().into(),
            id: IDS.fetch_add(1, Ordering::Relaxed),
            backend: Arc::new(backend),
        })
    }

    /// Whether this handle talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(*self.backend, Backend::Cluster { .. })
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
        if crate::serving_thread::current() {
            return self.thread_conn().map(Conn);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        Ok(Conn(self.connections[i].clone()))
    }

    /// A connection for a command that holds it until something else happens (`WAIT` answers
    /// once replicas confirm): one of [`BLOCKING_LANES`] per serving thread, in turn, so one
    /// such command does not hold back the thread's other commands or all of its kind.
    pub async fn blocking_conn(&self) -> Result<Conn, RedisError> {
        if !crate::serving_thread::current() {
            return self.conn().await;
        }
        THREAD_LANES.with_borrow_mut(|mine| {
            let i = match mine.iter().position(|(id, _, _)| *id == self.id) {
                Some(i) => i,
                None => {
                    let lanes = (0..BLOCKING_LANES)
                        .map(|_| self.backend.connect())
                        .collect::<Result<Vec<_>, _>>()?;
                    mine.push((self.id, lanes, 0));
                    mine.len() - 1
                }
            };
            let (_, lanes, next) = &mut mine[i];
            *next = (*next + 1) % lanes.len();
            Ok(Conn(lanes[*next].clone()))
        })
    }

    fn thread_conn(&self) -> Result<Connection, RedisError> {
        THREAD_CONNECTIONS.with_borrow_mut(|mine| {
            if let Some((_, conn)) = mine.iter().find(|(id, _)| *id == self.id) {
                return Ok(conn.clone());
            }
            let conn = self.backend.connect()?;
            mine.push((self.id, conn.clone()));
            Ok(conn)
        })
    }

    /// Runs `op` on a connection and, if it failed because that connection is dead, once more
    /// on the same connection, which is reconnecting by then: a connection whose last attempt
    /// was refused while Redis was down fails its next command once even though Redis is back.
    /// Only for operations that are safe to repeat (reads, scripts idempotent by request id).
    pub async fn retrying<T, F, Fut>(&self, op: F) -> Result<T, RedisError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        Self::retrying_on(self.conn().await?, op).await
    }

    /// [`Redis::retrying`] on a connection the caller keeps using afterwards (`WAIT` must follow
    /// on the connection that wrote).
    pub async fn retrying_on<T, F, Fut>(conn: Conn, mut op: F) -> Result<T, RedisError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        match op(conn.clone()).await {
            Err(RedisError::Command(e)) if is_dead_connection(&e) => op(conn).await,
            other => other,
        }
    }

    /// Readiness. One node: `PING` answers. A cluster: a node answers `CLUSTER INFO` with
    /// `cluster_state:ok` (every slot served), so one replica down does not fail it but a
    /// master down without a promoted replica does. Retried once on a dead connection, so
    /// readiness comes back with Redis rather than one failed probe per idle connection later.
    pub async fn check(&self) -> Result<(), String> {
        if self.is_cluster() {
            let info: String = self
                .retrying(|mut conn| async move {
                    Ok(client::cmd("CLUSTER").arg("INFO").query_async(&mut *conn).await?)
                })
                .await
                .map_err(|e| e.to_string())?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map_or("?", str::trim)
            };
            return match field("cluster_state") {
                "ok" => Ok(()),
                state => Err(format!(
                    "cluster_state:{state}, {} of 16384 slots served",
                    field("cluster_slots_ok")
                )),
            };
        }
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
