//! The gateway's own tower middleware, one per file, each unit-tested with `tower-test`'s mock
//! service. tower's own layers (load shedding, concurrency limit, timeouts, retry, balance) are
//! used as they are; these are the rules tower has no layer for.
//!
//! - [`breaker`]: the circuit breaker of a pool.
//! - [`retry`]: which failed attempts tower's `Retry` layer may send again, under the budget.

pub mod breaker;
pub mod retry;
