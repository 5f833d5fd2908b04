//! What every proxied request needs.

use mall_common::identity;
use mall_common::telemetry::propagation;

use crate::auth::Verifier;
use crate::rate_limit::RateLimiter;

/// What every proxied request needs.
pub struct AppState {
    /// Token verification.
    pub verifier: Verifier,
    /// Rate limits.
    pub limiter: RateLimiter,
    /// Signs the identity header (`MALL_INTERNAL_SECRET`).
    pub identity_key: identity::IdentityKey,
    /// `MALL_GW_MAX_HEADER_BYTES`.
    pub max_header_bytes: usize,
    /// The trace-context formats written upstream (`OTEL_PROPAGATORS`).
    pub propagation: propagation::Formats,
    /// `MALL_GW_BODY_TIMEOUT`.
    pub body_timeout: std::time::Duration,
}
