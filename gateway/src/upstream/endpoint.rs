//! One upstream instance as a tower `Service`: sends the request to the instance over the
//! serving thread's keep-alive connections (`connections.rs`), and reports failures for passive
//! ejection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use mall_common::http::Timed;
use metrics::SharedString;
use tokio::sync::mpsc::UnboundedSender;
use tower::load::{CompleteOnResponse, Load, PeakEwma};
use tower::{BoxError, Service};

use super::connections::Connections;
use crate::client_body::{BodyProgress, client_fault};
use crate::error::EndpointError;

/// Which instance answered (`host:port`), in the answer's extensions: the access line names it.
#[derive(Debug, Clone)]
pub struct Upstream(pub Arc<str>);

/// Counts consecutive failed requests and asks the health task to eject the instance once they
/// reach the threshold; notes the health-check rounds in which the instance answered requests.
#[derive(Debug)]
pub(super) struct PassiveHealth {
    pub(super) id: usize,
    failures: AtomicU32,
    eject_after: u32,
    /// The instance's id and why, to the health task.
    eject: UnboundedSender<(usize, String)>,
    /// The health task's current round (it counts them).
    round: AtomicU32,
    /// The last round in which the instance answered a request.
    answered_in: AtomicU32,
}

impl PassiveHealth {
    pub(super) fn new(id: usize, eject_after: u32, eject: UnboundedSender<(usize, String)>) -> Self {
        Self {
            id,
            failures: AtomicU32::new(0),
            eject_after,
            eject,
            round: AtomicU32::new(0),
            answered_in: AtomicU32::new(u32::MAX),
        }
    }

    /// Consecutive failures so far (0 when the last request succeeded).
    pub(super) fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(super) fn success(&self) {
        // Read first: the hot path stays free of cache-line writes while all is well (the round
        // mark is written once per round, not per request).
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        let round = self.round.load(Ordering::Relaxed);
        if self.answered_in.load(Ordering::Relaxed) != round {
            self.answered_in.store(round, Ordering::Relaxed);
        }
    }

    /// Starts health-check round `round`.
    pub(super) fn begin_round(&self, round: u32) {
        self.round.store(round, Ordering::Relaxed);
    }

    /// Whether the instance answered a request since round `round` began.
    pub(super) fn answered_in(&self, round: u32) -> bool {
        self.answered_in.load(Ordering::Relaxed) == round
    }

    /// A failed request; `why` is said once, with the ejection it causes.
    fn failure(&self, why: impl FnOnce() -> String) {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 == self.eject_after {
            let why = format!(
                "{} failed requests in a row, the last: {}",
                self.eject_after,
                why()
            );
            let _ = self.eject.send((self.id, why));
        }
    }

    pub(super) fn reset(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }
}

/// An endpoint as the balancer sees it: peak-EWMA latency, ranked behind any instance without
/// recent failures. A refused connection fails in microseconds, so on latency alone a dead
/// instance would look like the best one and attract every retry.
pub(crate) struct Ranked {
    inner: PeakEwma<Endpoint, CompleteOnResponse>,
    passive: Arc<PassiveHealth>,
}

impl Ranked {
    pub(super) fn new(endpoint: Endpoint, default_rtt: Duration) -> Self {
        let passive = endpoint.0.passive.clone();
        Self {
            inner: PeakEwma::new(
                endpoint,
                default_rtt,
                DECAY.as_nanos() as f64,
                CompleteOnResponse::default(),
            ),
            passive,
        }
    }
}

/// How fast the latency estimate forgets.
const DECAY: Duration = Duration::from_secs(10);

impl Load for Ranked {
    type Metric = (bool, <PeakEwma<Endpoint, CompleteOnResponse> as Load>::Metric);

    fn load(&self) -> Self::Metric {
        (self.passive.failures() > 0, self.inner.load())
    }
}

impl Service<Request<Body>> for Ranked {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = <PeakEwma<Endpoint, CompleteOnResponse> as Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.inner.call(req)
    }
}

