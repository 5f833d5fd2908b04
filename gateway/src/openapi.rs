//! The public API as one document: `GET /openapi.json` merges the services' documents (asked
//! through their pools on each request, so it always matches the running versions), keeping
//! only the paths the route table exposes and adding what the gateway itself answers. `GET
//! /docs` renders it with Redoc.

use std::collections::HashMap;

use axum::Router;
use axum::body::Body;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures_util::future::try_join_all;
use http::Request;
use http_body_util::{BodyExt, Limited};
use mall_common::http::openapi::{self, BEARER};
use serde_json::{Map, Value, json};

use crate::error::GatewayError;
use crate::routes::{Access, PoolName, ROUTES, Route};
use crate::upstream::Pool;

/// A service document larger than this is refused (ours are about 30 KB).
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Redoc, pinned, from its CDN: the page is for people with a browser, who have the internet.
const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>mall API</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="https://cdn.redoc.ly/redoc/v2.5.1/bundles/redoc.standalone.js"></script></body>
</html>
"#;

/// `/openapi.json` and `/docs`.
pub fn router(pools: HashMap<PoolName, Pool>) -> Router {
    Router::new()
        .route("/openapi.json", get(move || document(pools.clone())))
        .route("/docs", get(|| async { Html(DOCS_PAGE) }))
}

async fn document(pools: HashMap<PoolName, Pool>) -> Response {
    let fetches = PoolName::ALL.map(|name| fetch(name, pools[&name].clone()));
    match try_join_all(fetches).await {
        Ok(docs) => axum::Json(merge(&docs)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn fetch(name: PoolName, pool: Pool) -> Result<(PoolName, Value), GatewayError> {
    let unavailable = |cause: String| GatewayError::DocumentUnavailable {
        service: name.as_str(),
        cause,
    };
    let req = Request::get("/openapi.json")
        .body(Body::empty())
        .expect("a static request");
    let res = pool.send(req).await.map_err(|e| unavailable(e.to_string()))?;
    if !res.status().is_success() {
        return Err(unavailable(format!("answered {}", res.status())));
    }
    let bytes = Limited::new(res.into_body(), MAX_DOCUMENT_BYTES)
        .collect()
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .to_bytes();
    let doc = serde_json::from_slice(&bytes).map_err(|e| unavailable(e.to_string()))?;
    Ok((name, doc))
}

/// The route of `pool` serving `path` (an OpenAPI path template), the most specific first.
fn route_of(pool: PoolName, path: &str) -> Option<&'static Route> {
    ROUTES
        .iter()
        .filter(|r| r.pool == pool)
        .filter(|r| {
            path == r.path
                || (r.prefix
                    && path
                        .strip_prefix(r.path)
                        .is_some_and(|rest| rest.starts_with('/')))
        })
        .max_by_key(|r| r.path.len())
}

/// The public API: every path of every service the route table exposes, with the answers of
/// the gateway added to each operation, and the services' schemas and tags.
pub fn merge(docs: &[(PoolName, Value)]) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let mut tags: Vec<Value> = Vec::new();
    for (pool, doc) in docs {
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            let Some(route) = route_of(*pool, path) else {
                continue;
            };
            let mut item = item.clone();
            for op in item.as_object_mut().into_iter().flat_map(|ops| ops.values_mut()) {
                if op.get("responses").is_some() {
                    add_gateway_answers(op, route.access);
                }
                // Operation ids are unique within a service; the service's name makes them so here.
                if let Some(id) = op["operationId"].as_str() {
                    op["operationId"] = format!("{}_{id}", pool.as_str()).into();
                }
            }
            paths.insert(path.clone(), item);
        }
        for (name, schema) in doc["components"]["schemas"].as_object().into_iter().flatten() {
            schemas.entry(name.clone()).or_insert_with(|| schema.clone());
        }
        for tag in doc["tags"].as_array().into_iter().flatten() {
            if !tags.iter().any(|t| t["name"] == tag["name"]) {
                tags.push(tag.clone());
            }
        }
    }
    let security_schemes = docs
        .iter()
        .find_map(|(_, d)| d["components"].get("securitySchemes").cloned())
        .unwrap_or_else(|| json!({}));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "mall",
            "description": "The public API of mall, as the gateway serves it: catalog, stock, carts, orders, payments and flash sales. Error bodies are `{code, message}`; match on `code`.",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "paths": paths,
        "components": { "schemas": schemas, "securitySchemes": security_schemes },
        "tags": tags,
    })
}

