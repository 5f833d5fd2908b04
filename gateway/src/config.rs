//! Settings of mall-gateway.
//!
//! Every variable of [`PlatformSettings`] and [`TelemetrySettings`] applies (the gateway uses
//! the HTTP and Redis ones; it owns no schema and no queues); the default port is 8080. The
//! gateway's own variables are listed on [`GatewaySettings`] and in `docs/configuration.md`.

use std::time::Duration;

use mall_common::config::{ConfigError, Secret, Vars};
use mall_common::platform::{HttpThreads, PlatformSettings, ServiceDefaults};
use mall_common::telemetry::TelemetrySettings;
use url::Url;

use crate::rate_limit::RateLimitRule;

/// Name and port of the gateway.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "gateway",
    port: 8080,
    schema: "gateway",
    http_threads: HttpThreads::PerCore,
};

/// The development JWT secret; a warning is logged when it is in use.
pub const DEV_JWT_SECRET: &str = "mall-dev-jwt-secret-change-me";
/// The development internal secret (the platform's); a warning is logged when it is in use.
pub use mall_common::platform::DEV_INTERNAL_SECRET;

/// Everything mall-gateway reads at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// HTTP and Redis (the database and broker settings are read but unused).
    pub platform: PlatformSettings,
    /// Logs and trace export.
    pub telemetry: TelemetrySettings,
    /// Routing, resilience, auth and rate limits.
    pub gateway: GatewaySettings,
}

/// The instances of each upstream pool (`MALL_UPSTREAM_*`, comma-separated base URLs).
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// `MALL_UPSTREAM_PRODUCT`, default `http://127.0.0.1:8081`.
    pub product: Vec<Url>,
    /// `MALL_UPSTREAM_INVENTORY`, default `http://127.0.0.1:8082`.
    pub inventory: Vec<Url>,
    /// `MALL_UPSTREAM_ORDER`, default `http://127.0.0.1:8083`.
    pub order: Vec<Url>,
    /// `MALL_UPSTREAM_FLASHSALE`, default `http://127.0.0.1:8084`.
    pub flashsale: Vec<Url>,
}

/// Timeouts, retries and limits per upstream pool.
#[derive(Debug, Clone)]
pub struct Resilience {
    /// `MALL_GW_TRY_TIMEOUT` (3s): one attempt at one instance.
    pub try_timeout: Duration,
    /// `MALL_GW_UPSTREAM_TIMEOUT` (8s): all attempts together (504 `upstream_timeout`).
    pub upstream_timeout: Duration,
    /// `MALL_GW_MAX_RETRIES` (2): extra attempts for a retryable request.
    pub max_retries: u32,
    /// `MALL_GW_RETRY_RATIO` (0.2): retries allowed per request, on top of the floor below.
    pub retry_ratio: f32,
    /// `MALL_GW_RETRY_MIN_PER_SEC` (10): retries always allowed per second.
    pub retry_min_per_sec: u32,
    /// `MALL_GW_MAX_CONCURRENCY` (1024): requests in flight per pool; above it, 503 `overloaded`.
    pub max_concurrency: usize,
}

/// Active health checks and passive ejection.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// `MALL_GW_HEALTH_INTERVAL` (1s).
    pub interval: Duration,
    /// `MALL_GW_HEALTH_TIMEOUT` (500ms).
    pub timeout: Duration,
    /// `MALL_GW_UNHEALTHY_AFTER` (2): consecutive failed checks before leaving rotation.
    pub unhealthy_after: u32,
    /// `MALL_GW_HEALTHY_AFTER` (2): consecutive passed checks before rejoining.
    pub healthy_after: u32,
    /// `MALL_GW_EJECT_AFTER` (3): consecutive failed requests before passive ejection.
    pub eject_after: u32,
}

