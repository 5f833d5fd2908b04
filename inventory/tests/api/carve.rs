//! Flash-sale reservations: orders carve units out of a session item's reservation; a carved
//! reservation released while the session holds goes back into the session, after it ended, to
//! available stock. The counters never move on a carve, and never break their balance.

use mall_testkit::TestEnv;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{db, ledger_sum, numbers, receive, settings, spawn};

async fn post(app: &mall_testkit::TestServer, path: &str, body: Value) -> (u16, Value) {
    let res = app.client().post(app.url(path)).json(&body).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn session(app: &mall_testkit::TestServer, sku: i64, quantity: i64) -> Uuid {
    let id = Uuid::new_v4();
    let (status, body) = post(
        app,
        "/internal/reservations",
        json!({ "reservation_id": id, "owner": "flashsale", "reference": "flashsale:1:sku", "items": [{"sku_id": sku, "quantity": quantity}], "ttl_secs": 3600 }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    id
}

fn carve_body(child: Uuid, sku: i64, quantity: i64) -> Value {
    json!({ "reservation_id": child, "reference": format!("order:{child}"), "sku_id": sku, "quantity": quantity, "ttl_secs": 600 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_concurrent_carves_of_twenty_units_succeed_twenty_times_and_counters_stay_put() {
    let env = TestEnv::new().await;
    let app = spawn(&env, settings(&env, &[])).await;
    receive(&app, 61, 30).await;
    let parent = session(&app, 61, 20).await;
    let db = db(&env);
    assert_eq!(numbers(&db, 61).await, (10, 20, 0, 30));
    let refused_before =
        mall_testkit::checks::metric_sum(&app, "inventory_oversell_refused_total", &[]).await;

    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (client, url) = (
                app.client().clone(),
                app.url(&format!("/internal/reservations/{parent}/carve")),
            );
            tokio::spawn(async move {
                let res = client
                    .post(url)
                    .json(&carve_body(Uuid::new_v4(), 61, 1))
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                (status, res.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let (mut created, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (201, body) => {
                assert_eq!(body["status"], "reserved");
                created += 1
            }
            (409, body) => {
                assert_eq!(body["code"], "out_of_stock");
                refused += 1
            }
            (status, body) => panic!("{status}: {body}"),
        }
    }
    assert_eq!((created, refused), (20, 20));
    // Each refusal is an admission the session held no unit for: counted, so it pages.
    let refused_after = mall_testkit::checks::metric_sum(&app, "inventory_oversell_refused_total", &[]).await;
    assert!(
        refused_after - refused_before >= 20.0,
        "{refused_before} -> {refused_after}"
    );
    // Carving moves units between reservations, never between counters.
    assert_eq!(numbers(&db, 61).await, (10, 20, 0, 30));
    assert_eq!(ledger_sum(&db, 61, "carve").await, 20);
    let (_, parent_now) = get(&app, parent).await;
    assert_eq!(parent_now["items"], json!([{"sku_id": 61, "quantity": 0}]));
    assert_eq!(parent_now["carved"], 20, "{parent_now}");
}

async fn get(app: &mall_testkit::TestServer, id: Uuid) -> (u16, Value) {
    let res = app
        .client()
        .get(app.url(&format!("/internal/reservations/{id}")))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carve_is_idempotent_and_settles_like_an_order_reservation() {
    let env = TestEnv::new().await;
    let app = spawn(&env, settings(&env, &[])).await;
    receive(&app, 62, 10).await;
    let parent = session(&app, 62, 5).await;
    let path = format!("/internal/reservations/{parent}/carve");
    let (sold, returned) = (Uuid::new_v4(), Uuid::new_v4());

    assert_eq!(post(&app, &path, carve_body(sold, 62, 2)).await.0, 201);
    let (status, body) = post(&app, &path, carve_body(sold, 62, 2)).await;
    assert_eq!(status, 200, "a repeat returns the same child: {body}");
    let (status, body) = post(&app, &path, carve_body(sold, 62, 3)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("conflict")),
        "same id, other units"
    );
    assert_eq!(post(&app, &path, carve_body(returned, 62, 1)).await.0, 201);
    let db = db(&env);
    assert_eq!(numbers(&db, 62).await, (5, 5, 0, 10));

    // Paid: the child's units are sold.
    let (status, _) = post(&app, &format!("/internal/reservations/{sold}/confirm"), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(numbers(&db, 62).await, (5, 3, 2, 10));

    // Cancelled while the session holds: the unit goes back into the session, not to available.
    let (status, body) = post(
        &app,
        &format!("/internal/reservations/{returned}/release"),
        json!({}),
    )
    .await;
    assert_eq!((status, body["changed"].as_bool()), (200, Some(true)));
    assert_eq!(numbers(&db, 62).await, (5, 3, 2, 10));
    let (_, parent_now) = get(&app, parent).await;
    assert_eq!(parent_now["items"], json!([{"sku_id": 62, "quantity": 3}]));
    // Its order was made: the released child still counts as carved.
    assert_eq!(parent_now["carved"], 3, "{parent_now}");
    assert_eq!(ledger_sum(&db, 62, "return").await, 1);

    // The session ends: what it still holds goes back to available.
    let (status, _) = post(
        &app,
        &format!("/internal/reservations/{parent}/release"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(numbers(&db, 62).await, (8, 0, 2, 10));

    // A carve after the end is refused and changes nothing.
    let (status, body) = post(&app, &path, carve_body(Uuid::new_v4(), 62, 1)).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("conflict")), "{body}");
    assert_eq!(numbers(&db, 62).await, (8, 0, 2, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_released_after_its_session_ended_returns_to_available_stock() {
    let env = TestEnv::new().await;
    let app = spawn(&env, settings(&env, &[])).await;
    receive(&app, 63, 4).await;
    let parent = session(&app, 63, 4).await;
    let child = Uuid::new_v4();
    let path = format!("/internal/reservations/{parent}/carve");
    assert_eq!(post(&app, &path, carve_body(child, 63, 1)).await.0, 201);
    let (status, _) = post(
        &app,
        &format!("/internal/reservations/{parent}/release"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let db = db(&env);
    assert_eq!(numbers(&db, 63).await, (3, 1, 0, 4));
    let (status, _) = post(
        &app,
        &format!("/internal/reservations/{child}/release"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(numbers(&db, 63).await, (4, 0, 0, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_carves_get_clear_errors() {
    let env = TestEnv::new().await;
    let app = spawn(&env, settings(&env, &[])).await;
    receive(&app, 64, 4).await;
    let parent = session(&app, 64, 2).await;
    let path = format!("/internal/reservations/{parent}/carve");
    let (status, body) = post(&app, &path, carve_body(Uuid::new_v4(), 64, 0)).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("validation_failed")));
    let (status, body) = post(&app, &path, carve_body(Uuid::new_v4(), 64, 3)).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("out_of_stock")));
    let (status, body) = post(&app, &path, carve_body(Uuid::new_v4(), 65, 1)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("out_of_stock")),
        "a SKU the session does not hold"
    );
    let (status, body) = post(
        &app,
        &format!("/internal/reservations/{}/carve", Uuid::new_v4()),
        carve_body(Uuid::new_v4(), 64, 1),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    assert_eq!(numbers(&db(&env), 64).await, (2, 2, 0, 4));
}
