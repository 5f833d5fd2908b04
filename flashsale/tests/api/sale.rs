//! The sale end to end, through two flashsale instances, the order service and inventory:
//! admissions exact under a crowd, every admission one order, limits, repeats, a broker outage,
//! unpaid orders giving their unit back, and bad requests that change nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use mall_testkit::{ChaosProxy, TestEnv, eventually};
use serde_json::json;

use crate::helpers::{
    Options, SETTLE, admitted_orders, buy, buy_patiently, buy_until_admitted, create, purchase,
    redis_numbers, running, sale, stock, token, token_ok, wait_loaded, wait_orders,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_buyers_for_a_hundred_units_make_exactly_a_hundred_orders() {
    let env = TestEnv::new().await;
    let sale = Arc::new(sale(&env, &[11], 150, Options::default()).await);
    let session = running(
        &sale,
        10,
        json!([{"sku_id": 11, "price_cents": 990, "quantity": 100, "per_user_limit": 1}]),
    )
    .await;
    // The session's 100 units are reserved out of inventory: 50 stay for normal sales.
    assert_eq!(stock(&env, 11).await, (50, 100, 0, 150));

    let buyers: Vec<_> = (0..2000)
        .map(|i| {
            let sale = sale.clone();
            tokio::spawn(async move {
                let fs = &sale.fs[i % 2];
                let buyer = format!("crowd-{i}");
                let t = token_ok(fs, &buyer, session, 11).await;
                let (status, body) =
                    buy_patiently(fs, &buyer, purchase(session, 11, 1, &t, &format!("r{i}"))).await;
                (status, body)
            })
        })
        .collect();
    let mut admitted = HashSet::new();
    let mut sold_out = 0;
    for b in buyers {
        match b.await.unwrap() {
            (202, body) => assert!(admitted.insert(body["order_id"].as_str().unwrap().to_owned())),
            (409, body) => {
                assert_eq!(body["code"], "sold_out");
                sold_out += 1;
            }
            (status, body) => panic!("{status}: {body}"),
        }
    }
    assert_eq!((admitted.len(), sold_out), (100, 1900));
    assert_eq!(
        redis_numbers(&env, session, 11).await,
        (0, 100),
        "stock 0, 100 recorded"
    );

    // Every admission becomes exactly one order, and every order is an admission.
    let orders: HashSet<String> = wait_orders(&env, session, 100).await.into_iter().collect();
    let recorded: HashSet<String> = admitted_orders(&env, session, 11).await.into_iter().collect();
    assert_eq!(orders, admitted);
    assert_eq!(recorded, admitted);
    // The orders' units are carved out of the session's reservation: counters unchanged.
    assert_eq!(stock(&env, 11).await, (50, 100, 0, 150));
    // Every admission's event is published (none waits to be sent again), and each made one order.
    mall_testkit::outbox_drained(&crate::helpers::flash_db(&env), Duration::from_secs(10)).await;
    assert_eq!(
        crate::helpers::flash_orders(&env, session).await.len(),
        100,
        "no order twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_user_gets_more_than_the_limit_and_a_repeated_request_id_is_admitted_once() {
    let env = TestEnv::new().await;
    let sale = Arc::new(sale(&env, &[12], 500, Options::default()).await);
    let session = running(
        &sale,
        10,
        json!([{"sku_id": 12, "price_cents": 500, "quantity": 400, "per_user_limit": 2}]),
    )
    .await;

    // 20 users x 5 concurrent tries for one unit each, spread over both instances.
    let tries: Vec<_> = (0..100)
        .map(|i| {
            let sale = sale.clone();
            tokio::spawn(async move {
                let buyer = format!("greedy-{}", i % 20);
                let fs = &sale.fs[i % 2];
                let t = token_ok(fs, &buyer, session, 12).await;
                let (status, body) =
                    buy_patiently(fs, &buyer, purchase(session, 12, 1, &t, &format!("try-{i}"))).await;
                (buyer, status, body)
            })
        })
        .collect();
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for t in tries {
        let (buyer, status, body) = t.await.unwrap();
        match status {
            202 => *per_user.entry(buyer).or_default() += 1,
            409 => assert_eq!(body["code"], "limit_exceeded"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(per_user.len(), 20);
    assert!(per_user.values().all(|n| *n == 2), "{per_user:?}");
    assert_eq!(redis_numbers(&env, session, 12).await, (360, 40));

    // One request id sent 20 times at once: one admission, the same order id every time.
    let t = token_ok(&sale.fs[0], "once", session, 12).await;
    let repeats: Vec<_> = (0..20)
        .map(|i| {
            let (sale, t) = (sale.clone(), t.clone());
            tokio::spawn(async move {
                buy(
                    &sale.fs[i % 2],
                    "once",
                    purchase(session, 12, 1, &t, "same-request"),
                )
                .await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for r in repeats {
        let (status, body) = r.await.unwrap();
        assert_eq!(status, 202, "{body}");
        ids.insert(body["order_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(redis_numbers(&env, session, 12).await, (359, 41));
    wait_orders(&env, session, 41).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_made_while_rabbitmq_is_unreachable_become_orders_once_it_is_back() {
    let env = TestEnv::new().await;
    let amqp_url = env.platform_settings(&mall_flashsale::config::DEFAULTS).amqp.url;
    let (proxy, through) = ChaosProxy::for_url(&amqp_url).await;
    let sale = sale(
        &env,
        &[13],
        50,
        Options {
            single: true,
            tweak_first: Some(Box::new(move |s: &mut mall_flashsale::Settings| {
                *mall_testkit::checks::dependency_url(&mut s.platform, "rabbitmq") = through;
            })),
            ..Options::default()
        },
    )
    .await;
    let session = running(
        &sale,
        10,
        json!([{"sku_id": 13, "price_cents": 100, "quantity": 30, "per_user_limit": 1}]),
    )
    .await;
    let fs = &sale.fs[0];
    fs.wait_ready().await;
    proxy.cut();

    let mut admitted = HashSet::new();
    for i in 0..30 {
        let buyer = format!("patient-{i}");
        let t = token_ok(fs, &buyer, session, 13).await;
        let (status, body) = buy(fs, &buyer, purchase(session, 13, 1, &t, "r")).await;
        assert_eq!(status, 202, "admission does not need the broker: {body}");
        admitted.insert(body["order_id"].as_str().unwrap().to_owned());
    }
    // The relay has tried with these rows waiting a second (it reports their age each pass):
    // without the broker, none went anywhere.
    let schema = crate::helpers::flash_db(&env).schema().to_owned();
    mall_testkit::eventually(Duration::from_secs(10), "the relay saw the rows wait", || async {
        let age =
            mall_testkit::checks::metric_sum(fs, "outbox_oldest_unsent_seconds", &[("schema", &schema)])
                .await;
        if age >= 1.0 { Ok(()) } else { Err(age) }
    })
    .await;
    assert!(
        crate::helpers::flash_orders(&env, session).await.is_empty(),
        "nothing handed off yet"
    );
    let shown: serde_json::Value = crate::helpers::admin(
        fs.client()
            .get(fs.url(&format!("/admin/flashsale/sessions/{session}"))),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        (
            shown["items"][0]["admitted"].as_i64(),
            shown["items"][0]["handed_off"].as_i64()
        ),
        (Some(30), Some(0)),
        "{shown}"
    );

    proxy.restore();
    let orders: HashSet<String> = wait_orders(&env, session, 30).await.into_iter().collect();
    assert_eq!(orders, admitted);
    assert_eq!(redis_numbers(&env, session, 13).await, (0, 30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_flash_order_times_out_and_its_unit_is_bought_by_someone_else_a_paid_one_is_sold() {
    let env = TestEnv::new().await;
    let sale = sale(
        &env,
        &[14],
        10,
        Options {
            order: &[("MALL_ORDER_TTL", "2s"), ("MALL_ORDER_SWEEP_INTERVAL", "500ms")],
            flash: &[("MALL_FLASHSALE_SOLD_OUT_TTL", "200ms")],
            ..Options::default()
        },
    )
    .await;
    let session = running(
        &sale,
        10,
        json!([{"sku_id": 14, "price_cents": 700, "quantity": 2, "per_user_limit": 1}]),
    )
    .await;
    let fs = &sale.fs[0];

    let t = token_ok(fs, "payer", session, 14).await;
    let (status, paid) = buy(fs, "payer", purchase(session, 14, 1, &t, "p")).await;
    assert_eq!(status, 202);
    let paid = paid["order_id"].as_str().unwrap().to_owned();
    // The buyer polls the order: 404 until the hand-off created it, then the order at the flash price.
    let order = eventually(SETTLE, "the order is created", || async {
        let res = crate::helpers::user(
            sale.order
                .client()
                .get(sale.order.url(&format!("/api/orders/{paid}"))),
            "payer",
        )
        .send()
        .await
        .unwrap();
        if res.status() == 200 {
            Ok(res.json::<serde_json::Value>().await.unwrap())
        } else {
            Err(res.status())
        }
    })
    .await;
    assert_eq!(order["total_cents"], 700);
    let body =
        json!({ "payment_id": "pay-flash-1", "order_id": paid, "amount_cents": 700, "status": "succeeded" });
    let raw = serde_json::to_vec(&body).unwrap();
    let sig = mall_order::domain::sign(mall_order::config::DEV_PAYMENT_SECRET.as_bytes(), &raw);
    let res = sale
        .order
        .client()
        .post(sale.order.url("/api/payments/callback"))
        .header("content-type", "application/json")
        .header("x-signature", sig)
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let t = token_ok(fs, "dawdler", session, 14).await;
    let (status, _) = buy(fs, "dawdler", purchase(session, 14, 1, &t, "d")).await;
    assert_eq!(status, 202);
    let t = token_ok(fs, "late", session, 14).await;
    let (status, body) = buy(fs, "late", purchase(session, 14, 1, &t, "l1")).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("sold_out")));

    // The paid unit is sold out of the session's reservation; the dawdler's order times out and
    // its unit comes back to the session, where "late" gets it.
    eventually(SETTLE, "the paid unit is sold", || async {
        let s = stock(&env, 14).await;
        if s == (8, 1, 1, 10) { Ok(()) } else { Err(s) }
    })
    .await;
    eventually(SETTLE, "the unpaid unit is back for sale", || async {
        let n = redis_numbers(&env, session, 14).await;
        if n.0 == 1 { Ok(()) } else { Err(n) }
    })
    .await;
    let (status, body) = buy_until_admitted(fs, "late", SETTLE, "someone else buys it", || {
        purchase(
            session,
            14,
            1,
            &t,
            &format!("l-{}", Utc::now().timestamp_millis()),
        )
    })
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(redis_numbers(&env, session, 14).await.0, 0);
    wait_orders(&env, session, 3).await;
    // Inventory still balances: 1 sold, 1 held by the new order, 8 available.
    assert_eq!(stock(&env, 14).await, (8, 1, 1, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_purchases_get_the_right_4xx_and_change_nothing() {
    let env = TestEnv::new().await;
    let sale = sale(
        &env,
        &[15, 16],
        20,
        Options {
            single: true,
            ..Options::default()
        },
    )
    .await;
    let fs = &sale.fs[0];
    let items = json!([
        {"sku_id": 15, "price_cents": 100, "quantity": 5, "per_user_limit": 2},
        {"sku_id": 16, "price_cents": 100, "quantity": 5, "per_user_limit": 2}
    ]);
    let session = running(&sale, 10, items.clone()).await;
    let mine = token_ok(fs, "alice", session, 15).await;
    let other_sku = token_ok(fs, "alice", session, 16).await;

    let cases = [
        ("bob", purchase(session, 15, 1, &mine, "a"), 403, "invalid_token"),
        (
            "alice",
            purchase(session, 15, 1, &other_sku, "b"),
            403,
            "invalid_token",
        ),
        (
            "alice",
            purchase(session, 15, 1, "123.abcd", "c"),
            403,
            "invalid_token",
        ),
        (
            "alice",
            purchase(session, 15, 0, &mine, "d"),
            400,
            "validation_failed",
        ),
        (
            "alice",
            purchase(session, 15, -1, &mine, "e"),
            400,
            "validation_failed",
        ),
        (
            "alice",
            purchase(session, 15, 3, &mine, "f"),
            409,
            "limit_exceeded",
        ),
        (
            "alice",
            purchase(session, 15, 1, &mine, ""),
            400,
            "validation_failed",
        ),
        (
            "alice",
            purchase(session, 15, 1, &mine, "bad id!"),
            400,
            "validation_failed",
        ),
        (
            "alice",
            json!({"session_id": session, "sku_id": 15}),
            400,
            "invalid_body",
        ),
    ];
    for (buyer, body, status, code) in cases {
        let (s, b) = buy(fs, buyer, body.clone()).await;
        assert_eq!((s, b["code"].as_str()), (status, Some(code)), "{body}");
    }
    let res = crate::helpers::user(fs.client().post(fs.url("/api/flashsale/purchase")), "alice")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = fs
        .client()
        .post(fs.url("/api/flashsale/purchase"))
        .json(&purchase(session, 15, 1, &mine, "anon"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "no identity");
    // A body in several frames is read whole: one of declared length written in pieces, and
    // a chunked one, both answered by the script (over the limit), not as malformed JSON; a
    // chunked body past the body limit is 413.
    let over_limit = serde_json::to_vec(&purchase(session, 15, 3, &mine, "pieces")).unwrap();
    let (front, back) = over_limit.split_at(over_limit.len() / 2);
    for chunked in [false, true] {
        let (status, answer) = raw_post(fs, PURCHASE, "alice", &[front, back], chunked).await;
        assert_eq!(status, 409, "chunked {chunked}: {answer}");
        assert!(answer.contains(r#""code":"limit_exceeded""#), "{answer}");
    }
    let filler = vec![b' '; 700 * 1024];
    let (status, answer) = raw_post(fs, PURCHASE, "alice", &[&filler, &filler], true).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");
    assert_eq!(redis_numbers(&env, session, 15).await, (5, 0), "nothing changed");

    // Before the start: no token; a token forged for it is refused.
    let now = Utc::now();
    let (status, body) = create(
        fs,
        now + chrono::Duration::hours(1),
        now + chrono::Duration::hours(2),
        json!([{"sku_id": 15, "price_cents": 100, "quantity": 1, "per_user_limit": 1}]),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let later = body["session_id"].as_i64().unwrap();
    wait_loaded_upcoming(fs, later).await;
    let (status, body) = token(fs, "alice", later, 15).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("not_started")));
    let (status, body) = buy(fs, "alice", purchase(later, 15, 1, &mine, "g")).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("invalid_token")));
    // Unknown session or SKU: 404.
    assert_eq!(token(fs, "alice", 999_999, 15).await.0, 404);
    assert_eq!(token(fs, "alice", session, 17).await.0, 404);

    // After the end: no token, and a token from before is answered `ended`.
    // The window leaves room for a slow machine to load the session and hand out the token
    // before it ends.
    let now = Utc::now();
    let ends_at = now + chrono::Duration::seconds(10);
    let (status, body) = create(
        fs,
        now - chrono::Duration::seconds(1),
        ends_at,
        json!([{"sku_id": 16, "price_cents": 100, "quantity": 1, "per_user_limit": 1}]),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let short = body["session_id"].as_i64().unwrap();
    wait_loaded(&sale, short).await;
    let t = token_ok(fs, "alice", short, 16).await;
    mall_testkit::eventually(Duration::from_secs(10), "the session ends", || async {
        match token(fs, "alice", short, 16).await {
            (409, body) if body["code"] == "ended" => Ok(()),
            other => Err(other),
        }
    })
    .await;
    let (status, body) = buy(fs, "alice", purchase(short, 16, 1, &t, "h")).await;
    assert!(
        (status == 409 && body["code"] == "ended") || (status == 403 && body["code"] == "invalid_token"),
        "{status} {body}"
    );
    assert_eq!(redis_numbers(&env, short, 16).await, (1, 0), "nothing changed");
}

async fn wait_loaded_upcoming(fs: &mall_testkit::TestServer, id: i64) {
    eventually(
        Duration::from_secs(10),
        "the session is listed as upcoming",
        || async {
            let body: serde_json::Value = fs.get("/api/flashsale/sessions").await.json().await.unwrap();
            let found = body["sessions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["session_id"] == id && s["status"] == "upcoming");
            if found { Ok(()) } else { Err(body) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_reserve_their_stock_or_fail_cleanly_and_give_back_what_is_unsold() {
    let env = TestEnv::new().await;
    let sale = sale(
        &env,
        &[21, 22],
        10,
        Options {
            single: true,
            flash: &[("MALL_FLASHSALE_SETTLE_AFTER", "0s")],
            ..Options::default()
        },
    )
    .await;
    let fs = &sale.fs[0];
    let now = Utc::now();
    let soon = now + chrono::Duration::minutes(5);

    // Not enough stock of one item: 409 naming it, nothing reserved.
    let (status, body) = create(
        fs,
        now,
        soon,
        json!([
            {"sku_id": 21, "price_cents": 100, "quantity": 5, "per_user_limit": 1},
            {"sku_id": 22, "price_cents": 100, "quantity": 11, "per_user_limit": 1}
        ]),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("out_of_stock")),
        "{body}"
    );
    assert_eq!(body["skus"], json!([22]));
    assert_eq!(stock(&env, 21).await, (10, 0, 0, 10));
    assert_eq!(stock(&env, 22).await, (10, 0, 0, 10));

    let (status, body) = create(
        fs,
        now,
        soon,
        json!([{"sku_id": 99, "price_cents": 100, "quantity": 1, "per_user_limit": 1}]),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("unknown_sku")),
        "{body}"
    );
    for bad in [
        json!([]),
        json!([{"sku_id": 21, "price_cents": 0, "quantity": 1, "per_user_limit": 1}]),
        json!([{"sku_id": 21, "price_cents": 100, "quantity": 1, "per_user_limit": 2}]),
    ] {
        let (status, body) = create(fs, now, soon, bad).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some("validation_failed")),
            "{body}"
        );
    }
    let (status, _) = create(
        fs,
        soon,
        now,
        json!([{"sku_id": 21, "price_cents": 1, "quantity": 1, "per_user_limit": 1}]),
    )
    .await;
    assert_eq!(status, 422, "end before start");
    let res = crate::helpers::user(fs.client().post(fs.url("/admin/flashsale/sessions")), "mallory")
        .json(&json!({"starts_at": now, "ends_at": soon, "items": [{"sku_id": 21, "price_cents": 1, "quantity": 1, "per_user_limit": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "admins only");
    assert_eq!(stock(&env, 21).await, (10, 0, 0, 10));

    // A short session sells 2 of 4 units; after its end the other 2 go back to inventory. The
    // window leaves room for a slow machine to load the session and admit both buyers in it.
    let now = Utc::now();
    let (status, body) = create(
        fs,
        now - chrono::Duration::seconds(1),
        now + chrono::Duration::seconds(10),
        json!([{"sku_id": 21, "price_cents": 100, "quantity": 4, "per_user_limit": 1}]),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let session = body["session_id"].as_i64().unwrap();
    assert_eq!(stock(&env, 21).await, (6, 4, 0, 10));
    wait_loaded(&sale, session).await;
    for buyer in ["x", "y"] {
        let t = token_ok(fs, buyer, session, 21).await;
        let (status, body) = buy_patiently(fs, buyer, purchase(session, 21, 1, &t, "r")).await;
        assert_eq!(status, 202, "{body}");
    }
    wait_orders(&env, session, 2).await;
    eventually(SETTLE, "unsold units are back in inventory", || async {
        let s = stock(&env, 21).await;
        if s == (8, 2, 0, 10) { Ok(()) } else { Err(s) }
    })
    .await;
    // The release reaches inventory before the session is marked settled (two more writes of
    // the same job round), so the status is awaited too.
    let shown = eventually(SETTLE, "the session is settled", || async {
        let shown: serde_json::Value = crate::helpers::admin(
            fs.client()
                .get(fs.url(&format!("/admin/flashsale/sessions/{session}"))),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        if shown["status"] == "settled" {
            Ok(shown)
        } else {
            Err(shown)
        }
    })
    .await;
    assert_eq!(shown["items"][0]["admitted"], 2);
    assert_eq!(shown["items"][0]["handed_off"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_buyers_of_a_sold_out_item_are_answered_from_memory_before_any_other_check() {
    let env = TestEnv::new().await;
    let (sale, session) = sold_out_item(&env).await;
    let fs = &sale.fs[0];

    // The last unit's admission set the flag: a signed-in late buyer, a request with no identity
    // at all and one with a forged token all get the same public answer, and Redis is not asked.
    let t = token_ok(fs, "late", session, 15).await;
    let (status, body) = buy(fs, "late", purchase(session, 15, 1, &t, "l")).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("sold_out")));
    let anonymous = fs
        .client()
        .post(fs.url("/api/flashsale/purchase"))
        .json(&purchase(session, 15, 1, "1.forged", "a"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 409);
    let body: serde_json::Value = anonymous.json().await.unwrap();
    assert_eq!(body["code"], "sold_out");

    // Anything that is not a well-formed purchase of that item still meets the usual checks.
    let malformed = fs
        .client()
        .post(fs.url("/api/flashsale/purchase"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 401);
    let (status, body) = buy(fs, "late", purchase(session, 15, 0, &t, "z")).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("validation_failed")));
    assert_eq!(redis_numbers(&env, session, 15).await, (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purchase_route_on_the_edge_keeps_the_contract_of_the_standard_stack() {
    let env = TestEnv::new().await;
    let (sale, session) = sold_out_item(&env).await;
    let fs = &sale.fs[0];
    let t = token_ok(fs, "late", session, 15).await;

    // Every answer is counted under the route, as the standard stack counts its routes (the
    // recorder is the test process's: other tests' purchases count there too, none of them
    // with another method).
    let count = |method: &'static str, status: &'static str| async move {
        let metrics = fs.client().get(fs.url("/metrics")).send().await.unwrap();
        let metrics = metrics.text().await.unwrap();
        let labels = [
            format!(r#"method="{method}""#),
            r#"route="/api/flashsale/purchase""#.to_owned(),
            format!(r#"status="{status}""#),
        ];
        metrics
            .lines()
            .find(|l| {
                l.starts_with("http_server_requests_total{")
                    && labels.iter().all(|label| l.contains(label.as_str()))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let sold_out_before = count("POST", "409").await;
    assert!(count("POST", "202").await >= 1);

    // The caller's request id comes back on the answer from memory; one is made when it sent none.
    let late = crate::helpers::user(fs.client().post(fs.url(PURCHASE)), "late")
        .header("x-request-id", "late-buyer-1")
        .json(&purchase(session, 15, 1, &t, "l"))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 409);
    assert_eq!(late.headers()["x-request-id"], "late-buyer-1");
    assert_eq!(late.headers()["content-type"], "application/json");
    let body: serde_json::Value = late.json().await.unwrap();
    assert_eq!(body["code"], "sold_out");
    let made = fs
        .client()
        .post(fs.url(PURCHASE))
        .json(&purchase(session, 15, 1, &t, "m"))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 409);
    let id = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");

    // Another method on the route: 405 with `Allow`, as axum's router answered it.
    let other = fs.client().get(fs.url(PURCHASE)).send().await.unwrap();
    assert_eq!(other.status(), 405);
    assert_eq!(other.headers()["allow"], "POST");
    let body: serde_json::Value = other.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");

    assert!(count("POST", "409").await >= sold_out_before + 2);
    assert_eq!(count("GET", "405").await, 1);

    // Another route meets the body limit too, streamed or not.
    let filler = vec![b' '; 700 * 1024];
    let (status, answer) = raw_post(
        fs,
        "/admin/flashsale/sessions",
        "admin",
        &[&filler, &filler],
        true,
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");
    assert_eq!(redis_numbers(&env, session, 15).await, (0, 1), "nothing changed");
}

/// One flashsale instance selling one unit of SKU 15 (limit 1) in a running session, that unit
/// bought by `first`; the session's id. The sold-out flag lives long enough that it cannot lapse
/// during a test.
async fn sold_out_item(env: &TestEnv) -> (crate::helpers::Sale, i64) {
    let sale = sale(
        env,
        &[15],
        5,
        Options {
            flash: &[("MALL_FLASHSALE_SOLD_OUT_TTL", "60s")],
            single: true,
            ..Options::default()
        },
    )
    .await;
    let session = running(
        &sale,
        10,
        json!([{"sku_id": 15, "price_cents": 500, "quantity": 1, "per_user_limit": 1}]),
    )
    .await;
    let fs = &sale.fs[0];
    let t = token_ok(fs, "first", session, 15).await;
    let (status, _) = buy_patiently(fs, "first", purchase(session, 15, 1, &t, "f")).await;
    assert_eq!(status, 202);
    assert_eq!(redis_numbers(env, session, 15).await, (0, 1));
    (sale, session)
}

const PURCHASE: &str = "/api/flashsale/purchase";

/// `POST path` over a plain connection as `user` (an admin when it is `admin`), the body
/// written in `pieces` (a pause after each, so they arrive as separate reads) with a
/// `Content-Length` or chunked; returns the status and the whole response as text.
async fn raw_post(
    fs: &mall_testkit::TestServer,
    path: &str,
    user: &str,
    pieces: &[&[u8]],
    chunked: bool,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut identity = http::HeaderMap::new();
    let now = Utc::now().timestamp() as u64;
    let who = mall_common::identity::Identity {
        user_id: user.into(),
        roles: if user == "admin" {
            vec!["admin".into()]
        } else {
            Vec::new()
        },
    };
    mall_common::identity::assert_identity(
        &mut identity,
        mall_common::platform::DEV_INTERNAL_SECRET.as_bytes(),
        &who,
        now,
    )
    .unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: mall\r\n");
    head.push_str("content-type: application/json\r\nconnection: close\r\n");
    for (name, value) in &identity {
        head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    if chunked {
        head.push_str("transfer-encoding: chunked\r\n\r\n");
    } else {
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        head.push_str(&format!("content-length: {len}\r\n\r\n"));
    }
    let mut conn = tokio::net::TcpStream::connect(fs.addr()).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    for piece in pieces {
        let mut frame = Vec::new();
        if chunked {
            frame.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            frame.extend_from_slice(piece);
            frame.extend_from_slice(b"\r\n");
        } else {
            frame.extend_from_slice(piece);
        }
        // A server that refused the body (413) may stop reading; its answer is what counts.
        if conn.write_all(&frame).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if chunked {
        let _ = conn.write_all(b"0\r\n\r\n").await;
    }
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    (status, answer)
}
