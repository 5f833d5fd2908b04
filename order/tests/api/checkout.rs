//! Checkout: never oversell, one order per idempotency key, clear refusals that change nothing,
//! and orders that survive a RabbitMQ outage.

use std::time::Duration;

use mall_testkit::{ChaosProxy, TestEnv, eventually};
use serde_json::json;

use crate::helpers::{
    SECRET, SETTLE, checkout, mall, mall_with, order_db, pay, reservation_status, stock, user,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_checkouts_for_fifty_units_sell_exactly_fifty() {
    let env = TestEnv::new().await;
    let m = mall(&env, 3, 50, &[]).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (client, url) = (m.order.client().clone(), m.order.url("/api/orders"));
            tokio::spawn(async move {
                // A 503 (a dependency saturated on a loaded machine) changes nothing and says when
                // to retry: the buyer does, with the same key, as a real client would.
                for _ in 0..20 {
                    let res = user(client.post(&url), &format!("buyer-{i}"))
                        .header("idempotency-key", format!("key-{i}"))
                        .json(&json!({ "items": [{"sku_id": 2, "quantity": 1}] }))
                        .send()
                        .await
                        .unwrap();
                    let status = res.status().as_u16();
                    let retry_after = res
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse().ok());
                    let body = res.json::<serde_json::Value>().await.unwrap();
                    match (status, retry_after) {
                        (503, Some(secs)) => tokio::time::sleep(Duration::from_secs(secs)).await,
                        _ => return (status, body),
                    }
                }
                panic!("buyer-{i}: 503 twenty times")
            })
        })
        .collect();
    let (mut placed, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (201, body) => {
                assert_eq!(body["status"], "pending_payment");
                placed += 1;
            }
            (409, body) => {
                assert_eq!(body["code"], "out_of_stock");
                assert_eq!(body["skus"], json!([2]));
                refused += 1;
            }
            (s, b) => panic!("{s}: {b}"),
        }
    }
    assert_eq!((placed, refused), (50, 150));
    assert_eq!(stock(&env, 2).await, (0, 50, 0, 50));
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(order_db(&env).pool())
        .await
        .unwrap();
    assert_eq!(orders, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_sent_twenty_times_at_once_creates_one_order() {
    let env = TestEnv::new().await;
    let m = mall(&env, 3, 10, &[]).await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (m.order.client().clone(), m.order.url("/api/orders"));
            tokio::spawn(async move {
                // A client that honours 409 in_progress: retry until the first attempt answers.
                eventually(
                    Duration::from_secs(10),
                    "an answer other than in_progress",
                    || {
                        let req = user(client.post(url.clone()), "alice")
                            .header("idempotency-key", "same-key")
                            .json(&json!({ "items": [{"sku_id": 1, "quantity": 2}] }));
                        async move {
                            let res = req.send().await.unwrap();
                            let status = res.status().as_u16();
                            let retry_after = res.headers().get("retry-after").cloned();
                            let body = res.json::<serde_json::Value>().await.unwrap();
                            if status == 409 && body["code"] == "in_progress" {
                                assert_eq!(retry_after.as_ref().map(|v| v.to_str().unwrap()), Some("1"));
                                return Err(body.to_string());
                            }
                            Ok((status, body))
                        }
                    },
                )
                .await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert!(status == 201 || status == 200, "{status}: {body}");
        ids.push(body["order_id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every answer names the same order");
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(order_db(&env).pool())
        .await
        .unwrap();
    assert_eq!(orders, 1);
    assert_eq!(stock(&env, 1).await, (8, 2, 0, 10));

    let (status, body) = checkout(
        &m.order,
        "alice",
        "same-key",
        json!({ "items": [{"sku_id": 1, "quantity": 3}] }),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    // Prices come from the product service, never from the client.
    let (_, product) = {
        let r = m
            .product
            .client()
            .get(m.product.url("/api/skus/1"))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<serde_json::Value>().await.unwrap())
    };
    let (_, order) = {
        let r = user(
            m.order
                .client()
                .get(m.order.url(&format!("/api/orders/{}", ids[0]))),
            "alice",
        )
        .send()
        .await
        .unwrap();
        (r.status(), r.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(
        order["total_cents"],
        json!(product["price_cents"].as_i64().unwrap() * 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_checkouts_get_clear_errors_and_change_nothing() {
    let env = TestEnv::new().await;
    let m = mall(&env, 3, 5, &[]).await;
    for (body, status, code) in [
        (
            json!({ "items": [{"sku_id": 1, "quantity": 0}] }),
            422,
            "validation_failed",
        ),
        (
            json!({ "items": [{"sku_id": 1, "quantity": -2}] }),
            422,
            "validation_failed",
        ),
        (json!({ "items": [] }), 422, "validation_failed"),
        (
            json!({ "items": [{"sku_id": 999, "quantity": 1}] }),
            422,
            "unknown_sku",
        ),
        (
            json!({ "items": [{"sku_id": 1, "quantity": 1}], "price_cents": 1 }),
            422,
            "invalid_body",
        ),
        (json!({ "from_cart": true }), 422, "empty_cart"),
    ] {
        let (s, b) = checkout(&m.order, "bob", &uuid::Uuid::new_v4().to_string(), body.clone()).await;
        assert_eq!((s, b["code"].as_str()), (status, Some(code)), "{body}");
    }
    let no_key = user(m.order.client().post(m.order.url("/api/orders")), "bob")
        .json(&json!({ "items": [{"sku_id": 1, "quantity": 1}] }))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 400);
    let anonymous = m
        .order
        .client()
        .post(m.order.url("/api/orders"))
        .header("idempotency-key", "k")
        .json(&json!({"items": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let malformed = user(m.order.client().post(m.order.url("/api/orders")), "bob")
        .header("idempotency-key", "k2")
        .header("content-type", "application/json")
        .body("{\"items\":")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);

    let (s, b) = checkout(
        &m.order,
        "bob",
        "mine",
        json!({ "items": [{"sku_id": 1, "quantity": 1}] }),
    )
    .await;
    assert_eq!(s, 201);
    let id = b["order_id"].as_str().unwrap();
    let other = user(
        m.order.client().get(m.order.url(&format!("/api/orders/{id}"))),
        "mallory",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(
        other.status(),
        404,
        "another user's order does not exist for them"
    );
    let forged = m
        .order
        .client()
        .post(m.order.url("/api/payments/callback"))
        .header("x-signature", "00ff")
        .json(&json!({ "payment_id": "p-1", "order_id": id, "amount_cents": b["total_cents"], "status": "succeeded" }))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let (s, body) = pay(&m.order, &json!({ "payment_id": "p-2", "order_id": id, "amount_cents": b["total_cents"], "status": "succeeded" }), "wrong-secret").await;
    assert_eq!((s, body["code"].as_str()), (401, Some("invalid_signature")));
    // Signed, but a NUL PostgreSQL cannot store: refused by the handler, not a 500.
    let (s, body) = pay(&m.order, &json!({ "payment_id": "p-\u{0}", "order_id": id, "amount_cents": b["total_cents"], "status": "succeeded" }), SECRET).await;
    assert_eq!((s, body["code"].as_str()), (422, Some("validation_failed")));
    assert!(
        body["message"].as_str().unwrap().starts_with("payment_id:"),
        "{body}"
    );

    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(order_db(&env).pool())
        .await
        .unwrap();
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(order_db(&env).pool())
        .await
        .unwrap();
    assert_eq!((orders, payments), (1, 0));
    assert_eq!(stock(&env, 1).await, (4, 1, 0, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rabbitmq_unreachable_orders_succeed_and_their_events_are_delivered_later() {
    let env = TestEnv::new().await;
    let amqp_url = env.platform_settings(&mall_order::config::DEFAULTS).amqp.url;
    let (proxy, through) = ChaosProxy::for_url(&amqp_url).await;
    let m = mall_with(&env, 3, 10, &[], |s| s.platform.amqp.url = through).await;
    proxy.cut();

    let mut ids = Vec::new();
    for i in 0..3 {
        let (s, b) = checkout(
            &m.order,
            "carol",
            &format!("k{i}"),
            json!({ "items": [{"sku_id": 3, "quantity": 1}] }),
        )
        .await;
        assert_eq!(s, 201, "{b}");
        ids.push((
            b["order_id"].as_str().unwrap().to_owned(),
            b["total_cents"].clone(),
        ));
    }
    for (id, total) in &ids[..2] {
        let (s, b) = pay(&m.order, &json!({ "payment_id": format!("pay-{id}"), "order_id": id, "amount_cents": total, "status": "succeeded" }), SECRET).await;
        assert_eq!((s, b["outcome"].as_str()), (200, Some("applied")));
    }
    let db = order_db(&env);
    let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert!(
        unsent >= 5,
        "3 timeouts and 2 order.paid wait in the outbox: {unsent}"
    );
    assert_eq!(
        stock(&env, 3).await,
        (7, 3, 0, 10),
        "nothing confirmed while the broker is away"
    );

    proxy.restore();
    eventually(
        SETTLE,
        "the paid orders' stock is sold once the events flow",
        || async {
            let s = stock(&env, 3).await;
            if s == (7, 1, 2, 10) { Ok(()) } else { Err(s) }
        },
    )
    .await;
    let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(unsent, 0);
    assert_eq!(reservation_status(&env, &ids[2].0).await, "reserved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_the_order_api() {
    let env = TestEnv::new().await;
    let m = mall(&env, 1, 1, &[]).await;
    let doc: serde_json::Value = m.order.get("/openapi.json").await.json().await.unwrap();
    for path in [
        "/api/orders",
        "/api/orders/{order_id}",
        "/api/orders/{order_id}/cancel",
        "/api/cart",
        "/api/payments/callback",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
}

#[test]
fn the_cli_signs_callbacks_the_service_accepts() {
    let body = r#"{"payment_id":"p","order_id":"00000000-0000-0000-0000-000000000000","amount_cents":1,"status":"succeeded"}"#;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mall-order"))
        .args(["sign-callback", body])
        .env_clear()
        .output()
        .expect("run mall-order sign-callback");
    assert!(out.status.success());
    let sig = String::from_utf8(out.stdout).unwrap();
    assert!(mall_order::domain::verify(
        crate::helpers::SECRET.as_bytes(),
        body.as_bytes(),
        sig.trim()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_attempt_failed_is_free_at_once_and_a_live_one_answers_in_progress() {
    let env = TestEnv::new().await;
    // Inventory is a closed port: every checkout fails for a passing reason.
    let m = mall(&env, 3, 10, &[("MALL_INVENTORY_URLS", "http://127.0.0.1:1")]).await;
    let db = order_db(&env);
    let body = json!({ "items": [{"sku_id": 1, "quantity": 1}] });
    let key_row = || async {
        sqlx::query_as::<_, (String, uuid::Uuid, String, bool)>(
            "SELECT user_id, order_id, state, locked_until <= now() FROM idempotency_keys WHERE key = 'retry-me'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap()
    };

    let (status, first) = checkout(&m.order, "bob", "retry-me", body.clone()).await;
    assert_eq!(
        (status, first["code"].as_str()),
        (503, Some("unavailable")),
        "{first}"
    );
    let (user_id, order_id, state, lapsed) = key_row().await;
    assert_eq!(state, "in_progress");
    assert!(lapsed, "the failed attempt did not free its key");
    // The retry is a new attempt at once, with the same order id (before: it waited out the
    // first attempt's lease and answered 500).
    let (status, second) = checkout(&m.order, "bob", "retry-me", body.clone()).await;
    assert_eq!(
        (status, second["code"].as_str()),
        (503, Some("unavailable")),
        "{second}"
    );
    assert_eq!(key_row().await.1, order_id);
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(orders, 0);

    // A key held by a live attempt: the repeat is told so at once, with when to retry.
    let items = mall_order::domain::normalize(vec![mall_order::domain::Item {
        sku_id: 1,
        quantity: 1,
    }])
    .unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, request_hash, order_id, state, locked_until)
         VALUES ($1, 'held', $2, $3, 'in_progress', now() + interval '30 seconds')",
    )
    .bind(&user_id)
    .bind(mall_order::domain::request_hash(&items))
    .bind(uuid::Uuid::now_v7())
    .execute(db.pool())
    .await
    .unwrap();
    let res = user(m.order.client().post(m.order.url("/api/orders")), "bob")
        .header("idempotency-key", "held")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 409);
    assert_eq!(res.headers().get("retry-after").unwrap(), "1");
    let answer: serde_json::Value = res.json().await.unwrap();
    assert_eq!(answer["code"], "in_progress", "{answer}");
}
