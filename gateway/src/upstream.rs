//! Upstream pools: each is tower's power-of-two-choices balancer over peak-EWMA latency, fed by a
//! discovery stream that active health checks and passive ejection drive, inside the pool's
//! resilience stack of tower layers.
//!
//! What a request goes through, outermost first (one `ServiceBuilder`, [`Pool::start`]):
//! 1. load shedding at the concurrency limit (`MALL_GW_MAX_CONCURRENCY`): when it is full,
//!    503 `overloaded` at once, never a queue;
//! 2. the circuit breaker (503 `upstream_unavailable` while open; `layers/breaker.rs`);
//! 3. the overall timeout (`MALL_GW_UPSTREAM_TIMEOUT`, 504 `upstream_timeout`);
//! 4. retries under the pool's budget, only for requests that are safe to repeat, none once the
//!    overall deadline has passed (`layers/retry.rs`);
//! 5. the per-try timeout (`MALL_GW_TRY_TIMEOUT`);
//! 6. the balancer's shared handle (`balancer.rs`, in place of tower's `Buffer`);
//! 7. p2c balancer over peak-EWMA endpoints (ranked behind any with recent failures), each
//!    sending on hyper's client connections, pooled per serving thread (`endpoint.rs`,
//!    `connections.rs`).

mod balancer;
mod connections;
mod endpoint;
mod health;

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::sync::CancellationToken;
use tower::balance::p2c::Balance;
use tower::limit::ConcurrencyLimit;
use tower::load_shed::LoadShed;
use tower::retry::Retry;
use tower::timeout::Timeout;
use tower::{BoxError, Service as _, ServiceBuilder, ServiceExt as _};
use url::Url;

use crate::config::GatewaySettings;
use crate::layers::breaker::{Breaker, BreakerLayer, BreakerState, CircuitBreaker};
use crate::layers::retry::RetryPolicy;
use crate::routes::PoolName;

pub use connections::SendError;
pub use endpoint::Upstream;
pub use health::Registry;

/// The health checks' HTTP/1.1 client (requests go out on `connections.rs`, on the thread that
/// serves them).
pub type HttpClient = Client<HttpConnector, Body>;

/// Builds the health checks' client.
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connections::CONNECT_TIMEOUT));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(20))
        .build(connector)
}

/// No instance of the pool is in rotation.
#[derive(Debug, thiserror::Error)]
#[error("no healthy instance")]
pub struct NoHealthyInstance;

/// The balancer with its discovery stream, behind its shared handle.
type Balancer = balancer::Locked<Balance<health::DiscoverStream, Request<Body>>>;

/// The pool's whole stack (see the module docs for the order). Concrete, not boxed: it is
/// cloned for every request.
type Stack = LoadShed<ConcurrencyLimit<CircuitBreaker<Timeout<Retry<RetryPolicy, Timeout<Balancer>>>>>>;

/// One upstream pool (a handle: clones share it, one reference count each; the stack itself is
/// cloned once per request, by [`Pool::send`]).
#[derive(Clone)]
pub struct Pool(Arc<Inner>);

struct Inner {
    name: PoolName,
    stack: Stack,
    registry: Arc<Registry>,
    breaker: Arc<Breaker>,
}

impl Pool {
    /// Builds the pool, inserts every instance into rotation and starts its health checks.
    pub fn start(
        name: PoolName,
        instances: &[Url],
        settings: &GatewaySettings,
        client: HttpClient,
        cancel: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (registry, discover) = Registry::new(name, instances, client, &settings.health);
        let r = &settings.resilience;
        let breaker = Arc::new(Breaker::new(name, settings.breaker.clone()));
        let health = health::run(registry.clone(), settings.health.clone(), cancel);
        let stack = ServiceBuilder::new()
            .load_shed()
            .concurrency_limit(r.max_concurrency)
            .layer(BreakerLayer::new(breaker.clone()))
            .timeout(r.upstream_timeout)
            .retry(RetryPolicy::new(name, r))
            .timeout(r.try_timeout)
            .service(balancer::Locked::new(Balance::new(discover)));
        (
            Self(Arc::new(Inner {
                name,
                stack,
                registry,
                breaker,
            })),
            health,
        )
    }

    /// The pool's name.
    pub fn name(&self) -> PoolName {
        self.0.name
    }

    /// Instances in rotation right now.
    pub fn healthy(&self) -> usize {
        self.0.registry.in_rotation()
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.0.breaker.state()
    }

    /// Sends `req` (its URI a path; the endpoint names the instance) through the pool's stack.
    pub fn send(&self, req: Request<Body>) -> BoxFuture<'static, Result<Response<Body>, BoxError>> {
        let pool = &*self.0;
        if pool.registry.in_rotation() == 0 {
            return Box::pin(std::future::ready(Err(NoHealthyInstance.into())));
        }
        // Called here rather than by a `Oneshot` on its first poll, which would keep the request
        // in the box first. Load shedding, outermost, is ready at once: a full pool is its 503,
        // never a wait, so this no-op waker is never needed (if it were, `oneshot` waits).
        let mut stack = pool.stack.clone();
        match stack.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Box::pin(stack.call(req)),
            _ => Box::pin(stack.oneshot(req)),
        }
    }
}
