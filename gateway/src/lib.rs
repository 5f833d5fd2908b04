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
//! - [`http`]: the axum router made of it.
//! - [`state`]: what every proxied request needs.
//! - [`auth`]: JWT verification and minting.
//! - [`rate_limit`]: local and cluster-wide token buckets.
//! - [`upstream`]: pools as tower stacks, endpoints on hyper's client, health checks.
//! - [`layers`]: the gateway's own tower layers (circuit breaker, retry policy).
//! - [`client_body`]: the client's request body, watched so its failures are blamed on it.
//! - [`error`]: [`error::GatewayError`], every answer the gateway writes itself.
//! - [`head`]: the checks every request head passes before it is routed.
//! - [`proxy`]: forwarding one request.
//! - [`openapi`]: the public API as one document (`/openapi.json`) and its page (`/docs`).
//! - [`startup`]: [`build`]ing the service.

pub mod auth;
pub mod client_body;
pub mod config;
pub mod error;
pub mod head;
pub mod http;
pub mod layers;
pub mod openapi;
pub mod proxy;
pub mod rate_limit;
pub mod routes;
pub mod startup;
pub mod state;
pub mod upstream;

pub use config::Settings;
pub use mall_common::service::Application;
pub use startup::build;

mall_common::service!(Gateway, "mall-gateway");
