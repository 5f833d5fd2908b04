//! Building and running mall-gateway.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::any;
use http::Request;
use mall_common::platform::{Needs, Platform};
use mall_common::server::Server;

use crate::auth::Verifier;
use crate::config::{DEFAULTS, DEV_INTERNAL_SECRET, DEV_JWT_SECRET, Settings};
use crate::proxy::{Proxy, forward, unrouted};
use crate::rate_limit::{CLUSTER_BUCKET, RateLimiter};
use crate::routes::{PoolName, ROUTES, Route};
use crate::upstream::{Pool, http_client};

/// A built gateway: listener bound, pools balancing, health checks running.
pub struct Application {
    server: Server,
}

impl Application {
    /// Binds, creates the Redis pool, loads the rate-limit script and starts every upstream pool.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let gw = settings.gateway;
        if gw.auth.jwt_secret.expose() == DEV_JWT_SECRET && gw.auth.jwt_public_key_pem.is_none() {
            tracing::warn!("MALL_JWT_SECRET is the development default; set your own outside development");
        }
        let internal_secret = settings.platform.internal_secret.expose().as_bytes();
        let identity_key = mall_common::identity::IdentityKey::new(internal_secret);
        if internal_secret == DEV_INTERNAL_SECRET.as_bytes() {
            tracing::warn!(
                "MALL_INTERNAL_SECRET is the development default; set your own outside development"
            );
        }
        let needs = Needs {
            redis: Some(vec![&CLUSTER_BUCKET]),
            ..Needs::default()
        };
        let platform = Platform::start(DEFAULTS.name, settings.platform, needs).await?;
        let redis = platform.redis().expect("declared above").clone();

        let client = http_client();
        let mut pools = HashMap::new();
        for name in PoolName::ALL {
            let instances = match name {
                PoolName::Product => &gw.upstreams.product,
                PoolName::Inventory => &gw.upstreams.inventory,
                PoolName::Order => &gw.upstreams.order,
                PoolName::Flashsale => &gw.upstreams.flashsale,
            };
            let (pool, health) = Pool::start(name, instances, &gw, client.clone(), platform.cancel_token());
            platform.tasks().spawn(health);
            pools.insert(name, pool);
        }

        let proxy = Arc::new(Proxy {
            verifier: Verifier::new(&gw.auth).map_err(anyhow::Error::msg)?,
            limiter: RateLimiter::new(gw.rate_limits.clone(), redis),
            identity_key,
            max_header_bytes: gw.max_header_bytes,
        });
        let server = Server::bind(platform, router(&proxy, &pools)).await?;
        Ok(Self { server })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains within `MALL_SHUTDOWN_TIMEOUT`.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        Ok(self.server.run_until_stopped(shutdown).await?)
    }

    /// The underlying server (tests run it through `mall-testkit`).
    pub fn into_server(self) -> Server {
        self.server
    }
}

/// One axum route per table entry (and its subtree for prefixes), so the matched route is a
/// low-cardinality label and the most specific entry wins.
fn router(proxy: &Arc<Proxy>, pools: &HashMap<PoolName, Pool>) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        let route: &'static Route = route;
        let handler = {
            let (proxy, pool) = (proxy.clone(), pools[&route.pool].clone());
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request<Body>| {
                forward(proxy.clone(), pool.clone(), route, peer, req)
            }
        };
        router = router.route(route.path, any(handler.clone()));
        if route.prefix {
            router = router.route(&format!("{}/{{*rest}}", route.path), any(handler));
        }
    }
    // Everything else, `/internal/...` included (internal endpoints of the services are never
    // reachable from outside), is answered here rather than by the standard stack's fallback, so
    // that it gets an access line too. The health routes, merged later, are more specific.
    let unrouted = |ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request<Body>| unrouted(peer, req);
    router.route("/", any(unrouted)).route("/{*rest}", any(unrouted))
}
