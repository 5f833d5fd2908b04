//! Settings of mall-order.
//!
//! Every variable of [`PlatformSettings`] and [`TelemetrySettings`] applies (see
//! `docs/configuration.md`); the defaults are port 8083 and schema `orders`. Its own variables are
//! listed on [`OrderSettings`].

use std::time::Duration;

use mall_common::config::{ConfigError, Secret, Vars};
use mall_common::platform::{HttpThreads, PlatformSettings, ServiceDefaults};
use mall_common::telemetry::TelemetrySettings;
use url::Url;

/// Name, port and schema of this service.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "order",
    port: 8083,
    schema: "orders",
    http_threads: HttpThreads::Shared,
};

/// The development payment secret.
pub const DEV_PAYMENT_SECRET: &str = "mall-dev-payment-secret-change-me";

/// The order service's own settings.
#[derive(Debug, Clone)]
pub struct OrderSettings {
    /// `MALL_PRODUCT_URLS` (`http://127.0.0.1:8081`): product instances.
    pub product_urls: Vec<Url>,
    /// `MALL_INVENTORY_URLS` (`http://127.0.0.1:8082`): inventory instances.
    pub inventory_urls: Vec<Url>,
    /// `MALL_ORDER_TTL` (15m): the payment window.
    pub order_ttl: Duration,
    /// `MALL_ORDER_RESERVATION_GRACE` (10m): how much longer the stock reservation lives.
    pub reservation_grace: Duration,
    /// `MALL_PAYMENT_SECRET`: the HMAC key of payment callbacks.
    pub payment_secret: Secret,
    /// `MALL_ORDER_SWEEP_INTERVAL` (5s): how often expired unpaid orders are looked for.
    pub sweep_interval: Duration,
    /// `MALL_OUTBOX_INTERVAL` (200ms): how often the outbox relay looks for new events.
    pub outbox_interval: Duration,
    /// `MALL_ORDER_DELIVERY_LIMIT` (5): deliveries of a timeout before it is dead-lettered.
    pub delivery_limit: u32,
    /// `MALL_PEER_TIMEOUT` (3s): one call to product or inventory.
    pub peer_timeout: Duration,
}

/// Everything mall-order reads at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// HTTP, Postgres, Redis and RabbitMQ.
    pub platform: PlatformSettings,
    /// Logs and trace export.
    pub telemetry: TelemetrySettings,
    /// Checkout, payments, timeouts.
    pub order: OrderSettings,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::from_env())
    }

    /// Reads `vars` over the defaults.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let urls = |name: &str, default: &str| vars.instance_urls(name, default, &["http", "https"]);
        let order_ttl = vars.duration("MALL_ORDER_TTL", Duration::from_secs(15 * 60))?;
        if order_ttl.as_secs() == 0 {
            return Err(ConfigError::new("MALL_ORDER_TTL", "0s", "at least one second"));
        }
        let delivery_limit: u32 = vars.parse("MALL_ORDER_DELIVERY_LIMIT", 5)?;
        if delivery_limit < 1 {
            return Err(ConfigError::new(
                "MALL_ORDER_DELIVERY_LIMIT",
                "0",
                "must be at least 1",
            ));
        }
        Ok(Self {
            platform: PlatformSettings::from_vars(vars, &DEFAULTS)?,
            telemetry: TelemetrySettings::from_vars(vars, "mall-order")?,
            order: OrderSettings {
                product_urls: urls("MALL_PRODUCT_URLS", "http://127.0.0.1:8081")?,
                inventory_urls: urls("MALL_INVENTORY_URLS", "http://127.0.0.1:8082")?,
                order_ttl,
                reservation_grace: vars.duration("MALL_ORDER_RESERVATION_GRACE", Duration::from_secs(600))?,
                payment_secret: vars.secret("MALL_PAYMENT_SECRET", DEV_PAYMENT_SECRET),
                sweep_interval: vars.duration("MALL_ORDER_SWEEP_INTERVAL", Duration::from_secs(5))?,
                outbox_interval: vars.duration("MALL_OUTBOX_INTERVAL", Duration::from_millis(200))?,
                delivery_limit,
                peer_timeout: vars.duration("MALL_PEER_TIMEOUT", Duration::from_secs(3))?,
            },
        })
    }
}
