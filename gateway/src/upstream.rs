//! Upstream pools: each is tower's power-of-two-choices balancer over peak-EWMA latency, fed by a
//! discovery stream that active health checks and passive ejection drive, wrapped in the
//! resilience stack.
//!
//! What a request goes through, outermost first:
//! 1. concurrency limit (`MALL_GW_MAX_CONCURRENCY`) with load shedding: when it is full, answer
//!    503 `overloaded` at once (`InFlight`, one atomic count in place of tower's `LoadShed`
//!    over `ConcurrencyLimit`, whose semaphore, per-request permit future and two layers cost
//!    about 3,000 instructions per proxied request; the behaviour is theirs);
//! 2. circuit breaker (503 `upstream_unavailable` while open);
//! 3. retries under a budget, only for requests that are safe to repeat, and none once the
//!    overall timeout (`MALL_GW_UPSTREAM_TIMEOUT`, 504 `upstream_timeout`) has passed;
//! 4. per-try timeout (`MALL_GW_TRY_TIMEOUT`), cut short by the overall deadline: one tokio
//!    timer per attempt for both;
//! 5. the balancer's shared handle (`shared.rs`, in place of tower's `Buffer`);
//! 6. p2c balancer over peak-EWMA endpoints (ranked behind any with recent failures).
//!
//! 1 to 4 are one async method, [`Pool::send`], rather than tower layers: as a boxed, cloned
//! service stack they cost a box and a clone of the stack, a boxed future per layer and a copy
//! of each future into the next, about 3,000 instructions per proxied request, for the same
//! rules (tower's retry budget is still the budget).

mod breaker;
mod client;
mod endpoint;
mod health;
mod retry;
mod shared;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::sync::CancellationToken;
use tower::BoxError;
use tower::balance::p2c::Balance;
use url::Url;

use crate::config::GatewaySettings;
use crate::routes::PoolName;

pub use breaker::{Breaker, BreakerOpen, BreakerState};
pub use client::{ClientError, Outbound, OutboundHead};
pub use endpoint::{Answer, EndpointError};
pub use health::Registry;

/// The health checks' HTTP/1.1 client (requests go through `client.rs`, on the thread that
/// serves them).
pub type HttpClient = Client<HttpConnector, Body>;

/// How long connecting to an instance may take (requests and health checks alike).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Builds the health checks' client.
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .build(connector)
}

/// No instance of the pool is in rotation.
#[derive(Debug, thiserror::Error)]
#[error("no healthy instance")]
pub struct NoHealthyInstance;

/// One upstream pool (a handle: clones share it).
#[derive(Clone)]
pub struct Pool {
    name: PoolName,
    inner: Arc<Inner>,
    registry: Arc<Registry>,
    breaker: Arc<Breaker>,
}

struct Inner {
    in_flight: InFlight,
    retries: retry::Retries,
    balancer: shared::Shared<Balance<health::DiscoverStream, Outbound>>,
    /// `MALL_GW_TRY_TIMEOUT`: one attempt.
    try_timeout: Duration,
    /// `MALL_GW_UPSTREAM_TIMEOUT`: every attempt of a request together.
    upstream_timeout: Duration,
}

impl Pool {
    /// Builds the pool, inserts every instance into rotation and starts its health checks.
    pub fn start(
        name: PoolName,
        instances: &[Url],
        settings: &GatewaySettings,
        health_client: HttpClient,
        cancel: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (registry, discover) = Registry::new(name, instances, health_client, &settings.health);
        let r = &settings.resilience;
        let breaker = Arc::new(Breaker::new(name, settings.breaker.clone()));
        let health = health::run(registry.clone(), settings.health.clone(), cancel);
        let inner = Inner {
            in_flight: InFlight {
                now: AtomicUsize::new(0),
                max: r.max_concurrency,
            },
            retries: retry::Retries::new(name, r),
            balancer: shared::Shared::new(Balance::new(discover)),
            try_timeout: r.try_timeout,
            upstream_timeout: r.upstream_timeout,
        };
        (
            Self {
                name,
                inner: Arc::new(inner),
                registry,
                breaker,
            },
            health,
        )
    }

    /// The pool's name.
    pub fn name(&self) -> PoolName {
        self.name
    }

    /// Instances in rotation right now.
    pub fn healthy(&self) -> usize {
        self.registry.in_rotation()
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Sends `req` to one instance, with the whole resilience stack.
    pub async fn send(&self, req: Outbound) -> Result<Answer, BoxError> {
        if self.registry.in_rotation() == 0 {
            return Err(NoHealthyInstance.into());
        }
        let Some(_slot) = self.inner.in_flight.enter() else {
            return Err(tower::load_shed::error::Overloaded::new().into());
        };
        let admitted = self.breaker.enter()?;
        let started = Instant::now();
        let result = self.attempts(req, started).await;
        admitted.finish(&result, started.elapsed());
        result
    }

    /// The attempts of one request: each bounded by the per-try timeout and the overall deadline,
    /// another made while the retry rules allow.
    async fn attempts(&self, mut req: Outbound, started: Instant) -> Result<Answer, BoxError> {
        let inner = &*self.inner;
        let deadline = started + inner.upstream_timeout;
        let mut attempts = inner.retries.begin(&req);
        let mut attempt_started = started;
        loop {
            let spare = attempts.spare(&req);
            let until = (attempt_started + inner.try_timeout).min(deadline);
            let result = match tokio::time::timeout_at(until.into(), inner.balancer.call(req)).await {
                Ok(answered) => answered,
                Err(_) => Err(Box::new(tower::timeout::error::Elapsed::new()) as BoxError),
            };
            match (result, spare) {
                (Err(error), Some(next)) if attempts.again(&error, deadline) => {
                    req = next;
                    attempt_started = Instant::now();
                }
                (result, _) => return result,
            }
        }
    }
}

/// The pool's requests in flight, at most `max`: a request over it is shed at once, never
/// queued. A slot is held until the answer's head is in (or the request fails), as tower's
/// concurrency limit holds its permit.
struct InFlight {
    now: AtomicUsize,
    max: usize,
}

impl InFlight {
    fn enter(&self) -> Option<Slot<'_>> {
        // Taken first and given back when over: a request never waits, and the count never
        // stays above `max` for longer than that.
        if self.now.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.now.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self))
    }
}

struct Slot<'a>(&'a InFlight);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The first error of type `T` in `error`'s source chain (tower layers wrap errors).
pub fn find_cause<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_sheds_over_its_limit_and_lets_in_again_when_a_slot_frees() {
        let limit = InFlight {
            now: AtomicUsize::new(0),
            max: 2,
        };
        let first = limit.enter().expect("one of two");
        let second = limit.enter().expect("two of two");
        assert!(limit.enter().is_none(), "a third is shed");
        assert_eq!(
            limit.now.load(Ordering::Acquire),
            2,
            "a shed request leaves no count behind"
        );
        drop(first);
        let third = limit.enter().expect("a freed slot is taken again");
        drop((second, third));
        assert_eq!(limit.now.load(Ordering::Acquire), 0);
    }
}
