//! When a request may be tried again on another instance: the policy of tower's `Retry` layer.
//!
//! Only requests whose body is at hand are retried (none, or one read whole: a streamed body is
//! gone once sent): idempotent
//! methods (GET, HEAD, OPTIONS, PUT, DELETE) after a transport failure or a per-try timeout, and
//! any other method only when the connection could not even be made, so nothing was sent.
//! Retries draw on a budget shared by the pool (tower's `TpsBudget`: `MALL_GW_RETRY_RATIO` of
//! requests plus `MALL_GW_RETRY_MIN_PER_SEC`), so a failing pool is not hit with a retry storm,
//! and none starts once the request's overall deadline (`MALL_GW_UPSTREAM_TIMEOUT` after it
//! reached the policy) has passed.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, Response};
use http_body::Body as _;
use tokio::time::Instant;
use tower::BoxError;
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};

use crate::client_body::Replay;
use crate::config::Resilience;
use crate::error::{EndpointError, find_cause};
use crate::routes::PoolName;

/// The retry rules of one pool, and one request's retries left and deadline (tower clones the
/// policy per request).
#[derive(Clone)]
pub struct RetryPolicy {
    rules: Arc<Rules>,
    remaining: u32,
    /// Set once an attempt has ended: the request has paid into the budget.
    deposited: bool,
    /// When the request's attempts must all be over. Kept here, not in the request's
    /// extensions, which would cost every request a map and copy it for the retry.
    deadline: Option<Instant>,
}

struct Rules {
    pool: &'static str,
    budget: TpsBudget,
    upstream_timeout: Duration,
}

impl RetryPolicy {
    /// The policy of `pool`, with its own budget.
    pub fn new(pool: PoolName, r: &Resilience) -> Self {
        Self {
            rules: Arc::new(Rules {
                pool: pool.as_str(),
                budget: TpsBudget::new(Duration::from_secs(10), r.retry_min_per_sec, r.retry_ratio),
                upstream_timeout: r.upstream_timeout,
            }),
            remaining: r.max_retries,
            deposited: false,
            deadline: None,
        }
    }

