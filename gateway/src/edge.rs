//! The gateway's routes on mall-common's HTTP/1.1 edge (`mall_common::edge`): the data path
//! of every proxied request.
//!
//! Everything a proxied request goes through is the same as it was on axum: the route table,
//! the edge checks and header hygiene (`proxy.rs`), the pool's resilience stack and balancer
//! (`upstream`), the access line, the metrics, the server span and the error contract. What is
//! different is what carries it: the request head is parsed straight off the connection's
//! buffer, routed by the table without a router, traced with one OpenTelemetry span and
//! answered in one write, where hyper's server, axum's router and the standard stack cost
//! about twice what nginx spends proxying the same request (README, "Benchmarks"). A request
//! no route takes (an unknown path, `/internal/...`) gets its 404 here, with its span, access
//! line and metrics; the health routes (`/healthz`, `/readyz`, `/metrics`) go to the gateway's
//! axum router with its standard stack.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use http::Request;
use mall_common::edge::{Conn, Observer, RouteLabel, Routes};
use mall_common::error::ApiError;
use mall_common::http::{panic_response, request_id, with_json_error_body};

use crate::proxy::{self, Proxy};
use crate::routes::{ROUTES, Route};
use crate::upstream::Pool;

/// The paths the gateway's axum router answers: its health routes.
const ROUTER_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];
/// The route of requests no route takes (labelled as axum's catch-all had it).
const UNMATCHED: RouteLabel = RouteLabel {
    key: usize::MAX,
    label: "/{*rest}",
};

/// The gateway's routes: the table, each entry with its pool (see the module docs).
pub struct Routing {
    proxy: Arc<Proxy>,
    table: Vec<Entry>,
    observer: Observer,
}

/// One route of the table with its pool and its labels, made once.
struct Entry {
    route: &'static Route,
    pool: Pool,
    /// `/a/{b}/c` as segments, for a pattern route.
    segments: Vec<&'static str>,
    /// What a path must start with to match the pattern (up to its first parameter), checked
    /// first so that other paths skip the segment walk.
    literal: &'static str,
    /// The path itself and a path below it (axum's `/{*rest}`, as the metrics and span names
    /// had it before).
    labels: [RouteLabel; 2],
}

impl Routing {
    /// The route table, each route with its pool; `service` names the spans and metrics.
    pub fn new(proxy: Arc<Proxy>, pools: impl Fn(&Route) -> Pool, service: &'static str) -> Self {
        let table = ROUTES
            .iter()
            .enumerate()
            .map(|(i, route)| {
                let below: &'static str = Box::leak(format!("{}/{{*rest}}", route.path).into_boxed_str());
                Entry {
                    route,
                    pool: pools(route),
                    segments: if route.prefix {
                        Vec::new()
                    } else {
                        route.path.split('/').collect()
                    },
                    literal: route.path.split('{').next().unwrap_or(""),
                    labels: [
                        RouteLabel {
                            key: 2 * i,
                            label: route.path,
                        },
                        RouteLabel {
                            key: 2 * i + 1,
                            label: below,
                        },
                    ],
                }
            })
            .collect();
        Self {
            proxy,
            table,
            observer: Observer::new(service),
        }
    }

    /// The route a path takes, and whether the path is below the route's prefix: a pattern
    /// route that matches it exactly, else the longest prefix it falls under (on whole
    /// segments), as axum would pick.
    fn route(&self, path: &str) -> Option<(usize, bool)> {
        let mut best: Option<(usize, bool)> = None;
        for (i, entry) in self.table.iter().enumerate() {
            if !entry.route.prefix {
                if path.starts_with(entry.literal) && pattern_matches(&entry.segments, path) {
                    return Some((i, false));
                }
                continue;
            }
            let prefix = entry.route.path;
            let Some(rest) = path.strip_prefix(prefix) else {
                continue;
            };
            let below = match rest.as_bytes().first() {
                None => false,
                Some(b'/') => true,
                Some(_) => continue,
            };
            if best.is_none_or(|(b, _)| self.table[b].route.path.len() < prefix.len()) {
                best = Some((i, below));
            }
        }
        best
    }
}