/// The per-pool circuit breaker.
#[derive(Debug, Clone)]
pub struct BreakerSettings {
    /// `MALL_GW_BREAKER_WINDOW` (50): the last N calls are judged.
    pub window: u32,
    /// `MALL_GW_BREAKER_MIN_CALLS` (20): no verdict on fewer calls.
    pub min_calls: u32,
    /// `MALL_GW_BREAKER_ERROR_RATIO` (0.5): failed share that opens the circuit.
    pub error_ratio: f64,
    /// `MALL_GW_BREAKER_SLOW_RATIO` (0.8): slow share that opens the circuit.
    pub slow_ratio: f64,
    /// `MALL_GW_BREAKER_SLOW_CALL` (2s): a call slower than this is slow.
    pub slow_call: Duration,
    /// `MALL_GW_BREAKER_OPEN` (5s): how long the circuit stays open before probing.
    pub open_for: Duration,
    /// `MALL_GW_BREAKER_PROBES` (3): successful probes that close it again.
    pub probes: u32,
}

/// Token verification and the identity asserted to services.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `MALL_JWT_SECRET`: HS256 key.
    pub jwt_secret: Secret,
    /// `MALL_JWT_PUBLIC_KEY`: path of a PEM RSA public key; when set, tokens must be RS256.
    pub jwt_public_key_pem: Option<String>,
}

/// The gateway's own settings.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Upstream pools.
    pub upstreams: Upstreams,
    /// Timeouts, retries, limits.
    pub resilience: Resilience,
    /// Health checks.
    pub health: HealthSettings,
    /// Circuit breaker.
    pub breaker: BreakerSettings,
    /// Auth.
    pub auth: AuthSettings,
    /// `MALL_GW_RATE_LIMITS`: comma list of `<route prefix or *>:<client|route|cluster>:<N>/s`.
    pub rate_limits: Vec<RateLimitRule>,
    /// `MALL_GW_MAX_HEADER_BYTES` (16384): larger request headers get 431.
    pub max_header_bytes: usize,
    /// `MALL_GW_BODY_TIMEOUT` (5s): how long a request body of up to 64 KiB may take to arrive
    /// (408 `request_timeout` after; it is read before anything goes upstream).
    pub body_timeout: Duration,
}

/// Rate limits when `MALL_GW_RATE_LIMITS` is unset: generous per client, and a cluster-wide
/// ceiling on the flash-sale purchase route.
pub const DEFAULT_RATE_LIMITS: &str = "*:client:1000/s,/api/flashsale/purchase:cluster:5000/s";

fn ratio(vars: &Vars, name: &str, default: f64) -> Result<f64, ConfigError> {
    let v: f64 = vars.parse(name, default)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::new(
            name,
            &v.to_string(),
            "expected a ratio between 0 and 1",
        ))
    }
}

fn at_least_one<T: PartialOrd + From<u8> + ToString>(name: &str, v: T) -> Result<T, ConfigError> {
    if v >= T::from(1) {
        Ok(v)
    } else {
        Err(ConfigError::new(name, &v.to_string(), "must be at least 1"))
    }
}

