//! Building and running mall-gateway.

use std::collections::HashMap;
use std::sync::Arc;

use mall_common::platform::{Needs, Platform};
use mall_common::server::Server;
use mall_common::service::Application;

use crate::auth::Verifier;
use crate::config::{DEFAULTS, DEV_INTERNAL_SECRET, DEV_JWT_SECRET, Settings};
use crate::http::router;
use crate::rate_limit::{CLUSTER_BUCKET, RateLimiter};
use crate::routes::PoolName;
use crate::state::AppState;
use crate::upstream::{Pool, http_client};

/// Binds, creates the Redis pool, loads the rate-limit script and starts every upstream pool.
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    let gw = settings.gateway;
    if gw.auth.jwt_secret.expose() == DEV_JWT_SECRET && gw.auth.jwt_public_key_pem.is_none() {
        tracing::warn!("MALL_JWT_SECRET is the development default; set your own outside development");
    }
    let internal_secret = settings.platform.internal_secret.expose().as_bytes();
    let identity_key = mall_common::identity::IdentityKey::new(internal_secret);
    if internal_secret == DEV_INTERNAL_SECRET.as_bytes() {
        tracing::warn!("MALL_INTERNAL_SECRET is the development default; set your own outside development");
    }
    let needs = Needs {
        redis: Some(vec![&CLUSTER_BUCKET]),
        ..Needs::default()
    };
    let platform = Platform::start(DEFAULTS.name, settings.platform, needs).await?;
    let redis = platform.redis().expect("declared above").clone();
    let pools = PoolName::ALL.map(PoolName::as_str);
    mall_common::health::declare_counters(&[
        (
            "gateway_rate_limited_total",
            "Requests refused 429, by limit.",
            Some(("scope", &["client", "route", "cluster"])),
        ),
        (
            "gateway_shed_total",
            "Requests shed at a pool's concurrency limit.",
            Some(("pool", &pools)),
        ),
        (
            "gateway_retries_total",
            "Retries, by pool.",
            Some(("pool", &pools)),
        ),
        (
            "gateway_retry_budget_exhausted_total",
            "Retries refused because the pool's retry budget was spent.",
            Some(("pool", &pools)),
        ),
    ]);

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

    let proxy = Arc::new(AppState {
        verifier: Verifier::new(&gw.auth).map_err(anyhow::Error::msg)?,
        limiter: RateLimiter::new(gw.rate_limits.clone(), redis),
        identity_key,
        max_header_bytes: gw.max_header_bytes,
        propagation: settings.telemetry.propagators,
        body_timeout: gw.body_timeout,
    });
    let server = Server::bind(platform, router(proxy, |name| pools[&name].clone())).await?;
    Ok(Application::new(server))
}
