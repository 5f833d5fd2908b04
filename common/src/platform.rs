//! A service's platform: its settings, the dependencies it declared, their readiness checks and
//! the background tasks that keep them (migrations, script loading, the AMQP connection).
//!
//! A service says what it needs ([`Needs`]) and gets one [`Platform`] back. Nothing here blocks
//! on a dependency that is down: pools are lazy, and what must happen once a dependency answers
//! (migrations, loading scripts, declaring topology) is retried in the background while
//! `/readyz` reports it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod settings;

pub use settings::*;

use crate::amqp::{Amqp, Topology};
use crate::db::Db;
use crate::health::Readiness;
use crate::redis::{LuaScript, Redis, RedisSettings, ScriptLoadError};

/// The dependencies a service declares.
#[derive(Default)]
pub struct Needs {
    /// Postgres, with the service's own migrations (platform ones are added).
    pub postgres: Option<&'static Migrator>,
    /// Redis, with the scripts to load at start-up.
    pub redis: Option<Vec<&'static LuaScript>>,
    /// RabbitMQ, with the topology to declare on every connect.
    pub amqp: Option<Topology>,
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A pool could not be created from its settings.
    #[error("{0}")]
    Setup(String),
    /// A Lua script is broken.
    #[error(transparent)]
    Script(#[from] ScriptLoadError),
}

/// Connects Redis lazily, loads the scripts (a broken one stops start-up; an unreachable Redis
/// gets them when it answers) and adds its readiness check.
async fn start_redis(
    settings: &RedisSettings,
    scripts: Vec<&'static LuaScript>,
    readiness: &mut Readiness,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<Redis, StartError> {
    let redis =
        Redis::connect_lazy(settings).map_err(|e| StartError::Setup(format!("MALL_REDIS_URL: {e}")))?;
    let loaded = Arc::new(AtomicBool::new(false));
    let mut all: Vec<&'static LuaScript> = crate::redis::lock::scripts().to_vec();
    all.extend(scripts);
    match LuaScript::load_all(&redis, &all).await {
        Ok(()) => loaded.store(true, Ordering::Release),
        Err(e @ ScriptLoadError::Broken { .. }) => return Err(e.into()),
        Err(ScriptLoadError::Unreachable(e)) => {
            tracing::warn!(error = %e, "redis unreachable; scripts will load when it answers");
            tasks.spawn(load_scripts_later(
                redis.clone(),
                all,
                loaded.clone(),
                cancel.clone(),
            ));
        }
    }
    let check = redis.clone();
    readiness.add("redis", move || {
        let redis = check.clone();
        let loaded = loaded.clone();
        async move {
            redis.check().await?;
            if loaded.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("lua scripts not loaded yet".into())
            }
        }
    });
    Ok(redis)
}

/// A running service's dependencies and background work.
pub struct Platform {
    service: &'static str,
    settings: PlatformSettings,
    db: Option<Db>,
    redis: Option<Redis>,
    amqp: Option<Amqp>,
    readiness: Readiness,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Platform {
    /// Creates the declared dependencies and starts their background work.
    pub async fn start(
        service: &'static str,
        settings: PlatformSettings,
        needs: Needs,
    ) -> Result<Self, StartError> {
        // Before anything takes a metric handle: a handle taken while no recorder is installed
        // counts into nothing, for the life of the process (the recorder was once installed
        // only when the health routes were built, after the flash sale had taken its handles).
        crate::health::prometheus();
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut readiness = Readiness::default();

        let db = match needs.postgres {
            None => None,
            Some(migrator) => {
                let db = Db::connect_lazy(&settings.database, &format!("mall-{service}"))
                    .map_err(|e| StartError::Setup(format!("MALL_DATABASE_URL: {e}")))?;
                tasks.spawn(db.spawn_migrations(migrator, cancel.clone()));
                let check = db.clone();
                readiness.add("postgres", move || {
                    let db = check.clone();
                    async move { db.check().await }
                });
                Some(db)
            }
        };

        let redis = match needs.redis {
            None => None,
            Some(scripts) => {
                Some(start_redis(&settings.redis, scripts, &mut readiness, &tasks, &cancel).await?)
            }
        };

        let amqp = match needs.amqp {
            None => None,
            Some(topology) => {
                let amqp = Amqp::new(settings.amqp.clone(), &format!("mall-{service}"), topology);
                tasks.spawn(amqp.clone().run(cancel.clone()));
                let check = amqp.clone();
                readiness.add("rabbitmq", move || {
                    let amqp = check.clone();
                    async move { amqp.check().await }
                });
                Some(amqp)
            }
        };

        Ok(Self {
            service,
            settings,
            db,
            redis,
            amqp,
            readiness,
            cancel,
            tasks,
        })
    }

    /// The service's short name.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The settings.
    pub fn settings(&self) -> &PlatformSettings {
        &self.settings
    }

    /// Postgres, if declared.
    pub fn db(&self) -> Option<&Db> {
        self.db.as_ref()
    }

    /// Redis, if declared.
    pub fn redis(&self) -> Option<&Redis> {
        self.redis.as_ref()
    }

    /// RabbitMQ, if declared.
    pub fn amqp(&self) -> Option<&Amqp> {
        self.amqp.as_ref()
    }

    /// The readiness checks; a service may add its own before serving.
    pub fn readiness_mut(&mut self) -> &mut Readiness {
        &mut self.readiness
    }

    /// The readiness checks.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Cancelled when shutdown starts; background loops select on it.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Tracks background tasks so shutdown can wait for them to finish their current item.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }
}

async fn load_scripts_later(
    redis: Redis,
    scripts: Vec<&'static LuaScript>,
    loaded: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        match LuaScript::load_all(&redis, &scripts).await {
            Ok(()) => {
                tracing::info!("lua scripts loaded");
                loaded.store(true, Ordering::Release);
                return;
            }
            Err(ScriptLoadError::Broken { name, error }) => {
                // Stays unready: a broken script must never serve traffic.
                tracing::error!(script = name, %error, "lua script does not compile");
                return;
            }
            Err(ScriptLoadError::Unreachable(_)) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(3));
    }
}
