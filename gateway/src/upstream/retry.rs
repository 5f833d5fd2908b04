//! When a request may be tried again on another instance.
//!
//! Only requests without a body are retried (the body of a streamed request is gone once sent):
//! idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE) after a transport failure or a per-try
//! timeout, and any other method only when the connection could not even be made, so nothing
//! was sent. Retries draw on a budget shared by the pool (`MALL_GW_RETRY_RATIO` of requests plus
//! `MALL_GW_RETRY_MIN_PER_SEC`), so a failing pool is not hit with a retry storm.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tower::BoxError;
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};

use super::client::Outbound;
use super::endpoint::{Answer, EndpointError};
use super::find_cause;
use crate::config::Resilience;
use crate::routes::PoolName;

/// The retry policy of one request, sharing the pool's budget.
#[derive(Clone)]
pub(super) struct RetryPolicy {
    pool: &'static str,
    budget: Arc<TpsBudget>,
    remaining: u32,
    deposited: bool,
    only_if_unsent: bool,
}

impl RetryPolicy {
    pub(super) fn new(pool: PoolName, r: &Resilience) -> Self {
        Self {
            pool: pool.as_str(),
            budget: Arc::new(TpsBudget::new(
                Duration::from_secs(10),
                r.retry_min_per_sec,
                r.retry_ratio,
            )),
            remaining: r.max_retries,
            deposited: false,
            only_if_unsent: false,
        }
    }
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

impl Policy<Outbound, Answer, BoxError> for RetryPolicy {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, req: &mut Outbound, result: &mut Result<Answer, BoxError>) -> Option<Self::Future> {
        let Err(error) = result else { return None };
        tracing::debug!(pool = self.pool, %error, source = ?std::error::Error::source(error.as_ref()), "attempt failed");
        if self.remaining == 0 {
            return None;
        }
        // The overall timeout: past it, the last attempt's failure (its time-out) is the answer.
        if req
            .deadline
            .is_some_and(|deadline| tokio::time::Instant::now() >= deadline)
        {
            return None;
        }
        let retryable = match find_cause::<EndpointError>(error.as_ref()) {
            Some(e) => e.is_connect() || !self.only_if_unsent,
            None => {
                !self.only_if_unsent && find_cause::<tower::timeout::error::Elapsed>(error.as_ref()).is_some()
            }
        };
        if !retryable {
            return None;
        }
        if !self.budget.withdraw() {
            metrics::counter!("gateway_retry_budget_exhausted_total", "pool" => self.pool).increment(1);
            return None;
        }
        self.remaining -= 1;
        metrics::counter!("gateway_retries_total", "pool" => self.pool).increment(1);
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, req: &Outbound) -> Option<Outbound> {
        if !self.deposited {
            self.budget.deposit();
            self.deposited = true;
        }
        // The copy shares the written head; a request with a body has none.
        let copy = req.try_clone()?;
        self.only_if_unsent = !idempotent(req.method());
        Some(copy)
    }
}
