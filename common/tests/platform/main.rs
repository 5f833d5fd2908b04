//! Tests of the platform crate against real Postgres, Redis and RabbitMQ.

mod amqp;
mod db;
mod outbox;
mod redis;
mod stack;

use mall_common::platform::ServiceDefaults;

/// Defaults of a made-up service these tests run as.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "platformtest",
    port: 0,
    schema: "platformtest",
};
