//! Reservations: never oversell, all or nothing, idempotent, settled exactly once.

use mall_testkit::TestEnv;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{as_admin, db, ledger_sum, numbers, receive, reserve, settings, spawn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_reservations_of_fifty_units_succeed_exactly_fifty_times() {
    let env = TestEnv::new().await;
    let app = spawn(&env, settings(&env, &[])).await;
    receive(&app, 501, 50).await;

    let requests = (0..200).map(|_| {
        app.client().post(app.url("/internal/reservations")).json(&json!({ "reservation_id": Uuid::new_v4(), "owner": "order", "reference": "o", "items": [{"sku_id": 501, "quantity": 1}], "ttl_secs": 600 }))
    });
    let answers = mall_testkit::checks::send_all(requests).await;
    let (mut created, mut refused) = (0, 0);
    for answer in answers {
        match answer {
            (201, _) => created += 1,
            (409, body) => {
                assert_eq!(body["code"], "out_of_stock");
                assert_eq!(body["skus"], json!([501]), "the answer names the short SKU");
                refused += 1;
            }
            (status, body) => panic!("{status}: {body}"),
        }
    }
    assert_eq!((created, refused), (50, 150));
    let db = db(&env);
    assert_eq!(numbers(&db, 501).await, (0, 50, 0, 50));
    assert_eq!(ledger_sum(&db, 501, "reserve").await, 50);
    assert_eq!(ledger_sum(&db, 501, "receive").await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_reservation_id_sent_twenty_times_at_once_reserves_once() {
    let env = TestEnv::new().await;
    let app = spawn(&env, settings(&env, &[])).await;
    receive(&app, 7, 10).await;
    let id = Uuid::new_v4();
    let requests = (0..20).map(|_| {
        app.client().post(app.url("/internal/reservations")).json(&json!({ "reservation_id": id, "owner": "order", "reference": "o", "items": [{"sku_id": 7, "quantity": 3}], "ttl_secs": 600 }))
    });
    let answers = mall_testkit::checks::send_all(requests).await;
    let mut statuses = Vec::new();
    for (status, body) in answers {
        assert_eq!(body["reservation_id"], json!(id));
        assert_eq!(body["status"], "reserved");
        statuses.push(status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 19);
    assert_eq!(numbers(&db(&env), 7).await, (7, 3, 0, 10));

    let (status, body) = reserve(&app, id, json!([{"sku_id": 7, "quantity": 4}])).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("conflict")),
        "same id, other items"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_item_reserves_nothing_and_bad_requests_change_nothing() {
    let env = TestEnv::new().await;
    let app = spawn(&env, settings(&env, &[])).await;
    receive(&app, 1, 10).await;
    receive(&app, 2, 1).await;
    let db = db(&env);

    let (status, body) = reserve(
        &app,
        Uuid::new_v4(),
        json!([{"sku_id": 1, "quantity": 5}, {"sku_id": 2, "quantity": 2}]),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (409, Some("out_of_stock")));
    assert_eq!(body["skus"], json!([2]));
    assert_eq!(
        numbers(&db, 1).await,
        (10, 0, 0, 10),
        "the line that fitted was not kept"
    );

    for (items, code) in [
        (json!([{"sku_id": 1, "quantity": 0}]), "validation_failed"),
        (json!([{"sku_id": 1, "quantity": -4}]), "validation_failed"),
        (json!([]), "validation_failed"),
        (json!([{"sku_id": 999, "quantity": 1}]), "unknown_sku"),
    ] {
        let (status, body) = reserve(&app, Uuid::new_v4(), items.clone()).await;
        assert_eq!((status, body["code"].as_str()), (422, Some(code)), "{items}");
    }
    let malformed = app
        .client()
        .post(app.url("/internal/reservations"))
        .header("content-type", "application/json")
        .body("{\"reservation_id\":")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);

    let negative = as_admin(app.client().post(app.url("/admin/stock/1/receive")))
        .json(&json!({"quantity": -5}))
        .send()
        .await
        .unwrap();
    assert_eq!(negative.status(), 422);
    let anonymous = app
        .client()
        .post(app.url("/admin/stock/1/receive"))
        .json(&json!({"quantity": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(numbers(&db, 1).await, (10, 0, 0, 10));
    assert_eq!(numbers(&db, 2).await, (1, 0, 0, 1));
    let reservations: i64 = sqlx::query_scalar("SELECT count(*) FROM reservations")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(reservations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_and_release_happen_once_and_never_both() {
    let env = TestEnv::new().await;
    let app = spawn(&env, settings(&env, &[])).await;
    receive(&app, 3, 10).await;
    let (paid, cancelled) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(
        reserve(&app, paid, json!([{"sku_id": 3, "quantity": 2}])).await.0,
        201
    );
    assert_eq!(
        reserve(&app, cancelled, json!([{"sku_id": 3, "quantity": 3}]))
            .await
            .0,
        201
    );

    let post = |path: String| app.client().post(app.url(&path)).send();
    let body = |res: reqwest::Response| async move {
        (
            res.status().as_u16(),
            res.json::<serde_json::Value>().await.unwrap(),
        )
    };
    let (s, b) = body(
        post(format!("/internal/reservations/{paid}/confirm"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, b["changed"].as_bool()), (200, Some(true)));
    let (s, b) = body(
        post(format!("/internal/reservations/{paid}/confirm"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, b["changed"].as_bool()),
        (200, Some(false)),
        "a repeat is a no-op"
    );
    let (s, b) = body(
        post(format!("/internal/reservations/{paid}/release"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (409, Some("conflict")),
        "a sold reservation is never released"
    );

    let (s, _) = body(
        post(format!("/internal/reservations/{cancelled}/release"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = body(
        post(format!("/internal/reservations/{cancelled}/release"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, b["changed"].as_bool()), (200, Some(false)));
    let (s, _) = body(
        post(format!("/internal/reservations/{}/confirm", Uuid::new_v4()))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);

    let db = db(&env);
    assert_eq!(numbers(&db, 3).await, (8, 0, 2, 10));
    assert_eq!(ledger_sum(&db, 3, "confirm").await, 2);
    assert_eq!(ledger_sum(&db, 3, "release").await, 3);

    let res = as_admin(app.client().get(app.url("/admin/stock/3")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let view: serde_json::Value = res.json().await.unwrap();
    assert_eq!(view["stock"]["sold"], 2);
    assert_eq!(
        view["ledger"].as_array().unwrap().len(),
        5,
        "receive, 2 reserves, confirm, release"
    );
    let (status, public) = {
        let r = app.client().get(app.url("/api/stock/3")).send().await.unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!((status, public), (200, json!({"sku_id": 3, "available": 8})));
    assert_eq!(
        app.client()
            .get(app.url("/api/stock/404404"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_reservations_are_released_exactly_once_by_competing_sweepers() {
    let env = TestEnv::new().await;
    let fast = [("MALL_INVENTORY_SWEEP_INTERVAL", "100ms")];
    let a = spawn(&env, settings(&env, &fast)).await;
    let _b = spawn(&env, settings(&env, &fast)).await;
    receive(&a, 9, 20).await;
    for _ in 0..10 {
        let res = a
            .client()
            .post(a.url("/internal/reservations"))
            .json(&json!({ "reservation_id": Uuid::new_v4(), "owner": "order", "reference": "never-written", "items": [{"sku_id": 9, "quantity": 2}], "ttl_secs": 1 }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
    let db = db(&env);
    assert_eq!(numbers(&db, 9).await, (0, 20, 0, 20));
    mall_testkit::eventually(
        std::time::Duration::from_secs(5),
        "expired reservations released",
        || async {
            let n = numbers(&db, 9).await;
            if n == (20, 0, 0, 20) { Ok(()) } else { Err(n) }
        },
    )
    .await;
    // One more sweep finds nothing left to release, and every unit was released once.
    let again = mall_inventory::store::sweep_expired(&db, 100)
        .await
        .expect("sweep");
    assert_eq!(again, 0, "a later sweep releases nothing");
    assert_eq!(ledger_sum(&db, 9, "release").await, 20, "each unit released once");
    assert_eq!(numbers(&db, 9).await, (20, 0, 0, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_text_field_is_a_422_naming_it_and_changes_nothing() {
    let env = TestEnv::new().await;
    let app = spawn(&env, settings(&env, &[])).await;
    let db = db(&env);
    receive(&app, 611, 5).await;
    let before = numbers(&db, 611).await;

    let res = as_admin(app.client().post(app.url("/admin/stock/611/receive")))
        .json(&json!({ "quantity": 3, "reason": "delivery\u{0}" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "validation_failed", "{body}");
    assert!(body["message"].as_str().unwrap().starts_with("reason:"), "{body}");

    let id = Uuid::new_v4();
    let res = app
        .client()
        .post(app.url("/internal/reservations"))
        .json(&json!({ "reservation_id": id, "owner": "order", "reference": "order\u{0}", "items": [{"sku_id": 611, "quantity": 1}], "ttl_secs": 600 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().starts_with("reference:"),
        "{body}"
    );

    assert_eq!(
        numbers(&db, 611).await,
        before,
        "nothing received, nothing reserved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_get_a_database_connection_is_told_503_unavailable_with_retry_after() {
    let env = TestEnv::new().await;
    let mut one_connection = settings(&env, &[]);
    one_connection.platform.database.max_connections = 1;
    one_connection.platform.database.acquire_timeout = std::time::Duration::from_millis(200);
    let app = spawn(&env, one_connection).await;
    receive(&app, 612, 5).await;

    // The stock table locked from outside: the request that takes the service's only
    // connection waits on the lock; the others wait for a connection and are told to retry.
    let db = db(&env);
    let mut lock = db.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE stock IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let asks: Vec<_> = (0..3)
        .map(|_| {
            let (client, url) = (app.client().clone(), app.url("/api/stock/612"));
            tokio::spawn(async move { client.get(url).send().await.unwrap() })
        })
        .collect();
    mall_testkit::eventually(
        std::time::Duration::from_secs(10),
        "two of three requests answered while the table is locked",
        || {
            let done = asks.iter().filter(|a| a.is_finished()).count();
            async move { if done >= 2 { Ok(()) } else { Err(done) } }
        },
    )
    .await;
    lock.rollback().await.unwrap();
    let mut answers = Vec::new();
    for ask in asks {
        answers.push(ask.await.unwrap());
    }
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 503, 503],
        "one served once the lock went, two told to retry"
    );
    for res in answers.into_iter().filter(|r| r.status() == 503) {
        assert_eq!(res.headers()["retry-after"], "1");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["code"], "unavailable", "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_for_a_sku_the_catalog_does_not_know_is_a_404_unknown_sku_and_writes_nothing() {
    let env = TestEnv::new().await;
    let app = spawn(&env, settings(&env, &[])).await;
    let db = db(&env);
    let unknown = mall_testkit::catalog::UNKNOWN_SKUS_FROM + 7;
    for sku in [unknown, 0, -3] {
        let res = as_admin(app.client().post(app.url(&format!("/admin/stock/{sku}/receive"))))
            .json(&json!({ "quantity": 5 }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "SKU {sku}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["code"], "unknown_sku", "{body}");
    }
    assert_eq!(app.get(&format!("/api/stock/{unknown}")).await.status(), 404);
    let rows: (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM stock), (SELECT count(*) FROM ledger)")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(rows, (0, 0), "no stock row, no ledger row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_catalog_unreachable_a_new_sku_is_a_503_and_a_stocked_one_still_receives() {
    let env = TestEnv::new().await;
    let db = db(&env);
    let stocked = spawn(&env, settings(&env, &[])).await;
    receive(&stocked, 41, 5).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let app = spawn(&env, settings(&env, &[("MALL_PRODUCT_URLS", closed.as_str())])).await;

    let res = as_admin(app.client().post(app.url("/admin/stock/42/receive")))
        .json(&json!({ "quantity": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "unavailable", "{body}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM stock WHERE sku_id = 42")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0, "nothing written");

    receive(&app, 41, 3).await;
    assert_eq!(
        numbers(&db, 41).await,
        (8, 0, 0, 8),
        "a SKU with stock is known without asking"
    );
}
