//! The purchase route on mall-common's HTTP/1.1 edge (`mall_common::edge`); every other
//! request goes to the service's axum router and its standard stack.
//!
//! Late buyers of a sold-out item are most of a flash sale's requests, and their answer (409
//! `sold_out`, from memory) is the cheapest the service gives; on hyper's server, axum's router
//! and the standard stack it cost twice the gateway's own fixed 404 (README, "Benchmarks"). On
//! the edge it goes through the same steps as before: a request id, the `http.server` span
//! continuing the caller's context (the admission span is its child), the body limit, the
//! request timeout (504) and panic catching, the JSON error contract, the failure log line and
//! the route's metrics.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, Request, StatusCode, header};
use mall_common::edge::{Conn, Observer, RouteLabel, Routes};
use mall_common::error::ApiError;
use mall_common::http::{answer_within, request_id, with_json_error_body};

use crate::http::{Shared, purchase};

/// `POST /api/flashsale/purchase`.
const PURCHASE: RouteLabel = RouteLabel {
    key: 0,
    label: "/api/flashsale/purchase",
};

/// The routes mall-flashsale serves on the edge: the purchase.
pub(crate) struct Purchases {
    shared: Arc<Shared>,
    observer: Observer,
    timeout: Duration,
}

impl Purchases {
    /// `timeout` is `MALL_REQUEST_TIMEOUT`, as the standard stack applies it.
    pub(crate) fn new(shared: Arc<Shared>, service: &'static str, timeout: Duration) -> Self {
        Self {
            shared,
            observer: Observer::new(service),
            timeout,
        }
    }

    async fn purchase(&self, req: Request<Body>) -> Response {
        let started = Instant::now();
        // Echoed on the answer and named by the span; the handler does not read it, so it is
        // not inserted into the request's headers.
        let request_id = request_id(req.headers());
        let method = req.method().clone();
        let span = self.observer.span(&req, PURCHASE, &request_id);
        let res = if method == Method::POST {
            // Pinned here and lent: moved into the timeout's future by value, it would be
            // copied at each step and held twice (its argument, and pinned).
            let answer = pin!(async {
                purchase(&self.shared, req, span.context())
                    .await
                    .unwrap_or_else(IntoResponse::into_response)
            });
            answer_within(answer, started, self.timeout).await
        } else {
            method_not_allowed()
        };
        let res = with_json_error_body(res).await;
        self.observer
            .finish(res, span, PURCHASE, &method, request_id, started)
    }
}

impl Routes for Purchases {
    #[allow(clippy::result_large_err)] // as the trait
    fn serve<'a>(
        &'a self,
        req: Request<Body>,
        _conn: &'a Conn,
    ) -> Result<impl Future<Output = Response> + Send + 'a, Request<Body>> {
        if req.uri().path() != PURCHASE.label {
            return Err(req);
        }
        Ok(self.purchase(req))
    }
}

/// 405 as axum's router gives it for a route's other methods.
fn method_not_allowed() -> Response {
    let mut res = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "the purchase route takes POST",
    )
    .into_response();
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    res
}