fn pattern_matches(segments: &[&str], path: &str) -> bool {
    let mut parts = path.split('/');
    for segment in segments {
        match parts.next() {
            Some(part) if segment.starts_with('{') => {
                if part.is_empty() {
                    return false;
                }
            }
            Some(part) if part == *segment => {}
            _ => return false,
        }
    }
    parts.next().is_none()
}

impl Routes for Routing {
    #[allow(clippy::result_large_err)] // as the trait
    fn serve<'a>(
        &'a self,
        req: Request<Body>,
        conn: &'a Conn,
    ) -> Result<impl Future<Output = Response> + Send + 'a, Request<Body>> {
        let routed = self.route(req.uri().path());
        if routed.is_none() && ROUTER_PATHS.contains(&req.uri().path()) {
            return Err(req);
        }
        Ok(async move {
            match routed {
                // Boxed: the proxy's future is most of this one's size, and the edge moves this
                // one by value several times before it first polls it (a copy each time, which
                // requests answered here would pay for too).
                Some((entry, below)) => Box::pin(self.proxied(entry, below, req, &conn.client)).await,
                None => self.unrouted(req, &conn.client),
            }
        })
    }
}

impl Routing {
    /// A routed request: span, the proxy, error body, failure log line, metrics.
    async fn proxied(&self, entry_at: usize, below: bool, req: Request<Body>, client: &str) -> Response {
        let started = Instant::now();
        let entry = &self.table[entry_at];
        // Not inserted into the request's headers: the proxy writes it into the upstream head
        // itself (a header-map insert per request, for a field read once).
        let request_id = request_id(req.headers());
        let route = entry.labels[usize::from(below)];
        let method = req.method().clone();
        let span = self.observer.span(&req, route, &request_id);
        // When the span continues the caller's context, upstream gets the span's own instead.
        let forwarded = proxy::forward(
            &self.proxy,
            &entry.pool,
            entry.route,
            client,
            request_id.to_str().unwrap_or(""),
            req,
            span.context(),
            span.carried(),
            started,
        );
        let res = match AssertUnwindSafe(forwarded).catch_unwind().await {
            Ok(res) => res,
            Err(panic) => panic_response(panic),
        };
        let res = with_json_error_body(res).await;
        self.observer
            .finish(res, span, route, &method, request_id, started)
    }

    /// A request no route takes (`/internal/...` included: the services' internal endpoints are
    /// never reachable from outside): 404 `not_found`, with its span, access line and metrics
    /// like any other.
    fn unrouted(&self, req: Request<Body>, client: &str) -> Response {
        let started = Instant::now();
        let request_id = request_id(req.headers());
        let span = self.observer.span(&req, UNMATCHED, &request_id);
        let res = ApiError::not_found("no such route").into_response();
        proxy::AccessLine {
            method: req.method(),
            route: mall_common::http::UNMATCHED,
            pool: "",
            upstream: "",
            request_id: request_id.to_str().unwrap_or(""),
            client,
            started,
        }
        .write(res.status(), span.context());
        self.observer
            .finish(res, span, UNMATCHED, req.method(), request_id, started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_routes_match_whole_segments() {
        let segments: Vec<&str> = "/api/flashsale/sessions/{session_id}/items/{sku_id}/token"
            .split('/')
            .collect();
        assert!(pattern_matches(
            &segments,
            "/api/flashsale/sessions/7/items/42/token"
        ));
        assert!(!pattern_matches(
            &segments,
            "/api/flashsale/sessions/7/items/42/token/x"
        ));
        assert!(!pattern_matches(
            &segments,
            "/api/flashsale/sessions//items/42/token"
        ));
        assert!(!pattern_matches(&segments, "/api/flashsale/sessions/7/items/42"));
    }
}
