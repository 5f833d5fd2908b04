//! Spawning product instances over a seeded catalog.

use std::time::Duration;

use mall_common::config::Vars;
use mall_common::db::Db;
use mall_common::telemetry::TelemetrySettings;
use mall_product::Settings;
use mall_product::config::DEFAULTS;
use mall_product::store::seed::seed;
use mall_testkit::{TestEnv, TestServer};

/// Settings for this env with a short L1 TTL, plus `extra` variables.
pub(crate) fn settings(env: &TestEnv, extra: &[(&str, &str)]) -> Settings {
    let mut pairs: Vec<(String, String)> = vec![("MALL_PRODUCT_L1_TTL".into(), "300ms".into())];
    pairs.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let mut s = Settings::from_vars(&Vars::from_pairs(pairs)).expect("valid settings");
    s.platform = env.platform_settings(&DEFAULTS);
    s.telemetry = TelemetrySettings::local("mall-product");
    s
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
    let app = mall_product::build(settings).await.expect("product builds");
    env.start(app.into_server()).await
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

/// Longer than the tests' L1 TTL.
pub(crate) async fn past_l1_ttl() {
    tokio::time::sleep(Duration::from_millis(400)).await;
}