/// What the gateway answers before or instead of the service: auth, rate limits, size limits
/// and upstream failures.
fn add_gateway_answers(op: &mut Value, access: Access) {
    let mut answers = vec![
        (400, "bad_request"),
        (401, "unauthorized"),
        (408, "request_timeout"),
        (413, "payload_too_large"),
        (414, "uri_too_long"),
        (429, "rate_limited"),
        (431, "headers_too_large"),
        (502, "bad_gateway"),
        (503, "overloaded"),
        (503, "upstream_unavailable"),
        (504, "upstream_timeout"),
    ];
    match access {
        Access::Public => {}
        Access::User => op["security"] = json!([{ BEARER: [] }]),
        Access::Admin => {
            op["security"] = json!([{ BEARER: [] }]);
            answers.push((403, "forbidden"));
        }
    }
    let responses = op["responses"].as_object_mut().expect("checked by the caller");
    for (status, code) in answers {
        openapi::add_error(responses, status, code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service_doc(paths: Value) -> Value {
        json!({
            "paths": paths,
            "components": { "schemas": { "Error": {}, "Stock": {} }, "securitySchemes": { "bearer": {} } },
            "tags": [{ "name": "stock" }],
        })
    }

    #[test]
    fn only_routed_paths_are_public_and_each_carries_the_gateways_answers() {
        let ok = json!({ "responses": { "200": { "description": "ok" } } });
        let inventory = service_doc(json!({
            "/api/stock/{sku_id}": { "get": ok },
            "/admin/stock/{sku_id}": { "get": ok },
            "/internal/reservations": { "post": ok },
        }));
        let flashsale = service_doc(json!({ "/api/flashsale/purchase": { "post": ok } }));
        let merged = merge(&[(PoolName::Inventory, inventory), (PoolName::Flashsale, flashsale)]);
        let paths = merged["paths"].as_object().expect("paths");
        let mut names: Vec<_> = paths.keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "/admin/stock/{sku_id}",
                "/api/flashsale/purchase",
                "/api/stock/{sku_id}"
            ]
        );

        let codes = |path: &str, method: &str, status: &str| {
            merged["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]["properties"]
                ["code"]["enum"]
                .clone()
        };
        assert_eq!(codes("/admin/stock/{sku_id}", "get", "403"), json!(["forbidden"]));
        assert_eq!(
            codes("/api/stock/{sku_id}", "get", "403"),
            Value::Null,
            "public: no 403"
        );
        assert_eq!(
            codes("/api/stock/{sku_id}", "get", "503"),
            json!(["overloaded", "upstream_unavailable"])
        );
        assert_eq!(
            merged["paths"]["/api/flashsale/purchase"]["post"]["security"],
            json!([{ "bearer": [] }])
        );
        assert!(
            merged["paths"]["/api/stock/{sku_id}"]["get"]
                .get("security")
                .is_none()
        );
        assert_eq!(merged["tags"], json!([{ "name": "stock" }]));
        assert!(merged["components"]["schemas"]["Stock"].is_object());
    }

    #[test]
    fn a_services_own_codes_for_a_status_are_kept() {
        let doc = service_doc(json!({ "/api/products": { "get": { "responses": { "400": {
            "description": "invalid_query",
            "content": { "application/json": { "schema": { "properties": { "code": { "enum": ["invalid_query"] } } } } }
        } } } } }));
        let merged = merge(&[(PoolName::Product, doc)]);
        let codes = &merged["paths"]["/api/products"]["get"]["responses"]["400"]["content"]["application/json"]
            ["schema"]["properties"]["code"]["enum"];
        assert_eq!(codes, &json!(["invalid_query", "bad_request"]));
    }
}
