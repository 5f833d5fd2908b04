//! Rate limits per client, per route, and across gateway instances.

use std::time::Instant;

use mall_testkit::TestEnv;
use mall_testkit::upstream::FakeUpstream;

use crate::helpers::{settings, spawn, token};

async fn status_and_retry_after(req: reqwest::RequestBuilder) -> (u16, Option<String>, String) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    (status, retry, body["code"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_limit_gets_429_with_retry_after_while_others_pass() {
    let env = TestEnv::new().await;
    let (up, other) = (FakeUpstream::start("p").await, FakeUpstream::start("o").await);
    let gw = spawn(
        &env,
        settings(
            &env,
            &[&up],
            &other,
            &[("MALL_GW_RATE_LIMITS", "/api/products:client:5/s")],
        ),
    )
    .await;
    let (alice, bob) = (token("alice", &[]), token("bob", &[]));

    let mut limited = 0;
    for _ in 0..10 {
        let (status, retry, code) =
            status_and_retry_after(gw.client().get(gw.url("/api/products/1")).bearer_auth(&alice)).await;
        if status == 429 {
            assert_eq!(code, "rate_limited");
            assert!(retry.is_some_and(|r| r.parse::<u64>().unwrap() >= 1));
            limited += 1;
        }
    }
    assert!(limited >= 4, "burst of 5, then refusals: {limited}");
    let (status, _, _) =
        status_and_retry_after(gw.client().get(gw.url("/api/products/1")).bearer_auth(&bob)).await;
    assert_eq!(status, 200, "another client has its own bucket");
    let (status, _, _) =
        status_and_retry_after(gw.client().get(gw.url("/api/skus/1")).bearer_auth(&alice)).await;
    assert_eq!(status, 200, "another route is not limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_limit_counts_every_client_together() {
    let env = TestEnv::new().await;
    let (up, other) = (FakeUpstream::start("p").await, FakeUpstream::start("o").await);
    let gw = spawn(
        &env,
        settings(
            &env,
            &[&up],
            &other,
            &[("MALL_GW_RATE_LIMITS", "/api/stock:route:5/s")],
        ),
    )
    .await;
    let mut limited = 0;
    for i in 0..10 {
        let (status, retry, _) = status_and_retry_after(
            gw.client()
                .get(gw.url("/api/stock/1"))
                .bearer_auth(token(&format!("u{i}"), &[])),
        )
        .await;
        if status == 429 {
            assert!(retry.is_some());
            limited += 1;
        }
    }
    assert!(limited >= 4, "{limited}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_sharing_redis_together_admit_no_more_than_the_cluster_limit() {
    let env = TestEnv::new().await;
    let (up, other) = (FakeUpstream::start("p").await, FakeUpstream::start("o").await);
    let rule = [("MALL_GW_RATE_LIMITS", "/api/flashsale/purchase:cluster:10/s")];
    let gw1 = spawn(&env, settings(&env, &[&up], &other, &rule)).await;
    let gw2 = spawn(&env, settings(&env, &[&up], &other, &rule)).await;

    let started = Instant::now();
    let mut admitted = 0u32;
    for i in 0..60 {
        let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
        let (status, retry, code) = status_and_retry_after(
            gw.client()
                .post(gw.url("/api/flashsale/purchase"))
                .bearer_auth(token(&format!("buyer{i}"), &[])),
        )
        .await;
        match status {
            200 => admitted += 1,
            429 => {
                assert_eq!(code, "rate_limited");
                assert!(retry.is_some());
            }
            other => panic!("unexpected {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ceiling = 10.0 + (elapsed * 10.0).ceil();
    assert!(admitted >= 10, "the burst is admitted: {admitted}");
    assert!(
        f64::from(admitted) <= ceiling,
        "two instances admitted {admitted} in {elapsed:.2}s; the cluster limit allows {ceiling}"
    );
    assert_eq!(u64::from(admitted), other.hits());
}
