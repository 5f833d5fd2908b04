//! Payment, timeout and cancellation: exactly one ending per order, stock settled once.

use mall_testkit::{TestEnv, eventually};
use serde_json::{Value, json};

use crate::helpers::{SECRET, SETTLE, checkout, mall, order_db, pay, reservation_status, stock, user};

async fn order_status(m: &crate::helpers::Mall, buyer: &str, id: &str) -> Value {
    let res = user(
        m.order.client().get(m.order.url(&format!("/api/orders/{id}"))),
        buyer,
    )
    .send()
    .await
    .unwrap();
    res.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_order_times_out_and_its_stock_is_released_once_even_without_the_delay_message() {
    // (how it is cancelled, the order service's variables, whether the order is made due at
    // once because its hold message "was lost": it waits an hour)
    let cases = [
        (
            "by its delay message",
            [("MALL_ORDER_TTL", "2s"), ("MALL_ORDER_SWEEP_INTERVAL", "1h")],
            false,
        ),
        (
            "by the sweeper alone",
            [("MALL_ORDER_TTL", "1h"), ("MALL_ORDER_SWEEP_INTERVAL", "200ms")],
            true,
        ),
    ];
    for (how, vars, lost_message) in cases {
        let env = TestEnv::new().await;
        let m = mall(&env, 1, 5, &vars).await;
        let (s, b) = checkout(
            &m.order,
            "dan",
            "t1",
            json!({ "items": [{"sku_id": 1, "quantity": 2}] }),
        )
        .await;
        assert_eq!(s, 201, "{how}: {b}");
        let id = b["order_id"].as_str().unwrap().to_owned();
        let db = order_db(&env);
        if lost_message {
            sqlx::query("UPDATE orders SET expires_at = now() - interval '1 second' WHERE id = $1::uuid")
                .bind(&id)
                .execute(db.pool())
                .await
                .unwrap();
        }
        eventually(SETTLE, &format!("cancelled {how}"), || async {
            let o = order_status(&m, "dan", &id).await;
            if o["status"] == "cancelled" && o["cancel_reason"] == "timeout" {
                Ok(())
            } else {
                Err(o)
            }
        })
        .await;
        eventually(SETTLE, &format!("stock released {how}"), || async {
            let s = stock(&env, 1).await;
            if s == (5, 0, 0, 5) { Ok(()) } else { Err(s) }
        })
        .await;
        // A later sweep finds nothing more to cancel, and the cancellation's one event is sent.
        let again = mall_order::store::sweep_expired(&db, 100).await.expect("sweep");
        assert_eq!(again, 0, "{how}: a later sweep cancels nothing");
        mall_testkit::outbox_drained(&db, SETTLE).await;
        assert_eq!(stock(&env, 1).await, (5, 0, 0, 5), "{how}: released exactly once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_racing_the_timeout_ends_in_exactly_one_of_paid_or_cancelled() {
    let env = TestEnv::new().await;
    let m = mall(
        &env,
        1,
        100,
        &[("MALL_ORDER_TTL", "1h"), ("MALL_ORDER_SWEEP_INTERVAL", "20ms")],
    )
    .await;
    let db = order_db(&env);
    let mut orders = Vec::new();
    for i in 0..25 {
        let (s, b) = checkout(
            &m.order,
            "frank",
            &format!("race-{i}"),
            json!({ "items": [{"sku_id": 1, "quantity": 1}] }),
        )
        .await;
        assert_eq!(s, 201);
        orders.push((
            b["order_id"].as_str().unwrap().to_owned(),
            b["total_cents"].clone(),
        ));
    }
    // Make every order due, then pay them all while the sweeper cancels them.
    sqlx::query("UPDATE orders SET expires_at = now()")
        .execute(db.pool())
        .await
        .unwrap();
    let payments: Vec<_> = orders
        .iter()
        .map(|(id, total)| {
            let (order, body) = (m.order.client().clone(), json!({ "payment_id": format!("race-pay-{id}"), "order_id": id, "amount_cents": total, "status": "succeeded" }));
            let url = m.order.url("/api/payments/callback");
            tokio::spawn(async move {
                let raw = serde_json::to_vec(&body).unwrap();
                let sig = mall_order::domain::sign(SECRET.as_bytes(), &raw);
                let res = order.post(url).header("x-signature", sig).header("content-type", "application/json").body(raw).send().await.unwrap();
                res.json::<Value>().await.unwrap()["outcome"].as_str().unwrap().to_owned()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for p in payments {
        outcomes.push(p.await.unwrap());
    }
    let (mut paid, mut cancelled) = (0, 0);
    for ((id, _), outcome) in orders.iter().zip(&outcomes) {
        let o = order_status(&m, "frank", id).await;
        match (o["status"].as_str().unwrap(), outcome.as_str()) {
            ("paid", "applied") => paid += 1,
            ("cancelled", "late") => {
                assert_eq!(o["refund_required"], true);
                cancelled += 1;
            }
            (status, outcome) => panic!("order {id}: status {status} with payment outcome {outcome}"),
        }
    }
    assert_eq!(paid + cancelled, 25);
    eventually(
        SETTLE,
        "inventory settles every reservation the same way",
        || async {
            let s = stock(&env, 1).await;
            if s == (100 - paid, 0, paid, 100) {
                Ok(())
            } else {
                Err(s)
            }
        },
    )
    .await;
    for (id, _) in &orders {
        let o = order_status(&m, "frank", id).await;
        let r = reservation_status(&env, id).await;
        let expected = if o["status"] == "paid" {
            "confirmed"
        } else {
            "released"
        };
        assert_eq!(r, expected, "order {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_payment_never_revives_a_cancelled_order_and_repeats_are_no_ops() {
    let env = TestEnv::new().await;
    let m = mall(&env, 1, 10, &[]).await;
    let (s, b) = checkout(
        &m.order,
        "gina",
        "late",
        json!({ "items": [{"sku_id": 1, "quantity": 3}] }),
    )
    .await;
    assert_eq!(s, 201);
    let id = b["order_id"].as_str().unwrap().to_owned();
    let total = b["total_cents"].clone();

    let res = user(
        m.order
            .client()
            .post(m.order.url(&format!("/api/orders/{id}/cancel"))),
        "gina",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let again = user(
        m.order
            .client()
            .post(m.order.url(&format!("/api/orders/{id}/cancel"))),
        "gina",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(again.status(), 409, "only a pending order can be cancelled");
    eventually(SETTLE, "stock released", || async {
        let s = stock(&env, 1).await;
        if s == (10, 0, 0, 10) { Ok(()) } else { Err(s) }
    })
    .await;

    let callback =
        json!({ "payment_id": "late-1", "order_id": id, "amount_cents": total, "status": "succeeded" });
    let (s, body) = pay(&m.order, &callback, SECRET).await;
    assert_eq!((s, body["outcome"].as_str()), (200, Some("late")));
    let (s, body) = pay(&m.order, &callback, SECRET).await;
    assert_eq!((s, body["outcome"].as_str()), (200, Some("duplicate")));
    let o = order_status(&m, "gina", &id).await;
    assert_eq!(o["status"], "cancelled");
    assert_eq!(o["refund_required"], true);
    // A late payment must enqueue no `order.paid`: without it inventory cannot move, so the
    // stock read below is final rather than read too early.
    let events: Vec<String> =
        sqlx::query_scalar("SELECT routing_key FROM outbox WHERE aggregate_id = $1 ORDER BY created_at")
            .bind(&id)
            .fetch_all(order_db(&env).pool())
            .await
            .unwrap();
    assert_eq!(
        events,
        ["order.timeout.hold-900s", "order.cancelled"],
        "the checkout's timeout and the cancellation, no order.paid for a late payment"
    );
    assert_eq!(
        stock(&env, 1).await,
        (10, 0, 0, 10),
        "stock unchanged by the late payment"
    );
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE outcome = 'late'")
        .fetch_one(order_db(&env).pool())
        .await
        .unwrap();
    assert_eq!(recorded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cart_reads_back_with_prices_and_checks_out() {
    let env = TestEnv::new().await;
    let m = mall(&env, 3, 4, &[]).await;
    let put = |sku: i64, q: i64| {
        user(
            m.order
                .client()
                .put(m.order.url(&format!("/api/cart/items/{sku}"))),
            "hana",
        )
        .json(&json!({ "quantity": q }))
        .send()
    };
    assert_eq!(put(1, 2).await.unwrap().status(), 204);
    assert_eq!(put(3, 1).await.unwrap().status(), 204);
    assert_eq!(put(2, 0).await.unwrap().status(), 422);
    let cart: Value = user(m.order.client().get(m.order.url("/api/cart")), "hana")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = cart["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(
        items
            .iter()
            .all(|i| i["price_cents"].as_i64().unwrap() > 0 && i["available"] == 4)
    );
    let expected: i64 = items
        .iter()
        .map(|i| i["price_cents"].as_i64().unwrap() * i["quantity"].as_i64().unwrap())
        .sum();
    assert_eq!(cart["total_cents"], expected);

    let (s, b) = checkout(&m.order, "hana", "cart-1", json!({ "from_cart": true })).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["total_cents"], expected);
    let list: Value = user(m.order.client().get(m.order.url("/api/orders?limit=10")), "hana")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(stock(&env, 1).await, (2, 2, 0, 4));
    let cart: Value = user(m.order.client().get(m.order.url("/api/cart")), "hana")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cart["items"], json!([]), "the cart is emptied by its checkout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_payment_through_the_outbox_relay_to_the_inventory_consumer() {
    use mall_testkit::spans::Via;
    let spans = mall_testkit::collector();
    let env = TestEnv::new().await;
    let m = mall(&env, 1, 5, &[]).await;
    let (s, b) = checkout(
        &m.order,
        "ivan",
        "traced",
        json!({ "items": [{"sku_id": 1, "quantity": 1}] }),
    )
    .await;
    assert_eq!(s, 201);
    let body = json!({ "payment_id": "traced-pay", "order_id": b["order_id"], "amount_cents": b["total_cents"], "status": "succeeded" });
    let raw = serde_json::to_vec(&body).unwrap();
    let trace_id = "5d2f6a1c9b8e47d3a0f1e2d3c4b5a697";
    let res = m
        .order
        .client()
        .post(m.order.url("/api/payments/callback"))
        .header("traceparent", format!("00-{trace_id}-2222222222222222-01"))
        .header("x-signature", mall_order::domain::sign(SECRET.as_bytes(), &raw))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let consumer = spans
        .wait_for(Via::Otlp, trace_id, "the inventory consumer's span", |s| {
            s.kind == "consumer"
        })
        .await;
    let parent = |child: &mall_testkit::spans::CollectedSpan| spans.parent_of(Via::Otlp, child);
    let producer = parent(&consumer);
    assert_eq!(producer.kind, "producer", "the relay's publish span");
    let server = parent(&producer);
    assert_eq!(server.kind, "server");
    assert_eq!(
        server.attributes.get("http.route").map(String::as_str),
        Some("/api/payments/callback")
    );
}
