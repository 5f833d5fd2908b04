//! Spawning inventory instances and talking to them.

use mall_common::db::Db;
use mall_inventory::config::DEFAULTS;
use mall_inventory::{Inventory, Settings};
use mall_testkit::{TestEnv, TestServer};
use serde_json::{Value, json};
use uuid::Uuid;

/// Settings for this env plus `extra` variables; the catalog is testkit's, which knows SKUs
/// below [`mall_testkit::catalog::UNKNOWN_SKUS_FROM`].
pub(crate) fn settings(env: &TestEnv, extra: &[(&str, &str)]) -> Settings {
    let catalog = mall_testkit::catalog::catalog_url();
    let mut vars = vec![("MALL_PRODUCT_URLS", catalog.as_str())];
    vars.extend_from_slice(extra);
    env.settings::<Inventory>(&vars)
}

/// Builds and starts an instance.
pub(crate) async fn spawn(env: &TestEnv, settings: Settings) -> TestServer {
    env.spawn_with::<Inventory>(&[], |s| *s = settings).await
}

/// The env's database, as the service sees it.
pub(crate) fn db(env: &TestEnv) -> Db {
    Db::connect_lazy(&env.platform_settings(&DEFAULTS).database, "test").unwrap()
}

pub(crate) use mall_testkit::checks::as_admin;

pub(crate) use mall_testkit::checks::receive_stock as receive;

/// `POST /internal/reservations`; returns status and body.
pub(crate) async fn reserve(app: &TestServer, id: Uuid, items: Value) -> (u16, Value) {
    let res = app
        .client()
        .post(app.url("/internal/reservations"))
        .json(&json!({ "reservation_id": id, "owner": "order", "reference": format!("order-{id}"), "items": items, "ttl_secs": 600 }))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// (available, reserved, sold, received) of a SKU, straight from the database.
pub(crate) async fn numbers(db: &Db, sku: i64) -> (i64, i64, i64, i64) {
    sqlx::query_as("SELECT available, reserved, sold, received FROM stock WHERE sku_id = $1")
        .bind(sku)
        .fetch_one(db.pool())
        .await
        .unwrap()
}

/// Sum of ledger quantities of one movement for a SKU.
pub(crate) async fn ledger_sum(db: &Db, sku: i64, movement: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(quantity), 0)::bigint FROM ledger WHERE sku_id = $1 AND movement = $2",
    )
    .bind(sku)
    .bind(movement)
    .fetch_one(db.pool())
    .await
    .unwrap()
}
