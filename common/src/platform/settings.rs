//! The settings every service shares, from `MALL_*` variables.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use crate::amqp::AmqpSettings;
use crate::config::{ConfigError, Vars};
use crate::db::{DatabaseSettings, validate_schema};
use crate::http::StackSettings;
use crate::redis::RedisSettings;

/// `MALL_DATABASE_MAX_CONNECTIONS` when unset.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 6;

/// Per-service defaults: its name, port and schema (DESIGN.md, "Services, ports, owned state").
#[derive(Debug, Clone, Copy)]
pub struct ServiceDefaults {
    /// Short name: `product`, `order`, ...
    pub name: &'static str,
    /// Default listen port.
    pub port: u16,
    /// Default Postgres schema.
    pub schema: &'static str,
    /// Default of `MALL_HTTP_THREADS`.
    pub http_threads: HttpThreads,
}

/// How the HTTP server uses threads when `MALL_HTTP_THREADS` is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpThreads {
    /// Connections are served on the process's multi-thread runtime, with everything else.
    Shared,
    /// One serving thread per core, each with its own single-threaded runtime.
    PerCore,
}

/// HTTP server settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `MALL_HTTP_ADDR`.
    pub addr: SocketAddr,
    /// `MALL_REQUEST_TIMEOUT`.
    pub request_timeout: Duration,
    /// `MALL_IDLE_TIMEOUT`: a connection that starts no request head for this long is closed
    /// (hyper's header read timeout).
    pub idle_timeout: Duration,
    /// `MALL_BODY_LIMIT` (bytes).
    pub body_limit: usize,
    /// `MALL_SHUTDOWN_TIMEOUT`: grace for in-flight requests and background work at shutdown.
    pub shutdown_timeout: Duration,
    /// `MALL_HTTP_THREADS`: serving threads with a runtime each; 0 serves on the shared runtime.
    pub threads: usize,
}

/// The development internal secret; the gateway warns when it is in use.
pub const DEV_INTERNAL_SECRET: &str = "mall-dev-internal-secret-change-me";

/// Settings every service shares.
#[derive(Debug, Clone)]
pub struct PlatformSettings {
    /// `MALL_INTERNAL_SECRET`: the key of the gateway-signed identity headers (the same in every
    /// process).
    pub internal_secret: crate::config::Secret,
    /// The HTTP server.
    pub http: HttpSettings,
    /// Postgres.
    pub database: DatabaseSettings,
    /// Redis.
    pub redis: RedisSettings,
    /// RabbitMQ.
    pub amqp: AmqpSettings,
}

