//! Retries, timeouts, the circuit breaker and load shedding.

use std::time::{Duration, Instant};

use mall_testkit::upstream::FakeUpstream;
use mall_testkit::{TestEnv, eventually};

use crate::helpers::{GAUGES, get, metric, settings, spawn};

/// No active or passive ejection and no breaker, so the behaviour under test is the request
/// path's alone.
const NO_EJECTION: [(&str, &str); 3] = [
    ("MALL_GW_HEALTH_INTERVAL", "1h"),
    ("MALL_GW_EJECT_AFTER", "100000"),
    ("MALL_GW_BREAKER_MIN_CALLS", "100000"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_is_retried_on_another_instance_when_the_connection_fails() {
    let env = TestEnv::new().await;
    let (dead, alive, other) = (
        FakeUpstream::start("dead").await,
        FakeUpstream::start("alive").await,
        FakeUpstream::start("o").await,
    );
    let gw = spawn(&env, settings(&env, &[&dead, &alive], &other, &NO_EJECTION)).await;
    dead.kill();
    for _ in 0..40 {
        let (status, body) = get(&gw, "/api/skus/3").await;
        assert_eq!(
            (status, body["instance"].as_str()),
            (200, Some("alive")),
            "{body}"
        );
    }
    assert!(metric(&gw, "gateway_retries_total", &[("pool", "product")]).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_never_retried_once_sent_and_a_get_is_retried_until_the_overall_timeout() {
    let env = TestEnv::new().await;
    let (a, b, other) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
        FakeUpstream::start("o").await,
    );
    a.set_delay(Duration::from_millis(600));
    b.set_delay(Duration::from_millis(600));
    let mut extra = NO_EJECTION.to_vec();
    extra.extend([
        ("MALL_GW_TRY_TIMEOUT", "150ms"),
        ("MALL_GW_UPSTREAM_TIMEOUT", "2s"),
    ]);
    let gw = spawn(&env, settings(&env, &[&a, &b], &other, &extra)).await;
    let admin = crate::helpers::token("1", &["admin"]);

    let res = gw
        .client()
        .post(gw.url("/admin/products"))
        .bearer_auth(&admin)
        .body(r#"{"title":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["code"],
        "upstream_timeout"
    );
    assert_eq!(
        a.hits() + b.hits(),
        1,
        "the POST reached an upstream exactly once"
    );

    let (status, body) = get(&gw, "/api/skus/1").await;
    assert_eq!((status, body["code"].as_str()), (504, Some("upstream_timeout")));
    assert_eq!(
        a.hits() + b.hits(),
        1 + 3,
        "the GET was tried 1 + MALL_GW_MAX_RETRIES times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overall_timeout_cuts_the_attempt_in_flight_and_stops_the_retries() {
    let env = TestEnv::new().await;
    let (a, b, other) = (
        FakeUpstream::start("a").await,
        FakeUpstream::start("b").await,
        FakeUpstream::start("o").await,
    );
    a.set_delay(Duration::from_secs(5));
    b.set_delay(Duration::from_secs(5));
    let mut extra = NO_EJECTION.to_vec();
    // Room for three attempts of 1.5 s, but 2.1 s for all of them: the second is cut at 2.1 s
    // and no third starts (a third would end the request at 4.5 s at the earliest).
    extra.extend([
        ("MALL_GW_TRY_TIMEOUT", "1500ms"),
        ("MALL_GW_UPSTREAM_TIMEOUT", "2100ms"),
    ]);
    let gw = spawn(&env, settings(&env, &[&a, &b], &other, &extra)).await;

    let started = Instant::now();
    let (status, body) = get(&gw, "/api/skus/1").await;
    let took = started.elapsed();
    assert_eq!(
        (status, body["code"].as_str()),
        (504, Some("upstream_timeout")),
        "{body}"
    );
    assert!(
        took >= Duration::from_millis(2_000) && took < Duration::from_millis(3_500),
        "answered at the overall timeout, not after it: {took:?}"
    );
    assert_eq!(
        a.hits() + b.hits(),
        2,
        "two attempts: the first timed out, the second was cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_when_the_budget_is_spent_and_refused_connections_are_502() {
    let env = TestEnv::new().await;
    let (dead, other) = (FakeUpstream::start("dead").await, FakeUpstream::start("o").await);
    // The dead instance is the inventory pool's: the counters below are totals of the process's
    // one metrics registry, and the other tests' gateways retry on the product pool.
    let dead_url = dead.url();
    let mut extra = NO_EJECTION.to_vec();
    extra.extend([
        ("MALL_GW_RETRY_RATIO", "0"),
        ("MALL_GW_RETRY_MIN_PER_SEC", "1"),
        ("MALL_UPSTREAM_INVENTORY", dead_url.as_str()),
    ]);
    let gw = spawn(&env, settings(&env, &[&other], &other, &extra)).await;
    dead.kill();
    for _ in 0..30 {
        let (status, body) = get(&gw, "/api/stock/1").await;
        assert_eq!((status, body["code"].as_str()), (502, Some("bad_gateway")));
    }
    let retries = metric(&gw, "gateway_retries_total", &[("pool", "inventory")]).await;
    let exhausted = metric(
        &gw,
        "gateway_retry_budget_exhausted_total",
        &[("pool", "inventory")],
    )
    .await;
    // Without a budget this would be 60 retries; the floor allows about 1/s over a 10 s window.
    assert!(retries <= 20.0, "retries {retries}");
    assert!(
        exhausted >= 15.0,
        "the budget refused retries to most requests: {exhausted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_fails_fast_half_opens_and_closes() {
    let env = TestEnv::new().await;
    let (up, other) = (FakeUpstream::start("p").await, FakeUpstream::start("o").await);
    up.set_failing(Some(500));
    let mut extra = NO_EJECTION.to_vec();
    extra.retain(|(k, _)| *k != "MALL_GW_BREAKER_MIN_CALLS");
    extra.extend([
        ("MALL_GW_BREAKER_MIN_CALLS", "5"),
        ("MALL_GW_BREAKER_WINDOW", "10"),
        ("MALL_GW_BREAKER_OPEN", "400ms"),
        ("MALL_GW_BREAKER_PROBES", "2"),
    ]);
    let gw = spawn(&env, settings(&env, &[&up], &other, &extra)).await;

    // From the breaker opening to reading its gauge, no other test's gateway may reset it.
    let gauges = GAUGES.write().await;
    for _ in 0..5 {
        assert_eq!(
            get(&gw, "/api/skus/1").await.0,
            500,
            "upstream errors pass through while closed"
        );
    }
    let hits = up.hits();
    let (status, body) = get(&gw, "/api/skus/1").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("upstream_unavailable"))
    );
    assert_eq!(up.hits(), hits, "an open circuit sends nothing upstream");
    assert_eq!(
        metric(&gw, "gateway_circuit_state", &[("pool", "product")]).await,
        2.0
    );
    drop(gauges);

    up.set_failing(None);
    let _gauges = GAUGES.write().await;
    // Fast 503s until the open period ends; then the first probe goes through.
    eventually(Duration::from_secs(5), "first probe", || async {
        match get(&gw, "/api/skus/1").await {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    assert_eq!(get(&gw, "/api/skus/1").await.0, 200, "second probe");
    assert_eq!(
        metric(&gw, "gateway_circuit_state", &[("pool", "product")]).await,
        0.0,
        "closed again"
    );
    for _ in 0..10 {
        assert_eq!(get(&gw, "/api/skus/1").await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_saturated_excess_requests_get_503_at_once_instead_of_queueing() {
    let env = TestEnv::new().await;
    let (up, other) = (FakeUpstream::start("p").await, FakeUpstream::start("o").await);
    up.set_delay(Duration::from_millis(800));
    let mut extra = NO_EJECTION.to_vec();
    extra.push(("MALL_GW_MAX_CONCURRENCY", "2"));
    let gw = spawn(&env, settings(&env, &[&up], &other, &extra)).await;

    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (client, url) = (gw.client().clone(), gw.url("/api/skus/1"));
            tokio::spawn(async move {
                let res = client.get(url).send().await.unwrap();
                let retry_after = res.headers().get("retry-after").is_some();
                let status = res.status().as_u16();
                let body: serde_json::Value = res.json().await.unwrap();
                (
                    status,
                    body["code"].as_str().unwrap_or("").to_owned(),
                    retry_after,
                )
            })
        })
        .collect();
    let mut shed = 0;
    for t in tasks {
        let (status, code, retry_after) = t.await.unwrap();
        if status == 503 {
            assert_eq!(code, "overloaded");
            assert!(retry_after, "Retry-After on a shed request");
            shed += 1;
        } else {
            assert_eq!(status, 200);
        }
    }
    assert!(shed >= 8, "only 2 may be in flight; shed {shed} of 12");
}
