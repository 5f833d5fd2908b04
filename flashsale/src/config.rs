//! Settings of mall-flashsale.
//!
//! Every variable of [`PlatformSettings`] and [`TelemetrySettings`] applies (see
//! `docs/configuration.md`); the defaults are port 8084 and schema `flashsale`.

use std::time::Duration;

use mall_common::config::{ConfigError, Secret, Vars};
use mall_common::platform::{HttpThreads, PlatformSettings, ServiceDefaults};
use mall_common::telemetry::TelemetrySettings;
use url::Url;

use crate::store::replica::ReplicaAcks;

/// Name, port and schema of this service.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "flashsale",
    port: 8084,
    schema: "flashsale",
    http_threads: HttpThreads::PerCore,
};

/// The development token secret; a warning is logged while it is in use.
pub const DEV_TOKEN_SECRET: &str = "mall-dev-flashsale-token-secret-change-me";

/// The sale's own settings.
#[derive(Debug, Clone)]
pub struct FlashSettings {
    /// `MALL_INVENTORY_URLS` (`http://127.0.0.1:8082`): inventory instances (session
    /// reservations).
    pub inventory_urls: Vec<Url>,
    /// `MALL_PEER_TIMEOUT` (3s): one call to inventory.
    pub peer_timeout: Duration,
    /// `MALL_FLASHSALE_TOKEN_SECRET`: the HMAC key of purchase tokens (the same in every
    /// flashsale instance, never known to clients).
    pub token_secret: Secret,
    /// `MALL_FLASHSALE_TOKEN_TTL` (5m): how long a purchase token is valid (never past the
    /// session's end).
    pub token_ttl: Duration,
    /// `MALL_FLASHSALE_WARM_LEAD` (10m): how long before its start a session is loaded into
    /// Redis.
    pub warm_lead: Duration,
    /// `MALL_FLASHSALE_KEY_TAIL` (2h): how long a session's Redis keys outlive its end (units
    /// of unpaid orders come back during this time).
    pub key_tail: Duration,
    /// `MALL_FLASHSALE_SETTLE_AFTER` (2m): how long after a session's end its unsold units go
    /// back to inventory (admissions still being handed off are waited for as well).
    pub settle_after: Duration,
    /// `MALL_FLASHSALE_JOB_INTERVAL` (500ms): how often the load/settle job and the refresh of the
    /// sessions on sale run.
    pub job_interval: Duration,
    /// `MALL_FLASHSALE_HANDOFF_INTERVAL` (20ms): how often the hand-off (the outbox relay) looks
    /// for newly booked admissions when it found none.
    pub handoff_interval: Duration,
    /// `MALL_FLASHSALE_MAX_IN_FLIGHT` (256): purchases handled at once by one instance; the
    /// rest are shed at once with 503 `overloaded`.
    pub max_in_flight: usize,
    /// `MALL_FLASHSALE_SOLD_OUT_TTL` (1s): how long an instance answers `sold_out` from memory
    /// before it re-reads the stock in Redis, in the background (units of cancelled orders come
    /// back).
    pub sold_out_ttl: Duration,
    /// `MALL_FLASHSALE_BREAKER_FAILURES` (5): consecutive Redis failures that open the breaker.
    pub breaker_failures: u32,
    /// `MALL_FLASHSALE_BREAKER_OPEN` (2s): how long the open breaker answers 503 before it
    /// lets one probe through.
    pub breaker_open: Duration,
    /// `MALL_FLASHSALE_DELIVERY_LIMIT` (5): deliveries of an order event before it is
    /// dead-lettered.
    pub delivery_limit: u32,
    /// `MALL_FLASHSALE_REPLICA_ACKS`: replicas that must hold an admission before it is
    /// promised (see `store::replica`); unset, 1 on a Redis Cluster and 0 on one node (decided
    /// at start-up, see [`FlashSettings::replica_acks`]).
    pub replica_acks: Option<u32>,
    /// `MALL_FLASHSALE_REPLICA_WAIT` (50ms): the longest wait for them.
    pub replica_wait: Duration,
}

/// Everything mall-flashsale reads at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// HTTP, Postgres, Redis and RabbitMQ.
    pub platform: PlatformSettings,
    /// Logs and trace export.
    pub telemetry: TelemetrySettings,
    /// The sale.
    pub flash: FlashSettings,
}