impl GatewaySettings {
    /// Reads the gateway's variables.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let pool = |name: &str, default: &str| vars.instance_urls(name, default, &["http"]);
        let d = |name: &str, default: Duration| vars.duration(name, default);
        let jwt_public_key_pem = match vars.get("MALL_JWT_PUBLIC_KEY") {
            None => None,
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    "MALL_JWT_PUBLIC_KEY",
                    path,
                    format!("cannot read the PEM file: {e}"),
                )
            })?),
        };
        let rate_limits =
            RateLimitRule::parse_list(vars.get("MALL_GW_RATE_LIMITS").unwrap_or(DEFAULT_RATE_LIMITS))
                .map_err(|e| {
                    ConfigError::new(
                        "MALL_GW_RATE_LIMITS",
                        vars.get("MALL_GW_RATE_LIMITS").unwrap_or(""),
                        e,
                    )
                })?;
        Ok(Self {
            upstreams: Upstreams {
                product: pool("MALL_UPSTREAM_PRODUCT", "http://127.0.0.1:8081")?,
                inventory: pool("MALL_UPSTREAM_INVENTORY", "http://127.0.0.1:8082")?,
                order: pool("MALL_UPSTREAM_ORDER", "http://127.0.0.1:8083")?,
                flashsale: pool("MALL_UPSTREAM_FLASHSALE", "http://127.0.0.1:8084")?,
            },
            resilience: Resilience {
                try_timeout: d("MALL_GW_TRY_TIMEOUT", Duration::from_secs(3))?,
                upstream_timeout: d("MALL_GW_UPSTREAM_TIMEOUT", Duration::from_secs(8))?,
                max_retries: vars.parse("MALL_GW_MAX_RETRIES", 2)?,
                retry_ratio: ratio(vars, "MALL_GW_RETRY_RATIO", 0.2)? as f32,
                retry_min_per_sec: vars.parse("MALL_GW_RETRY_MIN_PER_SEC", 10)?,
                max_concurrency: at_least_one(
                    "MALL_GW_MAX_CONCURRENCY",
                    vars.parse::<u32>("MALL_GW_MAX_CONCURRENCY", 1024)?,
                )? as usize,
            },
            health: HealthSettings {
                interval: d("MALL_GW_HEALTH_INTERVAL", Duration::from_secs(1))?,
                timeout: d("MALL_GW_HEALTH_TIMEOUT", Duration::from_millis(500))?,
                unhealthy_after: at_least_one(
                    "MALL_GW_UNHEALTHY_AFTER",
                    vars.parse("MALL_GW_UNHEALTHY_AFTER", 2u32)?,
                )?,
                healthy_after: at_least_one(
                    "MALL_GW_HEALTHY_AFTER",
                    vars.parse("MALL_GW_HEALTHY_AFTER", 2u32)?,
                )?,
                eject_after: at_least_one("MALL_GW_EJECT_AFTER", vars.parse("MALL_GW_EJECT_AFTER", 3u32)?)?,
            },
            breaker: BreakerSettings {
                window: at_least_one(
                    "MALL_GW_BREAKER_WINDOW",
                    vars.parse("MALL_GW_BREAKER_WINDOW", 50u32)?,
                )?,
                min_calls: at_least_one(
                    "MALL_GW_BREAKER_MIN_CALLS",
                    vars.parse("MALL_GW_BREAKER_MIN_CALLS", 20u32)?,
                )?,
                error_ratio: ratio(vars, "MALL_GW_BREAKER_ERROR_RATIO", 0.5)?,
                slow_ratio: ratio(vars, "MALL_GW_BREAKER_SLOW_RATIO", 0.8)?,
                slow_call: d("MALL_GW_BREAKER_SLOW_CALL", Duration::from_secs(2))?,
                open_for: d("MALL_GW_BREAKER_OPEN", Duration::from_secs(5))?,
                probes: at_least_one(
                    "MALL_GW_BREAKER_PROBES",
                    vars.parse("MALL_GW_BREAKER_PROBES", 3u32)?,
                )?,
            },
            auth: AuthSettings {
                jwt_secret: vars.secret("MALL_JWT_SECRET", DEV_JWT_SECRET),
                jwt_public_key_pem,
            },
            rate_limits,
            max_header_bytes: vars.parse("MALL_GW_MAX_HEADER_BYTES", 16 * 1024)?,
            body_timeout: d("MALL_GW_BODY_TIMEOUT", Duration::from_secs(5))?,
        })
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::from_env())
    }

    /// Reads `vars` over the defaults.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            platform: PlatformSettings::from_vars(vars, &DEFAULTS)?,
            telemetry: TelemetrySettings::from_vars(vars, "mall-gateway")?,
            gateway: GatewaySettings::from_vars(vars)?,
        })
    }
}
