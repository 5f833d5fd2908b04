//! Catalog writes: who may make them, validation, and what other instances see afterwards.

use std::time::Duration;

use mall_testkit::{TestEnv, eventually};
use serde_json::json;

use crate::helpers::{as_user, get, seed_catalog, settings, spawn};

fn product(price: i64) -> serde_json::Value {
    json!({
        "title": "Trail Runner",
        "description": "A light shoe for rough paths",
        "category_id": 11,
        "brand_id": 3,
        "attributes": {"material": "mesh"},
        "images": ["https://img.example/trail.jpg"],
        "skus": [
            {"title": "Blue, 42", "sale_attributes": {"colour": "blue", "size": "42"}, "price_cents": price},
            {"title": "Blue, 43", "sale_attributes": {"colour": "blue", "size": "43"}, "price_cents": price + 100}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_product_is_readable_on_every_instance_at_once() {
    let env = TestEnv::new().await;
    let db = seed_catalog(&env, 30).await;
    let a = spawn(&env, settings(&env, &[])).await;
    let b = spawn(&env, settings(&env, &[])).await;
    // Asked for before it exists: a negative entry and a bloom rejection must not outlive it.
    assert_eq!(get(&b, "/api/skus/31").await.0, 404);

    let res = as_user(a.client().post(a.url("/admin/products")), "1", &["admin"])
        .json(&product(12_900))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let created: serde_json::Value = res.json().await.unwrap();
    let sku = created["sku_ids"][0].as_i64().unwrap();
    let spu = created["spu_id"].as_i64().unwrap();
    assert_eq!(sku, 31);

    for app in [&a, &b] {
        eventually(
            Duration::from_secs(1),
            "the new SKU on every instance",
            || async {
                let (status, body) = get(app, &format!("/api/skus/{sku}")).await;
                if status == 200 && body["price_cents"] == 12_900 {
                    Ok(())
                } else {
                    Err((status, body))
                }
            },
        )
        .await;
        let (status, body) = get(app, &format!("/api/products/{spu}")).await;
        assert_eq!(status, 200);
        assert_eq!(body["skus"].as_array().unwrap().len(), 2);
        assert_eq!(body["price_cents"], 12_900);
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM skus")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(count, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_writes_get_clear_errors_and_change_nothing() {
    let env = TestEnv::new().await;
    let db = seed_catalog(&env, 30).await;
    let app = spawn(&env, settings(&env, &[])).await;
    let post = |body: serde_json::Value, roles: &[&str]| {
        as_user(app.client().post(app.url("/admin/products")), "7", roles)
            .json(&body)
            .send()
    };
    let code = |res: reqwest::Response| async move {
        let status = res.status().as_u16();
        let body: serde_json::Value = res.json().await.unwrap();
        (status, body["code"].as_str().unwrap_or("").to_owned())
    };

    assert_eq!(
        code(post(product(0), &["admin"]).await.unwrap()).await,
        (422, "validation_failed".into())
    );
    assert_eq!(
        code(post(product(-5), &["admin"]).await.unwrap()).await,
        (422, "validation_failed".into())
    );
    let mut untitled = product(100);
    untitled["title"] = json!("  ");
    assert_eq!(
        code(post(untitled, &["admin"]).await.unwrap()).await,
        (422, "validation_failed".into())
    );
    let mut not_leaf = product(100);
    not_leaf["category_id"] = json!(1);
    assert_eq!(
        code(post(not_leaf, &["admin"]).await.unwrap()).await,
        (422, "unknown_category".into())
    );
    let mut no_brand = product(100);
    no_brand["brand_id"] = json!(999_999);
    assert_eq!(
        code(post(no_brand, &["admin"]).await.unwrap()).await,
        (422, "unknown_brand".into())
    );
    assert_eq!(
        code(post(product(100), &[]).await.unwrap()).await,
        (403, "forbidden".into())
    );

    let anonymous = app
        .client()
        .post(app.url("/admin/products"))
        .json(&product(100))
        .send()
        .await
        .unwrap();
    assert_eq!(code(anonymous).await, (401, "unauthorized".into()));
    let forged = app
        .client()
        .post(app.url("/admin/products"))
        .header("x-mall-identity", format!("v1;{};1;admin;1", "0".repeat(64)))
        .json(&product(100))
        .send()
        .await
        .unwrap();
    assert_eq!(code(forged).await, (401, "unauthorized".into()));
    let malformed = as_user(app.client().post(app.url("/admin/products")), "1", &["admin"])
        .header("content-type", "application/json")
        .body("{\"title\":")
        .send()
        .await
        .unwrap();
    assert_eq!(code(malformed).await, (400, "malformed_json".into()));

    let patch_unknown = as_user(app.client().patch(app.url("/admin/skus/999999")), "1", &["admin"])
        .json(&json!({"price_cents": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(code(patch_unknown).await, (404, "not_found".into()));
    let patch_negative = as_user(app.client().patch(app.url("/admin/skus/1")), "1", &["admin"])
        .json(&json!({"price_cents": -100}))
        .send()
        .await
        .unwrap();
    assert_eq!(code(patch_negative).await, (422, "validation_failed".into()));

    let (skus, spus, price): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM skus), (SELECT count(*) FROM spus), (SELECT price_cents FROM skus WHERE id = 1)",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!((skus, spus), (30, 10), "nothing was written");
    assert!(price > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_price_endpoint_reads_current_prices_and_the_openapi_document_lists_the_api() {
    let env = TestEnv::new().await;
    seed_catalog(&env, 30).await;
    let app = spawn(&env, settings(&env, &[])).await;
    let res = as_user(app.client().patch(app.url("/admin/skus/2")), "1", &["admin"])
        .json(&json!({"price_cents": 777}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app
        .client()
        .post(app.url("/internal/prices"))
        .json(&json!({"sku_ids": [2, 3, 999999]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    let prices = body["prices"].as_array().unwrap();
    assert_eq!(prices.len(), 2, "unknown ids are absent");
    assert_eq!(prices[0]["sku_id"], 2);
    assert_eq!(prices[0]["price_cents"], 777);

    let (status, doc) = get(&app, "/openapi.json").await;
    assert_eq!(status, 200);
    for path in [
        "/api/skus/{sku_id}",
        "/api/products",
        "/api/categories",
        "/admin/products",
        "/internal/prices",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
}
