//! Tests of the platform crate against real Postgres, Redis and RabbitMQ.

mod amqp;
mod db;
mod outbox;
mod redis;
mod server;
mod stack;

use mall_common::platform::{HttpThreads, ServiceDefaults};

/// Defaults of a made-up service these tests run as.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "platformtest",
    port: 0,
    schema: "platformtest",
    http_threads: HttpThreads::Shared,
};
