//! mall-testkit: black-box tests against real services and real dependencies.
//!
//! A test makes a [`TestEnv`] (its own Postgres schema, Redis key prefix and AMQP name prefix,
//! all removed on drop, and leftovers of crashed runs swept), builds a service with
//! [`TestEnv::platform_settings`], and runs it on port 0 with [`TestEnv::start`]. Dependencies
//! can be broken on purpose through a [`ChaosProxy`]; effects that arrive asynchronously are
//! awaited with [`eventually`]; spans are asserted through the in-process [`collector`].
//! Dev-dependency only: nothing here ships.
//!
//! # Layout
//!
//! - [`env`]: [`TestEnv`], isolation and cleanup.
//! - [`server`]: [`TestServer`], a service running in-process.
//! - [`proxy`]: [`ChaosProxy`], a TCP proxy that can cut, refuse or slow a dependency.
//! - [`redis_cluster`]: [`RedisCluster`], a Redis Cluster of the test binary's own.
//! - [`wait`]: waiting with a deadline ([`eventually`]).
//! - [`spans`]: the OTLP/HTTP and Zipkin v2 receivers and the process-wide test telemetry.
//! - [`upstream`]: fake HTTP upstreams that delay, fail or die on command.
//! - [`checks`]: assertions every mall process must pass (health, readiness, metrics, traces).

pub mod catalog;
pub mod checks;
pub mod env;
pub mod proxy;
pub mod redis_cluster;
pub mod server;
pub mod spans;
pub mod upstream;
pub mod wait;

pub use env::TestEnv;
pub use proxy::ChaosProxy;
pub use redis_cluster::RedisCluster;
pub use server::TestServer;
pub use spans::collector;
pub use wait::{eventually, outbox_drained};
