//! A small mall: product (seeded), inventory (stocked) and order, sharing one test env.

use std::time::Duration;

use mall_common::config::Vars;
use mall_common::db::Db;
use mall_common::telemetry::TelemetrySettings;
use mall_testkit::{TestEnv, TestServer};
use serde_json::{Value, json};

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
    let product_settings = {
        let mut s = mall_product::Settings::from_vars(&Vars::default()).unwrap();
        s.platform = env.platform_settings(&mall_product::config::DEFAULTS);
        s.telemetry = TelemetrySettings::local("mall-product");
        s
    };
    let db = Db::connect_lazy(&product_settings.platform.database, "seed").unwrap();
    db.migrate(&mall_product::startup::MIGRATIONS).await.unwrap();
    mall_product::store::seed::seed(&db, skus).await.unwrap();
    let product = env
        .start(mall_product::build(product_settings).await.unwrap().into_server())
        .await;

    let inventory_settings = {
        let catalog = [("MALL_PRODUCT_URLS", product.url(""))];
        let mut s = mall_inventory::Settings::from_vars(&Vars::from_pairs(catalog)).unwrap();
        s.platform = env.platform_settings(&mall_inventory::config::DEFAULTS);
        s.telemetry = TelemetrySettings::local("mall-inventory");
        s
    };
    let inventory = env
        .start(
            mall_inventory::build(inventory_settings)
                .await
                .unwrap()
                .into_server(),
        )
        .await;
    for sku in 1..=skus as i64 {
        let res = admin(
            inventory
                .client()
                .post(inventory.url(&format!("/admin/stock/{sku}/receive"))),
        )
        .json(&json!({ "quantity": stock }))
        .send()
        .await
        .unwrap();
        assert_eq!(res.status(), 200);
    }

    let mut pairs: Vec<(String, String)> = vec![
        ("MALL_PRODUCT_URLS".into(), product.url("")),
        ("MALL_INVENTORY_URLS".into(), inventory.url("")),
        ("MALL_OUTBOX_INTERVAL".into(), "50ms".into()),
    ];
    pairs.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let mut order_settings = mall_order::Settings::from_vars(&Vars::from_pairs(pairs)).unwrap();
    order_settings.platform = env.platform_settings(&mall_order::config::DEFAULTS);
    order_settings.telemetry = TelemetrySettings::local("mall-order");
    tweak(&mut order_settings);
    let order = env
        .start(mall_order::build(order_settings).await.unwrap().into_server())
        .await;
    Mall {
        product,
        _inventory: inventory,
        order,
    }
}

pub(crate) use mall_testkit::checks::{as_admin as admin, as_user as user};

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
