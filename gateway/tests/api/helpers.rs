//! Spawning gateways in front of fake upstreams.

use std::time::Duration;

use mall_gateway::Gateway;
use mall_gateway::auth::{MintKey, mint};
use mall_gateway::config::{DEV_JWT_SECRET, Settings};
use mall_testkit::upstream::FakeUpstream;
use mall_testkit::{TestEnv, TestServer, eventually};

/// Gateway settings with every pool pointed at `pools` (product first; the other pools get
/// their own fake), quick health checks, and `extra` variables on top.
pub(crate) fn settings(
    env: &TestEnv,
    product: &[&FakeUpstream],
    others: &FakeUpstream,
    extra: &[(&str, &str)],
) -> Settings {
    let product_urls: Vec<String> = product.iter().map(|u| u.url()).collect();
    let (product_urls, others) = (product_urls.join(","), others.url());
    let mut vars = vec![
        ("MALL_UPSTREAM_PRODUCT", product_urls.as_str()),
        ("MALL_UPSTREAM_INVENTORY", others.as_str()),
        ("MALL_UPSTREAM_ORDER", others.as_str()),
        ("MALL_UPSTREAM_FLASHSALE", others.as_str()),
        ("MALL_GW_HEALTH_INTERVAL", "100ms"),
        ("MALL_GW_HEALTH_TIMEOUT", "100ms"),
        ("MALL_GW_RATE_LIMITS", "*:client:100000/s"),
    ];
    vars.extend_from_slice(extra);
    env.settings::<Gateway>(&vars)
}

/// Held (shared) while a gateway is built and (exclusive) by a test that reads a gauge: the
/// metrics recorder is one per process, and every gateway built sets its pools' gauges (a new
/// breaker publishes `closed`) under the same labels as the gateways of other tests.
pub(crate) static GAUGES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Builds and starts a gateway.
pub(crate) async fn spawn(env: &TestEnv, settings: Settings) -> TestServer {
    let server = {
        let _building = GAUGES.read().await;
        env.build::<Gateway>(&[], |s| *s = settings).await
    };
    env.start(server).await
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

/// Waits until the gateway has `up` in rotation (`in_rotation`) or out of it, as its
/// `gateway_upstream_in_rotation` gauge says (exported for every instance from the start).
pub(crate) async fn until_rotation(gw: &TestServer, up: &FakeUpstream, in_rotation: bool) {
    let url = up.url();
    let instance = url.trim_start_matches("http://");
    let want = if in_rotation { 1.0 } else { 0.0 };
    eventually(
        Duration::from_secs(5),
        "the instance's rotation changes",
        || async {
            let got = metric(gw, "gateway_upstream_in_rotation", &[("upstream", instance)]).await;
            if got == want { Ok(()) } else { Err(got) }
        },
    )
    .await;
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
