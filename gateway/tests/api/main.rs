//! Black-box tests of mall-gateway: real gateway instances in-process, fake upstreams that
//! delay, fail or die on command, and the real Redis.

mod access_log;
mod auth;
mod balancing;
mod edge;
mod helpers;
mod limits;
mod platform;
mod resilience;
mod routing;
mod tracing_hop;
