//! Postgres: one lazy pool per service, pinned to the service's own schema, and the migration
//! runner.
//!
//! The pool never connects at start-up, so a service starts while Postgres is down; `/readyz`
//! says so. Every connection's `search_path` is the service's schema (a startup parameter, no
//! extra round trip), so a test can give each run its own schema and unqualified SQL lands there.
//! Migrations run in the background until they succeed: readiness stays down until they have.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::config::ConfigError;

/// Postgres settings (`MALL_DATABASE_*`).
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `MALL_DATABASE_URL`.
    pub url: Url,
    /// `MALL_DATABASE_SCHEMA`: the schema this service owns.
    pub schema: String,
    /// `MALL_DATABASE_MAX_CONNECTIONS`.
    pub max_connections: u32,
    /// `MALL_DATABASE_ACQUIRE_TIMEOUT`: how long a query waits for a connection.
    pub acquire_timeout: Duration,
    /// `MALL_DATABASE_IDLE_TIMEOUT`: how long an unused connection is kept open.
    pub idle_timeout: Duration,
}

/// Whether a database error means Postgres cannot be had right now (no free connection within
/// the acquire timeout, or the server unreachable): a 503 `unavailable` with `Retry-After`,
/// the real reason, rather than a 500 for a fault of the service.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_)
    )
}

/// Checks that a schema name is a plain lowercase identifier (it is interpolated into DDL).
pub fn validate_schema(var: &str, schema: &str) -> Result<(), ConfigError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            var,
            schema,
            "expected a lowercase identifier of letters, digits and underscores",
        ))
    }
}

/// Tables every database-owning service has: the transactional outbox and the consumer inbox.
pub static PLATFORM_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug)]
enum MigrationState {
    Pending(Option<String>),
    Done,
}

/// A service's database handle: the pool plus the state of its migrations.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
    schema: String,
    migrations: Arc<Mutex<MigrationState>>,
}

impl Db {
    /// Creates the pool without connecting.
    pub fn connect_lazy(settings: &DatabaseSettings, application_name: &str) -> Result<Self, sqlx::Error> {
        let options = PgConnectOptions::from_str(settings.url.as_str())?
            .application_name(application_name)
            .options([("search_path", settings.schema.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            // No connection held open for nothing: an idle stack holds none.
            .min_connections(0)
            .idle_timeout(settings.idle_timeout)
            .connect_lazy_with(options);
        Ok(Self {
            pool,
            schema: settings.schema.clone(),
            migrations: Arc::new(Mutex::new(MigrationState::Pending(None))),
        })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema this service owns.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Runs the platform migrations plus the service's own into this service's schema
    /// (creating it). Platform versions are below 100; a service numbers its own from 100.
    pub async fn migrate(&self, service: &Migrator) -> Result<(), sqlx::migrate::MigrateError> {
        let mut all: Vec<_> = PLATFORM_MIGRATIONS
            .iter()
            .chain(service.iter())
            .cloned()
            .collect();
        all.sort_by_key(|m| m.version);
        let mut migrator = Migrator {
            migrations: all.into(),
            ..Migrator::DEFAULT
        };
        migrator.create_schema(self.schema.clone());
        // Qualified, so the bookkeeping table can never land in another schema.
        migrator.dangerous_set_table_name(format!("{}._sqlx_migrations", self.schema));
        migrator.run(&self.pool).await?;
        *self.migrations.lock().expect("migration state lock") = MigrationState::Done;
        Ok(())
    }

    /// Retries [`Db::migrate`] in the background with backoff until it succeeds or `cancel`.
    pub fn spawn_migrations(
        &self,
        migrator: &'static Migrator,
        cancel: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let db = self.clone();
        async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                match db.migrate(migrator).await {
                    Ok(()) => {
                        tracing::info!(schema = %db.schema, "migrations applied");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(schema = %db.schema, error = %e, retry_in = ?backoff, "migrations failed");
                        *db.migrations.lock().expect("migration state lock") =
                            MigrationState::Pending(Some(e.to_string()));
                    }
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }

    /// Readiness: migrations applied and `SELECT 1` answers.
    pub async fn check(&self) -> Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        match &*self.migrations.lock().expect("migration state lock") {
            MigrationState::Done => Ok(()),
            MigrationState::Pending(None) => Err("migrations not applied yet".into()),
            MigrationState::Pending(Some(e)) => Err(format!("migrations failed: {e}")),
        }
    }
}
