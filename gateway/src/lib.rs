//! mall-gateway: the only door into mall.
//!
//! Routes by path prefix to upstream pools, balances each pool with tower's p2c over peak-EWMA
//! latency fed by health-checked discovery, protects it (timeouts, budgeted retries,
//! concurrency limit, load shedding, circuit breaker), verifies JWTs at the edge and asserts the
//! caller's identity to services in signed headers, rate-limits per client, per route and
//! cluster-wide (Redis), and traces every request across the hop. Owns the rate-limit keys
//! `mall:gw:*`.
//!
//! # Layout
//!
//! - [`config`]: [`Settings`] from `MALL_*` variables.
//! - [`routes`]: the route table (prefix -> pool, access rule).
//! - [`auth`]: JWT verification and minting.
//! - [`rate_limit`]: local and cluster-wide token buckets.
//! - [`upstream`]: pools, endpoints, the upstream HTTP/1.1 client, health checks, breaker, retry
//!   policy.
//! - [`edge`]: the gateway's routes on mall-common's HTTP/1.1 edge, which carries every request
//!   but the health routes.
//! - [`proxy`]: forwarding one request.
//! - [`startup`]: building and running the [`Application`].

pub mod auth;
pub mod config;
pub mod edge;
pub mod proxy;
pub mod rate_limit;
pub mod routes;
pub mod startup;
pub mod upstream;

pub use config::Settings;
pub use startup::Application;