    fn retryable(req: &Request<Body>, error: &BoxError) -> bool {
        let e: &(dyn std::error::Error + 'static) = error.as_ref();
        match find_cause::<EndpointError>(e) {
            Some(failed) => failed.is_connect() || idempotent(req.method()),
            None => idempotent(req.method()) && find_cause::<tower::timeout::error::Elapsed>(e).is_some(),
        }
    }
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

impl<B> Policy<Request<Body>, Response<B>, BoxError> for RetryPolicy {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        req: &mut Request<Body>,
        result: &mut Result<Response<B>, BoxError>,
    ) -> Option<Self::Future> {
        // Every request pays into the budget once, retried or not.
        if !self.deposited {
            self.deposited = true;
            self.rules.budget.deposit();
        }
        let Err(error) = result else {
            return None;
        };
        let pool = self.rules.pool;
        tracing::debug!(pool, %error, "attempt failed");
        let past_deadline = self.deadline.is_some_and(|d| Instant::now() >= d);
        if self.remaining == 0 || past_deadline || !Self::retryable(req, error) {
            return None;
        }
        if !self.rules.budget.withdraw() {
            metrics::counter!("gateway_retry_budget_exhausted_total", "pool" => pool).increment(1);
            return None;
        }
        self.remaining -= 1;
        metrics::counter!("gateway_retries_total", "pool" => pool).increment(1);
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, req: &Request<Body>) -> Option<Request<Body>> {
        // tower asks for a copy before a request's first attempt (on the service's policy, which
        // the request's own then copies) and before each retry, after `retry` has deposited: so
        // the deadline starts with the request, never with an earlier one the service sent.
        if !self.deposited {
            self.deadline = Some(Instant::now() + self.rules.upstream_timeout);
        }
        if self.remaining == 0 {
            return None;
        }
        let body = match req.extensions().get::<Replay>() {
            Some(Replay(bytes)) => Body::from(bytes.clone()),
            None if req.body().is_end_stream() => Body::empty(),
            // A streamed body is gone once sent.
            None => return None,
        };
        let mut copy = Request::new(body);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::retry::{Retry, RetryLayer};
    use tower_test::mock;

    fn resilience(max_retries: u32, min_per_sec: u32) -> Resilience {
        Resilience {
            try_timeout: Duration::from_secs(1),
            upstream_timeout: Duration::from_secs(2),
            max_retries,
            retry_ratio: 0.0,
            retry_min_per_sec: min_per_sec,
            max_concurrency: 10,
        }
    }

    fn failure(connect: bool) -> EndpointError {
        EndpointError {
            instance: "127.0.0.1:1".into(),
            connect,
            source: "connection failed".into(),
        }
    }

    fn request(method: Method, body: Body) -> Request<Body> {
        Request::builder().method(method).uri("/x").body(body).unwrap()
    }

    type Spawned = mock::Spawn<Retry<RetryPolicy, mock::Mock<Request<Body>, Response<()>>>>;

    /// How many attempts `req` gets when every attempt fails with `error()`.
    async fn attempts(policy: RetryPolicy, req: Request<Body>, error: impl Fn() -> BoxError) -> usize {
        let (mut service, mut handle) =
            mock::spawn_layer::<Request<Body>, Response<()>, _>(RetryLayer::new(policy));
        attempts_on(&mut service, &mut handle, req, error).await
    }

    /// The same, on a service that may have sent requests before.
    async fn attempts_on(
        service: &mut Spawned,
        handle: &mut mock::Handle<Request<Body>, Response<()>>,
        req: Request<Body>,
        error: impl Fn() -> BoxError,
    ) -> usize {
        assert!(service.poll_ready().is_ready());
        let mut answer = tokio::spawn(service.call(req));
        let mut seen = 0;
        loop {
            tokio::select! {
                next = handle.next_request() => {
                    let (_, reply) = next.expect("a request");
                    seen += 1;
                    reply.send_error(error());
                }
                answered = &mut answer => {
                    assert!(answered.unwrap().is_err());
                    return seen;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried_whatever_the_method_and_a_sent_post_never_is() {
        let policy = || RetryPolicy::new(PoolName::Product, &resilience(2, 100));
        let refused = || -> BoxError { Box::new(failure(true)) };
        let reset = || -> BoxError { Box::new(failure(false)) };
        assert_eq!(
            attempts(policy(), request(Method::POST, Body::empty()), refused).await,
            3
        );
        assert_eq!(
            attempts(policy(), request(Method::POST, Body::empty()), reset).await,
            1
        );
        assert_eq!(
            attempts(policy(), request(Method::GET, Body::empty()), reset).await,
            3
        );
        let late = || -> BoxError { Box::new(tower::timeout::error::Elapsed::new()) };
        assert_eq!(
            attempts(policy(), request(Method::GET, Body::empty()), late).await,
            3
        );
        assert_eq!(
            attempts(policy(), request(Method::POST, Body::empty()), late).await,
            1
        );
    }

    #[tokio::test]
    async fn bodies_spent_budgets_and_passed_deadlines_stop_the_retries() {
        let refused = || -> BoxError { Box::new(failure(true)) };
        let policy = RetryPolicy::new(PoolName::Order, &resilience(2, 100));
        assert_eq!(
            attempts(policy, request(Method::PUT, Body::from("x")), refused).await,
            1
        );
        let mut whole = request(Method::POST, Body::from("x"));
        whole
            .extensions_mut()
            .insert(Replay(bytes::Bytes::from_static(b"x")));
        let policy = RetryPolicy::new(PoolName::Order, &resilience(2, 100));
        assert_eq!(
            attempts(policy, whole, refused).await,
            3,
            "a body read whole is sent again"
        );

        // An overall deadline already over when the first attempt fails.
        let mut no_time = resilience(2, 100);
        no_time.upstream_timeout = Duration::ZERO;
        let policy = RetryPolicy::new(PoolName::Order, &no_time);
        assert_eq!(
            attempts(policy, request(Method::GET, Body::empty()), refused).await,
            1
        );

        // No floor and no share of requests: an empty budget allows no retry.
        let policy = RetryPolicy::new(PoolName::Order, &resilience(2, 0));
        assert_eq!(
            attempts(policy, request(Method::GET, Body::empty()), refused).await,
            1
        );
    }
    #[tokio::test(start_paused = true)]
    async fn each_request_has_its_own_deadline_on_a_service_used_before() {
        let refused = || -> BoxError { Box::new(failure(true)) };
        let policy = RetryPolicy::new(PoolName::Product, &resilience(2, 100));
        let (mut service, mut handle) =
            mock::spawn_layer::<Request<Body>, Response<()>, _>(RetryLayer::new(policy));
        let get = || request(Method::GET, Body::empty());
        assert_eq!(attempts_on(&mut service, &mut handle, get(), refused).await, 3);
        // Longer than the overall timeout (2 s) after the first request started.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            attempts_on(&mut service, &mut handle, get(), refused).await,
            3,
            "the second request's deadline starts with it"
        );
    }
}
