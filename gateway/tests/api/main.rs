//! Black-box tests of mall-gateway: real gateway instances in-process, fake upstreams that
//! delay, fail or die on command, and the real Redis.

mod access_log;
mod auth;
mod balancing;
mod blame;
mod connections;
mod helpers;
mod limits;
mod platform;
mod raw;
mod resilience;
mod routing;
mod smuggling;
mod tracing_hop;
