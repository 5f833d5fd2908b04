//! A stand-in for mall-product's `POST /internal/prices`, for tests of services that only need
//! to know whether a SKU exists (inventory's stock intake) without starting and seeding the
//! catalog. The order tests use the real product service instead.
//!
//! One per test process, on a thread of its own. It knows every SKU id from 1 to
//! [`UNKNOWN_SKUS_FROM`] - 1.

use std::sync::OnceLock;

use axum::Router;
use axum::routing::post;
use serde_json::{Value, json};

/// SKU ids from here up are unknown to the catalog.
pub const UNKNOWN_SKUS_FROM: i64 = 900_000_000;

/// `http://127.0.0.1:<port>` of the process's catalog, started on first use.
pub fn catalog_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let app = Router::new().route("/internal/prices", post(prices));
        format!("http://{}", crate::server::serve_for_the_process("catalog", app))
    })
    .clone()
}

async fn prices(axum::Json(req): axum::Json<Value>) -> axum::Json<Value> {
    let known: Vec<Value> = req["sku_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
        .filter(|id| (1..UNKNOWN_SKUS_FROM).contains(id))
        .map(|id| json!({ "sku_id": id, "price_cents": 1000, "status": "on_sale" }))
        .collect();
    axum::Json(json!({ "prices": known }))
}
