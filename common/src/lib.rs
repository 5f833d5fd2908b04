//! mall-common: the platform every mall service stands on.
//!
//! Everything that every service must spell the same way lives here, so a fix lands once:
//! configuration parsing, telemetry, the HTTP error body and middleware stack, health and
//! metrics endpoints, dependency pools (Postgres, Redis, RabbitMQ), and graceful shutdown.
//! Business rules never live here; event payloads shared between services will.
//!
//! # Layout
//!
//! - [`config`]: reading `MALL_*` variables into typed settings, with errors naming the variable.
//! - [`telemetry`]: logs, OpenTelemetry export (OTLP/HTTP, Zipkin), W3C + B3 propagation.
//! - [`events`]: event payloads shared between services.
//! - [`error`]: [`error::ApiError`], the `{"code","message"}` body every service answers with.
//! - [`http`]: the standard server middleware stack and the JSON extractor.
//! - [`identity`]: the gateway-signed identity headers and their verification.
//! - [`health`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`db`]: the lazy Postgres pool and the per-service-schema migration runner.
//! - [`redis`]: the lazy Redis pool, key prefixes, typed Lua scripts, the distributed lock.
//! - [`amqp`]: the RabbitMQ connection manager (reconnect, topology, publisher confirms) and
//!   the consumer runner (ack after commit, bounded redelivery, dead letters).
//! - [`outbox`]: the transactional outbox and its relay.
//! - [`peer`]: calling another service's `/internal/...` endpoints with fail-over.
//! - [`platform`]: wires the dependencies a service declares into one handle.
//! - [`server`]: binds, serves and stops a service within a bounded time.
//! - [`service`]: the built [`service::Application`] every service returns, and the loop of
//!   its periodic jobs.
//! - [`shutdown`]: the SIGTERM/SIGINT future.

pub mod amqp;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod health;
pub mod http;
pub mod identity;
pub mod outage;
pub mod outbox;
pub mod peer;
pub mod platform;
pub mod redis;
pub mod server;
pub mod service;
mod serving_thread;
pub mod shutdown;
pub mod telemetry;
#[cfg(test)]
mod test_logs;
