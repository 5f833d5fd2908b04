//! Settings of mall-product.
//!
//! Every variable of [`PlatformSettings`] and [`TelemetrySettings`] applies (see
//! `docs/configuration.md`); the defaults are port 8081 and schema `product`. The cache's own
//! variables are listed on [`CacheSettings`].

use std::time::Duration;

use mall_common::config::{ConfigError, Vars};
use mall_common::platform::{HttpThreads, PlatformSettings, ServiceDefaults};
use mall_common::telemetry::TelemetrySettings;

use crate::store::CacheSettings;

/// Name, port and schema of this service.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "product",
    port: 8081,
    schema: "product",
    http_threads: HttpThreads::Shared,
};

/// Everything mall-product reads at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// HTTP, Postgres, Redis and RabbitMQ.
    pub platform: PlatformSettings,
    /// Logs and trace export.
    pub telemetry: TelemetrySettings,
    /// The layered cache.
    pub cache: CacheSettings,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::from_env())
    }

    /// Reads `vars` over the defaults.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let jitter: f64 = vars.parse("MALL_PRODUCT_L2_JITTER", 0.2)?;
        if !(0.0..0.9).contains(&jitter) {
            return Err(ConfigError::new(
                "MALL_PRODUCT_L2_JITTER",
                &jitter.to_string(),
                "expected 0 <= jitter < 0.9",
            ));
        }
        let db_concurrency: usize = vars.parse("MALL_PRODUCT_DB_CONCURRENCY", 8)?;
        if db_concurrency == 0 {
            return Err(ConfigError::new(
                "MALL_PRODUCT_DB_CONCURRENCY",
                "0",
                "must be at least 1",
            ));
        }
        Ok(Self {
            platform: PlatformSettings::from_vars(vars, &DEFAULTS)?,
            telemetry: TelemetrySettings::from_vars(vars, "mall-product")?,
            cache: CacheSettings {
                l1_ttl: vars.duration("MALL_PRODUCT_L1_TTL", Duration::from_secs(2))?,
                l1_capacity: vars.parse("MALL_PRODUCT_L1_CAPACITY", 100_000)?,
                l2_ttl: vars.duration("MALL_PRODUCT_L2_TTL", Duration::from_secs(300))?,
                l2_jitter: jitter,
                negative_ttl: vars.duration("MALL_PRODUCT_NEGATIVE_TTL", Duration::from_secs(30))?,
                lock_lease: vars.duration("MALL_PRODUCT_LOCK_LEASE", Duration::from_secs(3))?,
                lock_wait: vars.duration("MALL_PRODUCT_LOCK_WAIT", Duration::from_secs(1))?,
                bloom_capacity: vars.parse("MALL_PRODUCT_BLOOM_CAPACITY", 1_000_000)?,
                db_concurrency,
            },
        })
    }
}
