//! Spawning gateways in front of fake upstreams.

use std::time::Duration;

use mall_common::config::Vars;
use mall_common::telemetry::TelemetrySettings;
use mall_gateway::auth::{MintKey, mint};
use mall_gateway::config::{DEFAULTS, DEV_JWT_SECRET, Settings};
use mall_testkit::upstream::FakeUpstream;
use mall_testkit::{TestEnv, TestServer};

/// Gateway settings with every pool pointed at `pools` (product first; the other pools get
/// their own fake), quick health checks, and `extra` variables on top.
pub(crate) fn settings(
    env: &TestEnv,
    product: &[&FakeUpstream],
    others: &FakeUpstream,
    extra: &[(&str, &str)],
) -> Settings {
    let product_urls: Vec<String> = product.iter().map(|u| u.url()).collect();
    let mut pairs: Vec<(String, String)> = vec![
        ("MALL_UPSTREAM_PRODUCT".into(), product_urls.join(",")),
        ("MALL_UPSTREAM_INVENTORY".into(), others.url()),
        ("MALL_UPSTREAM_ORDER".into(), others.url()),
        ("MALL_UPSTREAM_FLASHSALE".into(), others.url()),
        ("MALL_GW_HEALTH_INTERVAL".into(), "100ms".into()),
        ("MALL_GW_HEALTH_TIMEOUT".into(), "100ms".into()),
        ("MALL_GW_RATE_LIMITS".into(), "*:client:100000/s".into()),
    ];
    pairs.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let mut settings = Settings::from_vars(&Vars::from_pairs(pairs)).expect("valid gateway settings");
    settings.platform = env.platform_settings(&DEFAULTS);
    settings.telemetry = TelemetrySettings::local("mall-gateway");
    settings
}

/// Held (shared) while a gateway is built and (exclusive) by a test that reads a gauge: the
/// metrics recorder is one per process, and every gateway built sets its pools' gauges (a new
/// breaker publishes `closed`) under the same labels as the gateways of other tests.
pub(crate) static GAUGES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Builds and starts a gateway.
pub(crate) async fn spawn(env: &TestEnv, settings: Settings) -> TestServer {
    let app = {
        let _building = GAUGES.read().await;
        mall_gateway::build(settings).await.expect("gateway builds")
    };
    env.start(app.into_server()).await
}

/// A gateway in front of a product upstream and one upstream for the other pools.
pub(crate) async fn gateway_with_fakes() -> (TestEnv, FakeUpstream, FakeUpstream, TestServer) {
    let env = TestEnv::new().await;
    let (product, other) = (
        FakeUpstream::start("product").await,
        FakeUpstream::start("other").await,
    );
    let gw = spawn(&env, settings(&env, &[&product], &other, &[])).await;
    (env, product, other, gw)
}

/// A token for `user` with `roles`, signed with the development secret.
pub(crate) fn token(user: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    mint(MintKey::Hs256(DEV_JWT_SECRET), user, &roles, 600).expect("mint")
}

/// `GET path` through the gateway; returns status and JSON body (`Null` if not JSON).
pub(crate) async fn get(gw: &TestServer, path: &str) -> (u16, serde_json::Value) {
    let res = gw.client().get(gw.url(path)).send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(serde_json::Value::Null))
}

/// A counter from the gateway's `/metrics`, summed over the label pairs given.
pub(crate) async fn metric(gw: &TestServer, name: &str, labels: &[(&str, &str)]) -> f64 {
    mall_testkit::checks::metric_sum(gw, name, labels).await
}

/// Sleeps long enough for several health-check rounds.
pub(crate) async fn health_window() {
    tokio::time::sleep(Duration::from_millis(600)).await;
}

/// `rounds` rounds of `width` concurrent GETs of `path`; returns every status.
pub(crate) async fn concurrent_gets(gw: &TestServer, path: &str, rounds: usize, width: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(rounds * width);
    for _ in 0..rounds {
        let tasks: Vec<_> = (0..width)
            .map(|_| {
                let (client, url) = (gw.client().clone(), gw.url(path));
                tokio::spawn(async move {
                    client
                        .get(url)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                })
            })
            .collect();
        for t in tasks {
            statuses.push(t.await.expect("request task"));
        }
    }
    statuses
}
