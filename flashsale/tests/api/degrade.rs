//! Under pressure: excess purchases are shed at once, a failing Redis opens the breaker and is
//! answered fast, and the trace of a purchase runs through the hand-off to the order consumer.

use std::sync::Arc;
use std::time::Duration;

use mall_testkit::{ChaosProxy, TestEnv};
use serde_json::json;

use crate::helpers::{
    Options, Sale, Tweak, buy, buy_patiently, buy_until_admitted, purchase, redis_numbers, running, sale,
    token_ok,
};

fn through(proxy_url: url::Url, dependency: &'static str) -> Tweak<'static> {
    Box::new(move |s: &mut mall_flashsale::Settings| {
        *mall_testkit::checks::dependency_url(&mut s.platform, dependency) = proxy_url;
    })
}

/// One flashsale instance (with `flash` set) that reaches Redis through a breakable proxy,
/// selling `sku`, of which inventory holds `stock`.
async fn behind_a_redis_proxy(
    env: &TestEnv,
    sku: i64,
    stock: i64,
    flash: &[(&str, &str)],
) -> (Sale, ChaosProxy) {
    let redis_url = env.platform_settings(&mall_flashsale::config::DEFAULTS).redis.url;
    let (proxy, url) = ChaosProxy::for_url(&redis_url).await;
    let sale = sale(
        env,
        &[sku],
        stock,
        Options {
            single: true,
            flash,
            tweak_first: Some(through(url, "redis")),
            ..Options::default()
        },
    )
    .await;
    (sale, proxy)
}

/// A running session selling one unit of `sku` (limit 1) on an instance behind a Redis proxy,
/// and the purchase tokens of the buyers "first" and "late": (sale, proxy, session, tokens).
async fn one_unit_behind_a_redis_proxy(
    env: &TestEnv,
    sku: i64,
    flash: &[(&str, &str)],
) -> (Sale, ChaosProxy, i64, String, String) {
    let (sale, proxy) = behind_a_redis_proxy(env, sku, 10, flash).await;
    let fs = &sale.fs[0];
    let session = running(
        &sale,
        10,
        json!([{"sku_id": sku, "price_cents": 100, "quantity": 1, "per_user_limit": 1}]),
    )
    .await;
    let t_first = token_ok(fs, "first", session, sku).await;
    let t_late = token_ok(fs, "late", session, sku).await;
    (sale, proxy, session, t_first, t_late)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_purchases_are_shed_with_503_and_retry_after_instead_of_queueing() {
    let env = TestEnv::new().await;
    let (sale, proxy) = behind_a_redis_proxy(&env, 31, 100, &[("MALL_FLASHSALE_MAX_IN_FLIGHT", "2")]).await;
    let sale = Arc::new(sale);
    let session = running(
        &sale,
        10,
        json!([{"sku_id": 31, "price_cents": 100, "quantity": 100, "per_user_limit": 1}]),
    )
    .await;
    let mut tokens = Vec::new();
    for i in 0..30 {
        tokens.push(token_ok(&sale.fs[0], &format!("rush-{i}"), session, 31).await);
    }
    // Redis answers slowly: two purchases hold the two slots, the rest must not wait for them.
    proxy.set_delay(Duration::from_millis(200));
    let tasks: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let sale = sale.clone();
            tokio::spawn(async move {
                let res = crate::helpers::user(
                    sale.fs[0]
                        .client()
                        .post(sale.fs[0].url("/api/flashsale/purchase")),
                    &format!("rush-{i}"),
                )
                .json(&purchase(session, 31, 1, &t, "r"))
                .send()
                .await
                .unwrap();
                let retry_after = res.headers().get("retry-after").is_some();
                let status = res.status().as_u16();
                let body: serde_json::Value = res.json().await.unwrap();
                (status, body, retry_after)
            })
        })
        .collect();
    let (mut shed, mut served) = (0, 0);
    for t in tasks {
        let (status, body, retry_after) = t.await.unwrap();
        match (status, body["code"].as_str()) {
            (503, Some("overloaded")) => {
                // `overloaded` is only answered at the in-flight limit, before any Redis call.
                assert!(retry_after, "Retry-After on a shed request");
                shed += 1;
            }
            // Went to the slow Redis: admitted, or timed out there (the slow call's own answer).
            (202, _) | (503, Some("unavailable")) => served += 1,
            _ => panic!("{status}: {body}"),
        }
    }
    assert!(
        shed >= 20,
        "most of the rush is shed: {shed} shed, {served} served"
    );
    assert!(served >= 1, "the slots still serve");
    assert!(served <= 10, "only what the slots hold reaches Redis: {served}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_redis_opens_the_breaker_which_answers_503_fast_and_closes_after_recovery() {
    let env = TestEnv::new().await;
    let (sale, proxy) = behind_a_redis_proxy(
        &env,
        32,
        100,
        &[
            ("MALL_FLASHSALE_BREAKER_FAILURES", "3"),
            ("MALL_FLASHSALE_BREAKER_OPEN", "500ms"),
            ("MALL_REDIS_TIMEOUT", "200ms"),
        ],
    )
    .await;
    let fs = &sale.fs[0];
    let session = running(
        &sale,
        10,
        json!([{"sku_id": 32, "price_cents": 100, "quantity": 100, "per_user_limit": 5}]),
    )
    .await;
    let t = token_ok(fs, "steady", session, 32).await;
    proxy.cut();
    for i in 0..3 {
        let (status, body) = buy(fs, "steady", purchase(session, 32, 1, &t, &format!("down-{i}"))).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (503, Some("unavailable")),
            "{body}"
        );
    }
    // Open: answered without touching Redis.
    for i in 0..20 {
        let (status, body) = buy(fs, "steady", purchase(session, 32, 1, &t, &format!("open-{i}"))).await;
        assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")));
        // The open breaker's own answer, not a timed-out Redis call's.
        assert_eq!(body["message"], "the sale's store is failing; retry", "{i}");
    }
    proxy.restore();
    let (status, body) = buy_until_admitted(
        fs,
        "steady",
        Duration::from_secs(10),
        "the breaker closes after a good probe",
        || purchase(session, 32, 1, &t, "after"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_sold_out_flag_is_rechecked_without_a_buyer_waiting_on_redis() {
    let env = TestEnv::new().await;
    let (sale, proxy, session, t_first, t_late) = one_unit_behind_a_redis_proxy(
        &env,
        34,
        &[
            ("MALL_REDIS_TIMEOUT", "300ms"),
            ("MALL_FLASHSALE_BREAKER_FAILURES", "100"),
            ("MALL_FLASHSALE_SOLD_OUT_TTL", "200ms"),
        ],
    )
    .await;
    let fs = &sale.fs[0];
    let (status, _) = buy_patiently(fs, "first", purchase(session, 34, 1, &t_first, "f")).await;
    assert_eq!(status, 202, "the only unit");
    let (status, body) = buy(fs, "late", purchase(session, 34, 1, &t_late, "l0")).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("sold_out")), "{body}");

    // Redis is unreachable while the flag runs out, again and again: every late buyer is still
    // told sold_out at once, from memory, and none waits on the re-checks (which fail). With
    // Redis cut off, a 409 can only come from memory (the script's path would be a 503). The
    // sold-out answer counter cannot tell: the instances of the tests running beside this one
    // count into the same process-wide registry.
    proxy.cut();
    for i in 0..8 {
        // Past the flag's ttl each time, so every purchase meets a flag that ran out.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, body) = buy(fs, "late", purchase(session, 34, 1, &t_late, &format!("l{i}"))).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (409, Some("sold_out")),
            "{i}: {body}"
        );
    }

    // A unit comes back (as an unpaid order's would): once Redis answers, a re-check reads it
    // and the next buyers go to the script again.
    proxy.restore();
    let redis = crate::helpers::redis(&env);
    let keys = mall_flashsale::store::admission::ItemKeys::new(&redis, session, 34);
    let mut conn = redis.conn().await.unwrap();
    let () = mall_common::redis::client::cmd("INCR")
        .arg(&keys.stock)
        .query_async(&mut *conn)
        .await
        .unwrap();
    let (status, body) = buy_until_admitted(
        fs,
        "late",
        Duration::from_secs(10),
        "the unit is sold again",
        || purchase(session, 34, 1, &t_late, "again"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(redis_numbers(&env, session, 34).await, (0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_whose_answer_was_lost_reaches_redis_on_retry_until_redis_answers_it() {
    let env = TestEnv::new().await;
    let (sale, proxy, session, t_first, t_late) = one_unit_behind_a_redis_proxy(
        &env,
        33,
        &[
            ("MALL_REDIS_TIMEOUT", "200ms"),
            ("MALL_FLASHSALE_BREAKER_FAILURES", "100"),
            // Long enough that the flag cannot lapse between the requests below.
            ("MALL_FLASHSALE_SOLD_OUT_TTL", "60s"),
        ],
    )
    .await;
    let fs = &sale.fs[0];
    // The script's recorded answer to the late buyer's request id: present once the script has
    // answered it. (Told apart this way and by cutting Redis off, not by the sold-out answer
    // counter, which the instances of the tests running beside this one share.)
    let redis = crate::helpers::redis(&env);
    let keys = mall_flashsale::store::admission::ItemKeys::new(&redis, session, 33);
    let recorded = || async {
        let mut conn = redis.conn().await.unwrap();
        mall_common::redis::client::cmd("HGET")
            .arg(&keys.requests)
            .arg("4:late:lost")
            .query_async::<Option<String>>(&mut *conn)
            .await
            .unwrap()
    };

    // Redis fails under the late buyer's purchase: the instance cannot know whether it ran.
    proxy.cut();
    let (status, body) = buy(fs, "late", purchase(session, 33, 1, &t_late, "lost")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    proxy.restore();
    let (status, _) = buy_patiently(fs, "first", purchase(session, 33, 1, &t_first, "f")).await;
    assert_eq!(status, 202, "the last unit");

    // Sold out and flagged, yet the uncertain purchase's retry goes to Redis, whose answer is
    // the first one (had it been admitted, this would be its 202)...
    assert_eq!(
        recorded().await,
        None,
        "the cut-off purchase never reached the script"
    );
    let (status, body) = buy(fs, "late", purchase(session, 33, 1, &t_late, "lost")).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("sold_out")), "{body}");
    assert_eq!(
        recorded().await.as_deref(),
        Some("-4:0:"),
        "the retry was answered by the script"
    );
    // ...and once Redis has answered it, its next retry is answered from memory like any
    // other: with Redis cut off again it still gets its 409, not a 503.
    proxy.cut();
    let (status, body) = buy(fs, "late", purchase(session, 33, 1, &t_late, "lost")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("sold_out")),
        "answered from the flag: {body}"
    );
    proxy.restore();
    assert_eq!(redis_numbers(&env, session, 33).await, (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_purchase_through_the_hand_off_to_the_order_consumer() {
    use mall_testkit::spans::Via;
    let spans = mall_testkit::collector();
    let env = TestEnv::new().await;
    let sale = sale(
        &env,
        &[33],
        10,
        Options {
            single: true,
            ..Options::default()
        },
    )
    .await;
    let fs = &sale.fs[0];
    let session = running(
        &sale,
        10,
        json!([{"sku_id": 33, "price_cents": 100, "quantity": 5, "per_user_limit": 1}]),
    )
    .await;
    let t = token_ok(fs, "traced", session, 33).await;
    let trace_id = "7e1f0a2b3c4d5e6f708192a3b4c5d6e7";
    let res = crate::helpers::user(fs.client().post(fs.url("/api/flashsale/purchase")), "traced")
        .header("traceparent", format!("00-{trace_id}-3333333333333333-01"))
        .json(&purchase(session, 33, 1, &t, "traced"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);

    let consumer = spans
        .wait_for(Via::Otlp, trace_id, "the order consumer's span", |s| {
            s.kind == "consumer" && s.name.contains("flashsale-admissions")
        })
        .await;
    let parent = |child: &mall_testkit::spans::CollectedSpan| spans.parent_of(Via::Otlp, child);
    let handoff = parent(&consumer);
    assert_eq!(handoff.kind, "producer", "the hand-off's publish span");
    let admit = parent(&handoff);
    assert_eq!(admit.name, "flashsale.admit");
    assert_eq!(
        admit.attributes.get("result").map(String::as_str),
        Some("admitted"),
        "{admit:?}"
    );
    let server = parent(&admit);
    assert_eq!(server.kind, "server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_purchase_and_readiness_probe_after_redis_returns_succeed() {
    let env = TestEnv::new().await;
    let (sale, proxy) = behind_a_redis_proxy(&env, 35, 10, &[("MALL_REDIS_TIMEOUT", "300ms")]).await;
    let fs = &sale.fs[0];
    let session = running(
        &sale,
        10,
        json!([{"sku_id": 35, "price_cents": 100, "quantity": 5, "per_user_limit": 5}]),
    )
    .await;
    let t = token_ok(fs, "steady", session, 35).await;
    // While Redis is away a purchase fails, as does readiness.
    proxy.cut();
    let (status, body) = buy(fs, "steady", purchase(session, 35, 1, &t, "down")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    assert_eq!(fs.get("/readyz").await.status(), 503);
    proxy.restore();
    // Back: the very next purchase and probes succeed.
    let (status, body) = buy(fs, "steady", purchase(session, 35, 1, &t, "back")).await;
    assert_eq!(status, 202, "{body}");
    for _ in 0..4 {
        assert_eq!(fs.get("/readyz").await.status(), 200);
    }
}