/// Default URLs: the services of a prepared machine on loopback (no TLS on loopback).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/mall?sslmode=disable";
/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default RabbitMQ URL.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A count read from `name` that must be at least 1.
fn at_least_one<T>(vars: &Vars, name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialEq + From<u8>,
    T::Err: std::fmt::Display,
{
    let n: T = vars.parse(name, default)?;
    if n == T::from(0) {
        return Err(ConfigError::new(name, "0", "must be at least 1"));
    }
    Ok(n)
}

impl PlatformSettings {
    /// Reads the shared `MALL_*` variables over `defaults`.
    pub fn from_vars(vars: &Vars, defaults: &ServiceDefaults) -> Result<Self, ConfigError> {
        let schema = vars.string("MALL_DATABASE_SCHEMA", defaults.schema);
        validate_schema("MALL_DATABASE_SCHEMA", &schema)?;
        let redis_connections = at_least_one(vars, "MALL_REDIS_CONNECTIONS", 2)?;
        // Six per process: the local stack (four services, two instances each) then holds at most
        // 48 of a stock PostgreSQL's 100 connections, leaving room for tools and migrations.
        let max_connections = at_least_one(vars, "MALL_DATABASE_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS)?;
        let idle_timeout = vars.duration("MALL_IDLE_TIMEOUT", Duration::from_secs(30))?;
        if idle_timeout.is_zero() {
            // Zero would close every keep-alive connection the moment it waits for a request.
            return Err(ConfigError::new(
                "MALL_IDLE_TIMEOUT",
                vars.get("MALL_IDLE_TIMEOUT").unwrap_or("0"),
                "must be more than zero",
            ));
        }
        let key_prefix = vars.string("MALL_REDIS_PREFIX", "mall:");
        if key_prefix.contains(['{', '}']) {
            // A brace would become every key's hash tag and put all of them in one slot.
            return Err(ConfigError::new(
                "MALL_REDIS_PREFIX",
                &key_prefix,
                "must not contain { or } (they pick a key's cluster slot)",
            ));
        }
        let body_limit: usize = vars.parse("MALL_BODY_LIMIT", 1024 * 1024)?;
        let threads = match defaults.http_threads {
            HttpThreads::Shared => 0,
            HttpThreads::PerCore => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let threads: usize = vars.parse("MALL_HTTP_THREADS", threads)?;
        Ok(Self {
            internal_secret: vars.secret("MALL_INTERNAL_SECRET", DEV_INTERNAL_SECRET),
            http: HttpSettings {
                addr: vars.socket_addr(
                    "MALL_HTTP_ADDR",
                    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, defaults.port)),
                )?,
                request_timeout: vars.duration("MALL_REQUEST_TIMEOUT", Duration::from_secs(10))?,
                idle_timeout,
                body_limit,
                shutdown_timeout: vars.duration("MALL_SHUTDOWN_TIMEOUT", Duration::from_secs(10))?,
                threads,
            },
            database: DatabaseSettings {
                url: vars.url(
                    "MALL_DATABASE_URL",
                    DEFAULT_DATABASE_URL,
                    &["postgres", "postgresql"],
                )?,
                schema,
                max_connections,
                // Well inside the gateway's per-try timeout (3 s), so the client is told 503
                // `unavailable` by the service rather than 504 by the gateway.
                acquire_timeout: vars.duration("MALL_DATABASE_ACQUIRE_TIMEOUT", Duration::from_secs(1))?,
                idle_timeout: vars.duration("MALL_DATABASE_IDLE_TIMEOUT", Duration::from_secs(60))?,
            },
            redis: RedisSettings {
                url: vars.url("MALL_REDIS_URL", DEFAULT_REDIS_URL, &["redis", "rediss"])?,
                cluster_nodes: vars.url_list("MALL_REDIS_CLUSTER_NODES", "", &["redis", "rediss"])?,
                key_prefix,
                connections: redis_connections,
                timeout: vars.duration("MALL_REDIS_TIMEOUT", Duration::from_secs(1))?,
            },
            amqp: AmqpSettings {
                url: vars.url("MALL_AMQP_URL", DEFAULT_AMQP_URL, &["amqp", "amqps"])?,
                prefix: vars.string("MALL_AMQP_PREFIX", ""),
                confirm_timeout: vars.duration("MALL_AMQP_CONFIRM_TIMEOUT", Duration::from_secs(5))?,
            },
        })
    }

    /// The middleware knobs for `service`.
    pub fn stack(&self, service: &'static str) -> StackSettings {
        StackSettings {
            service,
            request_timeout: self.http.request_timeout,
            body_limit: self.http.body_limit,
            identity_key: crate::identity::IdentityKey::new(self.internal_secret.expose().as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: ServiceDefaults = ServiceDefaults {
        name: "test",
        port: 18000,
        schema: "test",
        http_threads: HttpThreads::Shared,
    };

    fn with(pairs: &[(&str, &str)]) -> Result<PlatformSettings, ConfigError> {
        PlatformSettings::from_vars(&Vars::from_pairs(pairs.iter().copied()), &DEFAULTS)
    }

    #[test]
    fn the_idle_timeout_defaults_to_30_seconds_and_zero_is_refused() {
        assert_eq!(with(&[]).unwrap().http.idle_timeout, Duration::from_secs(30));
        let set = with(&[("MALL_IDLE_TIMEOUT", "75s")]).unwrap();
        assert_eq!(set.http.idle_timeout, Duration::from_secs(75));
        let zero = with(&[("MALL_IDLE_TIMEOUT", "0s")]).unwrap_err();
        assert!(zero.to_string().contains("MALL_IDLE_TIMEOUT"), "{zero}");
    }
}