/// One instance, as a service; clones share it (a request takes one reference, not one per
/// field).
#[derive(Clone)]
pub(crate) struct Endpoint(Arc<Instance>);

pub(crate) struct Instance {
    instance: Arc<str>,
    authority: Authority,
    connections: Connections,
    pool: &'static str,
    passive: Arc<PassiveHealth>,
    metrics: Timed<StatusCode>,
}

impl Endpoint {
    pub(super) fn new(authority: Authority, pool: &'static str, passive: Arc<PassiveHealth>) -> Self {
        Self(Arc::new(Instance {
            instance: authority.as_str().into(),
            connections: Connections::new(authority.as_str()),
            authority,
            pool,
            passive,
            metrics: Timed::default(),
        }))
    }

    /// `host:port` of the instance.
    pub(super) fn instance(&self) -> &Arc<str> {
        &self.0.instance
    }

    pub(super) fn uri(&self, path_and_query: PathAndQuery) -> Uri {
        Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.0.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .expect("scheme, authority and path make a URI")
    }
}

impl AsRef<Connections> for Instance {
    fn as_ref(&self) -> &Connections {
        &self.connections
    }
}

impl Instance {
    /// Counts and times one answer of this instance (`gateway_upstream_*`, handles looked up
    /// once per status).
    fn observe(&self, status: StatusCode, seconds: f64) {
        self.metrics.record(
            |s| *s == status,
            || {
                let labels = [
                    ("pool", SharedString::const_str(self.pool)),
                    ("upstream", SharedString::from(self.instance.clone())),
                    ("status", mall_common::http::status_label(status)),
                ];
                (
                    status,
                    metrics::counter!("gateway_upstream_requests_total", &labels),
                    metrics::histogram!("gateway_upstream_duration_seconds", &labels),
                )
            },
            seconds,
        );
    }
}

impl Service<Request<Body>> for Endpoint {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The client pools connections itself; it is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let this = self.0.clone();
        // Origin-form on the wire; the client's Host stays, and a request without one (HTTP/2,
        // HTTP/1.0) names the instance.
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
        if !req.headers().contains_key(http::header::HOST) {
            let host = http::HeaderValue::from_str(self.0.authority.as_str())
                .expect("an authority is a header value");
            req.headers_mut().insert(http::header::HOST, host);
        }
        let progress = req.extensions().get::<BodyProgress>().cloned();
        let started = Instant::now();
        // Mapped, not awaited in an async block of its own, which would hold `req` twice.
        Box::pin(Connections::send(this, req).map(move |(this, result)| {
            let elapsed = started.elapsed().as_secs_f64();
            match result {
                Ok(res) => {
                    let status = res.status();
                    // 502/503/504 say the instance cannot serve; a 500 is about one request,
                    // and a dependency outage is every instance's.
                    if matches!(status.as_u16(), 502..=504) && !mall_common::error::is_dependency_outage(&res)
                    {
                        this.passive.failure(|| format!("answered {status}"));
                    } else {
                        this.passive.success();
                    }
                    this.observe(status, elapsed);
                    let mut res = res;
                    res.extensions_mut().insert(Upstream(this.instance.clone()));
                    Ok(res)
                }
                Err(e) => {
                    let connect = e.is_connect();
                    let source: BoxError = Box::new(e);
                    // A body the client broke off (or sent too much of) says nothing of the
                    // instance.
                    let status = if client_fault(&source, progress.as_ref()).is_none() {
                        this.passive
                            .failure(|| format!("{source} ({:?})", std::error::Error::source(&*source)));
                        "error"
                    } else {
                        "client_aborted"
                    };
                    let instance = this.instance.clone();
                    metrics::counter!(
                        "gateway_upstream_requests_total",
                        "pool" => this.pool, "upstream" => instance.to_string(), "status" => status
                    )
                    .increment(1);
                    Err(Box::new(EndpointError {
                        instance,
                        connect,
                        source,
                    }) as BoxError)
                }
            }
        }))
    }
}
