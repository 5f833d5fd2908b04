//! The layered cache under hostile read patterns.

use std::time::Duration;

use futures_util::StreamExt;
use mall_common::redis::{Redis, client};
use mall_product::config::DEFAULTS;
use mall_testkit::{ChaosProxy, TestEnv, eventually};

use crate::helpers::{as_user, drop_from_l1, get, metric, seed_catalog, settings, spawn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_unknown_ids_reach_the_database_at_most_one_percent_of_the_time() {
    let env = TestEnv::new().await;
    seed_catalog(&env, 3_000).await;
    let app = spawn(&env, settings(&env, &[])).await;
    assert_eq!(get(&app, "/api/skus/1").await.0, 200);
    let before = metric(&app, &env, "product_db_loads_total", &[]).await;

    let mut rng = 0x1234_5678_u64;
    let ids: Vec<u64> = (0..10_000)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            10_000 + rng % 1_000_000_000
        })
        .collect();
    for chunk in ids.chunks(200) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|id| {
                let (client, url) = (app.client().clone(), app.url(&format!("/api/skus/{id}")));
                tokio::spawn(async move { client.get(url).send().await.unwrap().status().as_u16() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 404);
        }
    }
    let loads = metric(&app, &env, "product_db_loads_total", &[]).await - before;
    let rejected = metric(&app, &env, "product_bloom_rejections_total", &[]).await;
    assert!(loads <= 100.0, "{loads} database lookups for 10000 unknown ids");
    assert!(rejected >= 9_900.0, "the filter answered {rejected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_reads_of_an_expired_hot_key_over_two_instances_load_it_once() {
    let env = TestEnv::new().await;
    seed_catalog(&env, 300).await;
    let a = spawn(&env, settings(&env, &[])).await;
    let b = spawn(&env, settings(&env, &[])).await;
    let redis = Redis::connect_lazy(&env.platform_settings(&DEFAULTS).redis).unwrap();
    let l2_key = redis.key("product:{sku:7}");

    for (label, expire) in [("logically expired", true), ("missing from L2", false)] {
        assert_eq!(get(&a, "/api/skus/7").await.0, 200);
        let mut conn = redis.conn().await.unwrap();
        if expire {
            // Keep the value but move its logical expiry into the past: the entry "just expired".
            let raw: Vec<u8> = client::cmd("GET")
                .arg(&l2_key)
                .query_async(&mut *conn)
                .await
                .unwrap();
            let bar = raw.iter().position(|c| *c == b'|').unwrap();
            let mut stale = b"1|".to_vec();
            stale.extend_from_slice(&raw[bar + 1..]);
            let _: () = client::cmd("SET")
                .arg(&l2_key)
                .arg(stale)
                .query_async(&mut *conn)
                .await
                .unwrap();
        } else {
            let _: i64 = client::cmd("DEL")
                .arg(&l2_key)
                .query_async(&mut *conn)
                .await
                .unwrap();
        }
        drop_from_l1(&a, &env, "sku:7", 2).await;
        let before = metric(&a, &env, "product_db_loads_total", &[("kind", "sku")]).await;
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let app = if i % 2 == 0 { &a } else { &b };
                let (client, url) = (app.client().clone(), app.url("/api/skus/7"));
                tokio::spawn(async move {
                    let res = client.get(url).send().await.unwrap();
                    (
                        res.status().as_u16(),
                        res.json::<serde_json::Value>().await.unwrap(),
                    )
                })
            })
            .collect();
        for t in tasks {
            let (status, body) = t.await.unwrap();
            assert_eq!((status, body["sku_id"].as_i64()), (200, Some(7)), "{label}");
        }
        // A background rebuild (the expired case) finishes after the answers: its lock is
        // released once the new value is in L2.
        let lock_key = redis.key("product:lock:{sku:7}");
        eventually(Duration::from_secs(5), "the rebuild lock is released", || async {
            let mut conn = redis.conn().await.map_err(|e| e.to_string())?;
            let held: bool = client::cmd("EXISTS")
                .arg(&lock_key)
                .query_async(&mut *conn)
                .await
                .map_err(|e| e.to_string())?;
            if held { Err("held".to_owned()) } else { Ok(()) }
        })
        .await;
        let loads = metric(&a, &env, "product_db_loads_total", &[("kind", "sku")]).await - before;
        assert_eq!(loads, 1.0, "{label}: database loads across both instances");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_written_together_expire_spread_over_the_jitter_window() {
    let env = TestEnv::new().await;
    seed_catalog(&env, 150).await;
    let app = spawn(
        &env,
        settings(
            &env,
            &[("MALL_PRODUCT_L2_TTL", "100s"), ("MALL_PRODUCT_L2_JITTER", "0.2")],
        ),
    )
    .await;
    let redis = Redis::connect_lazy(&env.platform_settings(&DEFAULTS).redis).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut expiries = Vec::new();
    for id in 1..=60 {
        assert_eq!(get(&app, &format!("/api/skus/{id}")).await.0, 200);
        let mut conn = redis.conn().await.unwrap();
        let raw: Vec<u8> = client::cmd("GET")
            .arg(redis.key(&format!("product:{{sku:{id}}}")))
            .query_async(&mut *conn)
            .await
            .unwrap();
        let bar = raw.iter().position(|c| *c == b'|').unwrap();
        let exp: u64 = std::str::from_utf8(&raw[..bar]).unwrap().parse().unwrap();
        expiries.push((exp - now) as f64 / 1000.0);
    }
    let (min, max) = expiries
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), e| (lo.min(*e), hi.max(*e)));
    assert!(
        min >= 79.0 && max <= 121.0,
        "expiries stay within 100s ± 20%: {min:.1}..{max:.1}"
    );
    assert!(
        max - min >= 20.0,
        "60 entries written together spread over the window: {min:.1}..{max:.1}"
    );
    let in_lower_half = expiries.iter().filter(|e| **e < 100.0).count();
    assert!(
        (15..=45).contains(&in_lower_half),
        "roughly uniform: {in_lower_half} of 60 below the mean"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_change_and_a_delisting_show_on_both_instances_within_the_l1_ttl() {
    let env = TestEnv::new().await;
    seed_catalog(&env, 90).await;
    let a = spawn(&env, settings(&env, &[])).await;
    let b = spawn(&env, settings(&env, &[])).await;
    for app in [&a, &b] {
        assert_eq!(get(app, "/api/skus/11").await.0, 200);
        assert_eq!(get(app, "/api/products/4").await.0, 200);
    }

    let res = as_user(a.client().patch(a.url("/admin/skus/11")), "1", &["admin"])
        .json(&serde_json::json!({"price_cents": 4242}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    for app in [&a, &b] {
        eventually(
            Duration::from_millis(400),
            "the new price everywhere within the L1 TTL",
            || async {
                let (_, body) = get(app, "/api/skus/11").await;
                if body["price_cents"] == 4242 {
                    Ok(())
                } else {
                    Err(body)
                }
            },
        )
        .await;
    }

    let res = as_user(b.client().delete(b.url("/admin/skus/11")), "1", &["admin"])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    for app in [&a, &b] {
        eventually(
            Duration::from_millis(400),
            "a delisted SKU is 404 everywhere",
            || async {
                let (status, body) = get(app, "/api/skus/11").await;
                if status == 404 && body["code"] == "not_found" {
                    Ok(())
                } else {
                    Err(status)
                }
            },
        )
        .await;
    }
    let invalidations = metric(&a, &env, "product_invalidations_received_total", &[]).await;
    assert!(
        invalidations >= 2.0,
        "instances applied broadcast invalidations: {invalidations}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_reads_still_succeed_from_the_database_at_a_bounded_rate() {
    let env = TestEnv::new().await;
    seed_catalog(&env, 600).await;
    // Loads from Postgres allowed at once while Redis is down.
    const PERMITS: usize = 4;
    let mut s = settings(&env, &[("MALL_PRODUCT_DB_CONCURRENCY", &PERMITS.to_string())]);
    let (proxy, url) = ChaosProxy::for_url(&s.platform.redis.url).await;
    s.platform.redis.url = url;
    let app = spawn(&env, s).await;
    assert_eq!(get(&app, "/api/skus/1").await.0, 200);

    proxy.cut();
    let body = app.wait_readyz(503).await;
    assert_eq!(body["checks"]["redis"]["status"], "down", "{body}");

    let tasks: Vec<_> = (1..=200)
        .map(|id| {
            let (client, url) = (app.client().clone(), app.url(&format!("/api/skus/{id}")));
            tokio::spawn(async move {
                let res = client.get(url).send().await.unwrap();
                let status = res.status().as_u16();
                let body: serde_json::Value = res.json().await.unwrap();
                (status, body)
            })
        })
        .collect();
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => ok += 1,
            (503, body) => {
                assert_eq!(body["code"], "overloaded");
                shed += 1;
            }
            (status, body) => panic!("{status}: {body}"),
        }
    }
    // The first permits are free, so a burst is never shed whole; how many more are served
    // within the permit wait depends on the machine's speed, so only the floor is asserted.
    assert!(
        ok >= PERMITS,
        "a burst is served up to the permits before any is shed: ok {ok}, shed {shed}"
    );

    // At the permitted concurrency no read waits for a permit: every one is served.
    let steady: Vec<u16> = futures_util::stream::iter(201..=300)
        .map(|id| {
            let app = &app;
            async move { get(app, &format!("/api/skus/{id}")).await.0 }
        })
        .buffer_unordered(PERMITS)
        .collect()
        .await;
    let served = steady.iter().filter(|s| **s == 200).count();
    assert_eq!(served, 100, "reads at the permitted concurrency: {steady:?}");
    let peak = metric(&app, &env, "product_db_inflight_peak", &[]).await;
    assert!(
        peak <= PERMITS as f64,
        "never more than MALL_PRODUCT_DB_CONCURRENCY loads at once: {peak}"
    );
    assert!(metric(&app, &env, "product_redis_fallbacks_total", &[]).await >= 1.0);

    proxy.restore();
    app.wait_ready().await;
    assert_eq!(get(&app, "/api/skus/3").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_and_redis_calls_are_child_spans_of_the_request_span() {
    let spans = mall_testkit::collector();
    let env = TestEnv::new().await;
    seed_catalog(&env, 30).await;
    let app = spawn(&env, settings(&env, &[])).await;
    let trace_id = "7be2a4e6f1c84c3a9d3d2f5e8a1b0c9d";
    let res = app
        .client()
        .get(app.url("/api/skus/9"))
        .header("traceparent", format!("00-{trace_id}-1111111111111111-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    use mall_testkit::spans::Via;
    let server = spans
        .wait_for(Via::Otlp, trace_id, "server span", |s| s.kind == "server")
        .await;
    let sql = spans
        .wait_for(Via::Otlp, trace_id, "SQL span", |s| {
            s.attributes.get("db.system").map(String::as_str) == Some("postgresql")
        })
        .await;
    let redis = spans
        .wait_for(Via::Otlp, trace_id, "Redis span", |s| {
            s.attributes.get("db.system").map(String::as_str) == Some("redis")
        })
        .await;
    let all = spans.spans(Via::Otlp, trace_id);
    // Walk each store span's parents up to the request's server span.
    for child in [&sql, &redis] {
        let mut at = child.clone();
        let mut hops = 0;
        while at.span_id != server.span_id {
            let parent = at.parent_span_id.clone().expect("a parent");
            at = all
                .iter()
                .find(|s| s.span_id == parent)
                .cloned()
                .expect("the parent is in the trace");
            hops += 1;
            assert!(hops < 10);
        }
        assert_eq!(child.kind, "client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_seeded_behind_a_running_instance_is_found_once_its_filters_are_forgotten() {
    let env = TestEnv::new().await;
    // An instance builds its filters from an empty catalog.
    let app = spawn(&env, settings(&env, &[])).await;
    eventually(Duration::from_secs(10), "the filters are built", || async {
        match app.client().get(app.url("/readyz")).send().await {
            Ok(res) if res.status() == 200 => Ok(()),
            _ => Err("not ready"),
        }
    })
    .await;
    // The seed writes to the database alone (as `mall-product seed` does), then forgets the
    // filters in Redis, as that command now does: the instance rebuilds them and finds the ids.
    seed_catalog(&env, 30).await;
    let redis = Redis::connect_lazy(&env.platform_settings(&DEFAULTS).redis).unwrap();
    mall_product::store::bloom::Bloom::forget_all(&redis)
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "seeded SKUs are found", || async {
        let found = [1, 2, 3, 10, 20, 30];
        for id in found {
            if get(&app, &format!("/api/skus/{id}")).await.0 != 200 {
                return Err("a seeded SKU is still unknown");
            }
        }
        Ok(())
    })
    .await;
}
