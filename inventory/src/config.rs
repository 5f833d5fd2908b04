//! Settings of mall-inventory.
//!
//! Every variable of [`PlatformSettings`] and [`TelemetrySettings`] applies (see
//! `docs/configuration.md`); the defaults are port 8082 and schema `inventory`. Its own variables:
//! `MALL_INVENTORY_SWEEP_INTERVAL` (10s), `MALL_INVENTORY_SWEEP_BATCH` (100) and
//! `MALL_INVENTORY_DELIVERY_LIMIT` (5 deliveries of an order event before it is dead-lettered),
//! `MALL_PRODUCT_URLS` (`http://127.0.0.1:8081`: product instances, asked whether a SKU exists
//! before its first stock is received) and `MALL_PEER_TIMEOUT` (2s: one such call).

use std::time::Duration;

use mall_common::config::{ConfigError, Vars};
use mall_common::platform::{HttpThreads, PlatformSettings, ServiceDefaults};
use mall_common::telemetry::TelemetrySettings;
use url::Url;

/// Name, port and schema of this service.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "inventory",
    port: 8082,
    schema: "inventory",
    http_threads: HttpThreads::Shared,
};

/// Everything mall-inventory reads at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// HTTP, Postgres and RabbitMQ.
    pub platform: PlatformSettings,
    /// Logs and trace export.
    pub telemetry: TelemetrySettings,
    /// How often expired reservations are released.
    pub sweep_interval: Duration,
    /// How many per sweep transaction.
    pub sweep_batch: i64,
    /// Deliveries of one order event before it goes to the dead-letter queue.
    pub delivery_limit: u32,
    /// Product instances.
    pub product_urls: Vec<Url>,
    /// One call to product; inside the gateway's 3 s per-try timeout.
    pub peer_timeout: Duration,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::from_env())
    }

    /// Reads `vars` over the defaults.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let sweep_batch: i64 = vars.parse("MALL_INVENTORY_SWEEP_BATCH", 100)?;
        if sweep_batch < 1 {
            return Err(ConfigError::new(
                "MALL_INVENTORY_SWEEP_BATCH",
                &sweep_batch.to_string(),
                "must be at least 1",
            ));
        }
        let delivery_limit: u32 = vars.parse("MALL_INVENTORY_DELIVERY_LIMIT", 5)?;
        if delivery_limit < 1 {
            return Err(ConfigError::new(
                "MALL_INVENTORY_DELIVERY_LIMIT",
                "0",
                "must be at least 1",
            ));
        }
        let product_urls =
            vars.instance_urls("MALL_PRODUCT_URLS", "http://127.0.0.1:8081", &["http", "https"])?;
        Ok(Self {
            platform: PlatformSettings::from_vars(vars, &DEFAULTS)?,
            telemetry: TelemetrySettings::from_vars(vars, "mall-inventory")?,
            sweep_interval: vars.duration("MALL_INVENTORY_SWEEP_INTERVAL", Duration::from_secs(10))?,
            sweep_batch,
            delivery_limit,
            product_urls,
            peer_timeout: vars.duration("MALL_PEER_TIMEOUT", Duration::from_secs(2))?,
        })
    }
}
