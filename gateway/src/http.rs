//! The gateway's router: the route table's routes forwarding to their pools, the gateway's own
//! documents, and a JSON 404 for everything else.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::routing::any;
use futures_util::future::BoxFuture;
use http::Request;
use mall_common::server::Peer;

use crate::head;
use crate::proxy;
use crate::routes::{PoolName, ROUTES};
use crate::state::AppState;
use crate::upstream::Pool;

/// The gateway's router: every route of the table (a prefix also matches everything below it,
/// `{prefix}/{*rest}`, as its metrics and spans are labelled) forwarding to its pool, and a
/// catch-all answering 404 with an access line, each handler first running the edge checks
/// ([`head::refusal`]; in the handler, not a `from_fn` layer, which clones the boxed
/// route on every request). The health routes are added by the server.
pub fn router(state: Arc<AppState>, pool_of: impl Fn(PoolName) -> Pool) -> Router {
    let max_header_bytes = state.max_header_bytes;
    let pools: HashMap<PoolName, Pool> = PoolName::ALL
        .into_iter()
        .map(|name| (name, pool_of(name)))
        .collect();
    let mut router = crate::openapi::router(pools.clone());
    for route in ROUTES {
        let pool = pools[&route.pool].clone();
        let state = state.clone();
        let forward = move |ConnectInfo(peer): ConnectInfo<Peer>, req: Request<Body>| {
            let forwarded: BoxFuture<'static, Response> = match head::refusal(&req, max_header_bytes) {
                None => {
                    let (state, pool) = (state.clone(), pool.clone());
                    Box::pin(proxy::forward(state, pool, route, peer, req))
                }
                Some(refused) => Box::pin(std::future::ready(refused)),
            };
            forwarded
        };
        router = router.route(route.path, any(forward.clone()));
        if route.prefix {
            router = router.route(&format!("{}/{{*rest}}", route.path), any(forward));
        }
    }
    let unrouted = move |ConnectInfo(peer): ConnectInfo<Peer>, req: Request<Body>| async move {
        match head::refusal(&req, max_header_bytes) {
            None => proxy::unrouted(peer, &req),
            Some(refused) => refused,
        }
    };
    router.route("/", any(unrouted)).route("/{*rest}", any(unrouted))
}
