//! When a request may be tried again on another instance.
//!
//! Only requests without a body are retried (the body of a streamed request is gone once sent):
//! idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE) after a transport failure or a per-try
//! timeout, and any other method only when the connection could not even be made, so nothing
//! was sent. Retries draw on a budget shared by the pool (tower's `TpsBudget`:
//! `MALL_GW_RETRY_RATIO` of requests plus `MALL_GW_RETRY_MIN_PER_SEC`), so a failing pool is not
//! hit with a retry storm. The pool's attempt loop (`Pool::send`) asks these rules; tower's
//! `Retry` layer asked the same of a `Policy`, at the price of a boxed, cloned service stack and
//! a future per layer for every request.

use std::time::{Duration, Instant};

use http::Method;
use tower::BoxError;
use tower::retry::budget::{Budget, TpsBudget};

use super::client::Outbound;
use super::endpoint::EndpointError;
use super::find_cause;
use crate::config::Resilience;
use crate::routes::PoolName;

/// The retry rules of one pool, and its budget.
pub(super) struct Retries {
    pool: &'static str,
    budget: TpsBudget,
    max: u32,
}

impl Retries {
    pub(super) fn new(pool: PoolName, r: &Resilience) -> Self {
        Self {
            pool: pool.as_str(),
            budget: TpsBudget::new(Duration::from_secs(10), r.retry_min_per_sec, r.retry_ratio),
            max: r.max_retries,
        }
    }

    /// One request's retries. Every request pays into the budget, retried or not.
    pub(super) fn begin(&self, req: &Outbound) -> Attempts<'_> {
        self.budget.deposit();
        Attempts {
            retries: self,
            remaining: self.max,
            only_if_unsent: !idempotent(req.method()),
        }
    }
}

/// The retries one request has left.
pub(super) struct Attempts<'a> {
    retries: &'a Retries,
    remaining: u32,
    only_if_unsent: bool,
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

impl Attempts<'_> {
    /// A copy of `req` to send should this attempt fail, when it could be sent again at all:
    /// the copy shares the written head, and a request with a body has none.
    pub(super) fn spare(&self, req: &Outbound) -> Option<Outbound> {
        if self.remaining == 0 {
            return None;
        }
        req.try_clone()
    }

    /// Whether to try again after `error`, drawing on the budget if so. Past `deadline` (the
    /// overall timeout), the last attempt's failure is the answer.
    pub(super) fn again(&mut self, error: &BoxError, deadline: Instant) -> bool {
        let pool = self.retries.pool;
        tracing::debug!(pool, %error, source = ?std::error::Error::source(error.as_ref()), "attempt failed");
        if self.remaining == 0 || Instant::now() >= deadline {
            return false;
        }
        let retryable = match find_cause::<EndpointError>(error.as_ref()) {
            Some(e) => e.is_connect() || !self.only_if_unsent,
            None => {
                !self.only_if_unsent && find_cause::<tower::timeout::error::Elapsed>(error.as_ref()).is_some()
            }
        };
        if !retryable {
            return false;
        }
        if !self.retries.budget.withdraw() {
            metrics::counter!("gateway_retry_budget_exhausted_total", "pool" => pool).increment(1);
            return false;
        }
        self.remaining -= 1;
        metrics::counter!("gateway_retries_total", "pool" => pool).increment(1);
        true
    }
}
