//! Spawning product instances over a seeded catalog.

use std::time::Duration;

use mall_common::db::Db;
use mall_common::redis::Redis;
use mall_product::Product;
use mall_product::Settings;
use mall_product::config::DEFAULTS;
use mall_product::store::seed::seed;
use mall_testkit::{TestEnv, TestServer};

/// Settings for this env with a short L1 TTL, plus `extra` variables.
pub(crate) fn settings(env: &TestEnv, extra: &[(&str, &str)]) -> Settings {
    let mut vars = vec![("MALL_PRODUCT_L1_TTL", "300ms")];
    vars.extend_from_slice(extra);
    env.settings::<Product>(&vars)
}

/// Migrates the env's schema and seeds `skus` SKUs (before any instance builds its filters).
pub(crate) async fn seed_catalog(env: &TestEnv, skus: usize) -> Db {
    let s = env.platform_settings(&DEFAULTS);
    let db = Db::connect_lazy(&s.database, "test-seed").unwrap();
    db.migrate(&mall_product::startup::MIGRATIONS).await.unwrap();
    seed(&db, skus).await.unwrap();
    db
}

/// Builds and starts an instance.
pub(crate) async fn spawn(env: &TestEnv, settings: Settings) -> TestServer {
    env.spawn_with::<Product>(&[], |s| *s = settings).await
}

/// `GET path`: status and JSON body.
pub(crate) async fn get(app: &TestServer, path: &str) -> (u16, serde_json::Value) {
    let res = app.client().get(app.url(path)).send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(serde_json::Value::Null))
}

/// A request builder carrying a gateway-signed identity.
pub(crate) fn as_user(req: reqwest::RequestBuilder, user: &str, roles: &[&str]) -> reqwest::RequestBuilder {
    mall_testkit::checks::signed_as(req, user, roles)
}

/// The sum of a product metric for this env's schema (both instances share the registry).
pub(crate) async fn metric(app: &TestServer, env: &TestEnv, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scope = format!("{}_{}", env.id(), DEFAULTS.schema);
    let mut all = vec![("scope", scope.as_str())];
    all.extend_from_slice(labels);
    mall_testkit::checks::metric_sum(app, name, &all).await
}

/// Drops `key` (`sku:7`) from the L1 of every one of `instances` product instances, the way a
/// write elsewhere does: an invalidation on the Redis channel, waited for until each applied it.
pub(crate) async fn drop_from_l1(app: &TestServer, env: &TestEnv, key: &str, instances: usize) {
    let redis = Redis::connect_lazy(&env.platform_settings(&DEFAULTS).redis).expect("redis settings");
    let before = metric(app, env, "product_invalidations_received_total", &[]).await;
    redis
        .publish(&redis.key("product:invalidate"), key)
        .await
        .expect("invalidation published");
    mall_testkit::eventually(
        Duration::from_secs(5),
        "every instance drops its L1 copy",
        || async {
            let received = metric(app, env, "product_invalidations_received_total", &[]).await - before;
            if received >= instances as f64 {
                Ok(())
            } else {
                Err(received)
            }
        },
    )
    .await;
}
