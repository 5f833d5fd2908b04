//! Per-test isolation on the shared Postgres, Redis and RabbitMQ.
//!
//! Each [`TestEnv`] has an id `mt<unix seconds>_<random>`: its Postgres schemas are
//! `<id>_<service schema>`, its Redis keys start with `<id>:`, its exchanges and queues with
//! `<id>.`. Dropping the env removes them. The first env of a process also sweeps what runs
//! older than an hour left behind (a crashed or killed test never drops its env).

use std::sync::{Mutex, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mall_common::amqp::Amqp;
use mall_common::config::Vars;
use mall_common::platform::{PlatformSettings, ServiceDefaults};
use mall_common::server::Server;
use mall_common::service::Service;
use mall_common::telemetry::TelemetrySettings;
use url::Url;

use crate::redis_cluster::RedisCluster;
use crate::server::TestServer;

/// Where the test dependencies are; override with `MALL_TEST_DATABASE_URL`,
/// `MALL_TEST_REDIS_URL` and `MALL_TEST_AMQP_URL` (read, never written). `MALL_TEST_REDIS=cluster`
/// puts the services on this test binary's own Redis Cluster instead ([`RedisCluster::shared`]).
#[derive(Debug, Clone)]
pub struct Infra {
    /// The test database (created if missing).
    pub database_url: Url,
    /// Redis.
    pub redis_url: Url,
    /// `MALL_REDIS_CLUSTER_NODES` when the tests run on a Redis Cluster.
    pub redis_cluster: Option<String>,
    /// RabbitMQ.
    pub amqp_url: Url,
}

impl Infra {
    /// The test dependency locations.
    pub fn get() -> Self {
        let var = |name: &str, default: &str| {
            let raw = std::env::var(name).unwrap_or_else(|_| default.to_owned());
            Url::parse(&raw).unwrap_or_else(|e| panic!("{name}={raw}: {e}"))
        };
        Self {
            database_url: var(
                "MALL_TEST_DATABASE_URL",
                "postgres://postgres:postgres@127.0.0.1:5432/mall_test?sslmode=disable",
            ),
            redis_url: var("MALL_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
            redis_cluster: None,
            amqp_url: var("MALL_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        }
    }
}

/// How old a leftover must be before a sweep removes it.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// One test's isolated slice of the shared dependencies.
pub struct TestEnv {
    id: String,
    infra: Infra,
    amqp: Mutex<Vec<Amqp>>,
}

impl TestEnv {
    /// A fresh env; creates the test database if needed and sweeps stale leftovers once.
    pub async fn new() -> Self {
        let cluster = if std::env::var("MALL_TEST_REDIS").is_ok_and(|v| v == "cluster") {
            Some(RedisCluster::shared().await.seeds())
        } else {
            None
        };
        Self::with_redis_cluster(cluster).await
    }

    /// A fresh env whose services use `cluster` (a test that breaks its own cluster).
    pub async fn on_cluster(cluster: &RedisCluster) -> Self {
        Self::with_redis_cluster(Some(cluster.seeds())).await
    }

    async fn with_redis_cluster(seeds: Option<String>) -> Self {
        let mut infra = Infra::get();
        infra.redis_cluster = seeds;
        ensure_database(&infra.database_url).await;
        static SWEEP: Once = Once::new();
        SWEEP.call_once(|| {
            let infra = infra.clone();
            // Off the test's path: a sweep never delays or fails a test.
            std::thread::spawn(move || block_on(sweep_stale(infra)));
        });
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let rand = &uuid::Uuid::new_v4().simple().to_string()[..8];
        Self {
            id: format!("mt{secs}_{rand}"),
            infra,
            amqp: Mutex::new(Vec::new()),
        }
    }

    /// This env's id (the prefix of everything it creates).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The dependency locations.
    pub fn infra(&self) -> &Infra {
        &self.infra
    }

    /// Settings for a service of this env: port 0, the env's schema, prefixes and test
    /// dependencies, a short shutdown grace.
    pub fn platform_settings(&self, defaults: &ServiceDefaults) -> PlatformSettings {
        let vars = Vars::from_pairs([
            ("MALL_HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("MALL_DATABASE_URL", self.infra.database_url.to_string()),
            ("MALL_DATABASE_SCHEMA", format!("{}_{}", self.id, defaults.schema)),
            ("MALL_DATABASE_MAX_CONNECTIONS", "8".to_owned()),
            ("MALL_REDIS_URL", self.infra.redis_url.to_string()),
            (
                "MALL_REDIS_CLUSTER_NODES",
                self.infra.redis_cluster.clone().unwrap_or_default(),
            ),
            ("MALL_REDIS_PREFIX", format!("{}:mall:", self.id)),
            ("MALL_AMQP_URL", self.infra.amqp_url.to_string()),
            ("MALL_AMQP_PREFIX", format!("{}.", self.id)),
            ("MALL_SHUTDOWN_TIMEOUT", "5s".to_owned()),
        ]);
        PlatformSettings::from_vars(&vars, defaults).expect("test settings are valid")
    }

    /// `S`'s settings from `vars` over its defaults, on this env's platform (isolated schema,
    /// prefixes, port 0) and with test-captured telemetry.
    pub fn settings<S: Service>(&self, vars: &[(&str, &str)]) -> S::Settings {
        let mut settings = S::settings(&Vars::from_pairs(vars.iter().copied())).expect("valid test settings");
        let (platform, telemetry) = S::platform(&mut settings);
        *platform = self.platform_settings(&S::DEFAULTS);
        *telemetry = TelemetrySettings::local(S::BINARY);
        settings
    }

    /// Builds and starts an `S` with [`TestEnv::settings`], waiting until it is ready.
    pub async fn spawn<S: Service>(&self, vars: &[(&str, &str)]) -> TestServer {
        self.spawn_with::<S>(vars, |_| {}).await
    }

    /// [`TestEnv::spawn`], with `tweak` changing the settings last (a proxy in front of a
    /// dependency, a changed URL).
    pub async fn spawn_with<S: Service>(
        &self,
        vars: &[(&str, &str)],
        tweak: impl FnOnce(&mut S::Settings),
    ) -> TestServer {
        self.start(self.build::<S>(vars, tweak).await).await
    }

    /// Builds an `S` (not started): for tests of a service whose dependency is down.
    pub async fn build<S: Service>(
        &self,
        vars: &[(&str, &str)],
        tweak: impl FnOnce(&mut S::Settings),
    ) -> Server {
        let mut settings = self.settings::<S>(vars);
        tweak(&mut settings);
        S::build(settings)
            .await
            .unwrap_or_else(|e| panic!("{} builds: {e:#}", S::BINARY))
            .into_server()
    }

    /// Runs `server` in this process and waits until it is ready (30 s at most).
    pub async fn start(&self, server: Server) -> TestServer {
        let app = self.start_unready(server);
        app.wait_ready().await;
        app
    }

    /// Runs `server` without waiting for readiness (tests of a dependency that is down).
    pub fn start_unready(&self, server: Server) -> TestServer {
        if let Some(amqp) = server.platform().amqp() {
            self.amqp.lock().expect("amqp list").push(amqp.clone());
        }
        TestServer::spawn(server)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let id = self.id.clone();
        let infra = self.infra.clone();
        let amqp = std::mem::take(&mut *self.amqp.lock().expect("amqp list"));
        // Drop may run inside a runtime, so the cleanup gets a runtime of its own.
        let cleanup = std::thread::spawn(move || block_on(remove_env(infra, id, amqp)));
        let _ = cleanup.join();
    }
}

fn block_on<F: Future<Output = ()>>(fut: F) {
    // Multi-thread: lapin needs a runtime whose reactor runs while its own thread waits on it.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("cleanup runtime")
        .block_on(fut);
}

async fn ensure_database(url: &Url) {
    use sqlx::Connection;
    if sqlx::PgConnection::connect(url.as_str()).await.is_ok() {
        return;
    }
    let name = url.path().trim_start_matches('/').to_owned();
    let mut admin = url.clone();
    admin.set_path("/postgres");
    let mut conn = sqlx::PgConnection::connect(admin.as_str())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach Postgres at {}: {e}",
                mall_common::config::redact_url(url)
            )
        });
    // Several test processes may race here; "already exists" is success.
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await;
}

async fn remove_env(infra: Infra, id: String, amqp: Vec<Amqp>) {
    drop_schemas(&infra, &format!("{id}\\_%")).await;
    // A cluster's keys go with the test binary's cluster.
    if infra.redis_cluster.is_none() {
        delete_keys(&infra, &format!("{id}:*")).await;
    }
    for handle in amqp {
        if let Err(e) = handle.delete_topology(&infra.amqp_url).await {
            tracing::warn!(error = %e, "test cleanup: could not delete AMQP topology");
        }
    }
}

async fn drop_schemas(infra: &Infra, like: &str) {
    use sqlx::Connection;
    let Ok(mut conn) = sqlx::PgConnection::connect(infra.database_url.as_str()).await else {
        return;
    };
    let schemas: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1")
            .bind(like)
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
    for schema in schemas {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(&mut conn)
        .await;
    }
}

async fn delete_keys(infra: &Infra, pattern: &str) {
    use mall_common::redis::client as redis;
    let Ok(client) = redis::Client::open(infra.redis_url.as_str()) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)): Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
        else {
            return;
        };
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

fn is_stale(id_like: &str, now: u64) -> bool {
    // "mt<secs>_..." -> secs
    id_like
        .strip_prefix("mt")
        .and_then(|rest| rest.split('_').next())
        .and_then(|secs| secs.parse::<u64>().ok())
        .is_some_and(|secs| now.saturating_sub(secs) > STALE_AFTER.as_secs())
}

async fn sweep_stale(infra: Infra) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(infra.database_url.as_str()).await {
        let schemas: Vec<String> =
            sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'mt%'")
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
        for schema in schemas.into_iter().filter(|s| is_stale(s, now)) {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
            )))
            .execute(&mut conn)
            .await;
        }
    }
    // Stale Redis prefixes: every key of a stale env starts with its id.
    use mall_common::redis::client as redis;
    if let Ok(client) = redis::Client::open(infra.redis_url.as_str())
        && let Ok(mut conn) = client.get_multiplexed_async_connection().await
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("mt*")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        let stale: Vec<&String> = keys.iter().filter(|k| is_stale(k, now)).collect();
        if !stale.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&stale).query_async(&mut conn).await;
        }
    }
    sweep_stale_amqp(&infra, now).await;
}

/// RabbitMQ offers no listing over AMQP, so stale exchanges and queues are listed with
/// `rabbitmqctl` when it is on this machine (it is wherever the broker was installed here), and
/// deleted over AMQP.
async fn sweep_stale_amqp(infra: &Infra, now: u64) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let list = |what: &str| -> Vec<String> {
        std::process::Command::new("rabbitmqctl")
            .args(["-q", what, "name"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(|l| l.trim().to_owned())
                    .filter(|n| is_stale(n, now))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (queues, exchanges) = (list("list_queues"), list("list_exchanges"));
    if queues.is_empty() && exchanges.is_empty() {
        return;
    }
    let Ok(conn) =
        lapin::Connection::connect(infra.amqp_url.as_str(), lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    let Ok(channel) = conn.create_channel().await else {
        return;
    };
    for queue in queues {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in exchanges {
        let _ = channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "swept".into()).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_old_ids_are_stale() {
        assert!(super::is_stale("mt100_abc_product", 100 + 3601));
        assert!(!super::is_stale("mt100_abc_product", 100 + 10));
        assert!(!super::is_stale("mall:product:1", 1_000_000));
        assert!(super::is_stale("mt100_abc:mall:x", 100 + 7200));
    }
}