impl FlashSettings {
    /// What an admission waits for on `redis`.
    pub fn replica_acks(&self, redis: &mall_common::redis::Redis) -> ReplicaAcks {
        ReplicaAcks {
            replicas: self.replica_acks.unwrap_or(u32::from(redis.is_cluster())),
            wait: self.replica_wait,
        }
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::from_env())
    }

    /// Reads `vars` over the defaults.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let inventory_urls =
            vars.instance_urls("MALL_INVENTORY_URLS", "http://127.0.0.1:8082", &["http", "https"])?;
        let positive = |name: &str, d: Duration| -> Result<Duration, ConfigError> {
            if d.is_zero() {
                return Err(ConfigError::new(name, "0s", "must be more than zero"));
            }
            Ok(d)
        };
        let max_in_flight: usize = vars.parse("MALL_FLASHSALE_MAX_IN_FLIGHT", 256)?;
        if max_in_flight == 0 {
            return Err(ConfigError::new(
                "MALL_FLASHSALE_MAX_IN_FLIGHT",
                "0",
                "must be at least 1",
            ));
        }
        let breaker_failures: u32 = vars.parse("MALL_FLASHSALE_BREAKER_FAILURES", 5)?;
        if breaker_failures == 0 {
            return Err(ConfigError::new(
                "MALL_FLASHSALE_BREAKER_FAILURES",
                "0",
                "must be at least 1",
            ));
        }
        let delivery_limit: u32 = vars.parse("MALL_FLASHSALE_DELIVERY_LIMIT", 5)?;
        if delivery_limit == 0 {
            return Err(ConfigError::new(
                "MALL_FLASHSALE_DELIVERY_LIMIT",
                "0",
                "must be at least 1",
            ));
        }
        // Unset: decided at start-up by the Redis in use.
        let replica_acks = vars
            .get("MALL_FLASHSALE_REPLICA_ACKS")
            .map(|_| vars.parse("MALL_FLASHSALE_REPLICA_ACKS", 0))
            .transpose()?;
        let replica_wait = positive(
            "MALL_FLASHSALE_REPLICA_WAIT",
            vars.duration("MALL_FLASHSALE_REPLICA_WAIT", Duration::from_millis(50))?,
        )?;
        Ok(Self {
            platform: PlatformSettings::from_vars(vars, &DEFAULTS)?,
            telemetry: TelemetrySettings::from_vars(vars, "mall-flashsale")?,
            flash: FlashSettings {
                inventory_urls,
                peer_timeout: vars.duration("MALL_PEER_TIMEOUT", Duration::from_secs(3))?,
                token_secret: vars.secret("MALL_FLASHSALE_TOKEN_SECRET", DEV_TOKEN_SECRET),
                token_ttl: positive(
                    "MALL_FLASHSALE_TOKEN_TTL",
                    vars.duration("MALL_FLASHSALE_TOKEN_TTL", Duration::from_secs(300))?,
                )?,
                warm_lead: vars.duration("MALL_FLASHSALE_WARM_LEAD", Duration::from_secs(600))?,
                key_tail: positive(
                    "MALL_FLASHSALE_KEY_TAIL",
                    vars.duration("MALL_FLASHSALE_KEY_TAIL", Duration::from_secs(7200))?,
                )?,
                settle_after: vars.duration("MALL_FLASHSALE_SETTLE_AFTER", Duration::from_secs(120))?,
                job_interval: positive(
                    "MALL_FLASHSALE_JOB_INTERVAL",
                    vars.duration("MALL_FLASHSALE_JOB_INTERVAL", Duration::from_millis(500))?,
                )?,
                handoff_interval: positive(
                    "MALL_FLASHSALE_HANDOFF_INTERVAL",
                    vars.duration("MALL_FLASHSALE_HANDOFF_INTERVAL", Duration::from_millis(20))?,
                )?,
                max_in_flight,
                sold_out_ttl: vars.duration("MALL_FLASHSALE_SOLD_OUT_TTL", Duration::from_secs(1))?,
                breaker_failures,
                breaker_open: positive(
                    "MALL_FLASHSALE_BREAKER_OPEN",
                    vars.duration("MALL_FLASHSALE_BREAKER_OPEN", Duration::from_secs(2))?,
                )?,
                delivery_limit,
                replica_acks,
                replica_wait,
            },
        })
    }
}
