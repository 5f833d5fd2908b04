//! A small mall: product (seeded), inventory (stocked) and order, sharing one test env.

use std::time::Duration;

use mall_common::db::Db;
use mall_testkit::{TestEnv, TestServer};
use serde_json::Value;

/// The three services of a checkout.
pub(crate) struct Mall {
    pub(crate) product: TestServer,
    /// Kept running for the order service to call.
    pub(crate) _inventory: TestServer,
    pub(crate) order: TestServer,
}

/// Starts product (with `skus` seeded SKUs), inventory (each SKU stocked with `stock` units),
/// and order with `extra` variables; `tweak` may change order's settings further.
pub(crate) async fn mall(env: &TestEnv, skus: usize, stock: i64, extra: &[(&str, &str)]) -> Mall {
    mall_with(env, skus, stock, extra, |_| {}).await
}

pub(crate) async fn mall_with(
    env: &TestEnv,
    skus: usize,
    stock: i64,
    extra: &[(&str, &str)],
    tweak: impl FnOnce(&mut mall_order::Settings),
) -> Mall {
    let product_settings = env.settings::<mall_product::Product>(&[]);
    let db = Db::connect_lazy(&product_settings.platform.database, "seed").unwrap();
    db.migrate(&mall_product::startup::MIGRATIONS).await.unwrap();
    mall_product::store::seed::seed(&db, skus).await.unwrap();
    let product = env.spawn::<mall_product::Product>(&[]).await;
    let product_urls = product.url("");
    let inventory = env
        .spawn::<mall_inventory::Inventory>(&[("MALL_PRODUCT_URLS", &product_urls)])
        .await;
    for sku in 1..=skus as i64 {
        mall_testkit::checks::receive_stock(&inventory, sku, stock).await;
    }

    let inventory_urls = inventory.url("");
    let mut vars = vec![
        ("MALL_PRODUCT_URLS", product_urls.as_str()),
        ("MALL_INVENTORY_URLS", inventory_urls.as_str()),
        ("MALL_OUTBOX_INTERVAL", "50ms"),
    ];
    vars.extend_from_slice(extra);
    let order = env.spawn_with::<mall_order::Order>(&vars, tweak).await;
    Mall {
        product,
        _inventory: inventory,
        order,
    }
}

pub(crate) use mall_testkit::checks::as_user as user;

/// `POST /api/orders` as `buyer` with `key`; status and body.
pub(crate) async fn checkout(order: &TestServer, buyer: &str, key: &str, body: Value) -> (u16, Value) {
    let res = user(order.client().post(order.url("/api/orders")), buyer)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Sends a signed payment callback; status and body.
pub(crate) async fn pay(order: &TestServer, body: &Value, secret: &str) -> (u16, Value) {
    let raw = serde_json::to_vec(body).unwrap();
    let sig = mall_order::domain::sign(secret.as_bytes(), &raw);
    let res = order
        .client()
        .post(order.url("/api/payments/callback"))
        .header("content-type", "application/json")
        .header("x-signature", sig)
        .body(raw)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The development payment secret.
pub(crate) const SECRET: &str = mall_order::config::DEV_PAYMENT_SECRET;

/// The inventory numbers (available, reserved, sold, received) of a SKU.
pub(crate) async fn stock(env: &TestEnv, sku: i64) -> (i64, i64, i64, i64) {
    let db = Db::connect_lazy(
        &env.platform_settings(&mall_inventory::config::DEFAULTS).database,
        "t",
    )
    .unwrap();
    sqlx::query_as("SELECT available, reserved, sold, received FROM stock WHERE sku_id = $1")
        .bind(sku)
        .fetch_one(db.pool())
        .await
        .unwrap()
}

/// A reservation's status at inventory.
pub(crate) async fn reservation_status(env: &TestEnv, id: &str) -> String {
    let db = Db::connect_lazy(
        &env.platform_settings(&mall_inventory::config::DEFAULTS).database,
        "t",
    )
    .unwrap();
    sqlx::query_scalar("SELECT status FROM reservations WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(db.pool())
        .await
        .unwrap()
}

/// The order service's database.
pub(crate) fn order_db(env: &TestEnv) -> Db {
    Db::connect_lazy(
        &env.platform_settings(&mall_order::config::DEFAULTS).database,
        "t",
    )
    .unwrap()
}

/// Long enough for outbox relay + consumer.
pub(crate) const SETTLE: Duration = Duration::from_secs(15);
