//! Completes a service's generated OpenAPI document with what every route shares, so the
//! document lists every status and error `code` a route can answer (issue 27, point 3).
//!
//! Handlers document their own outcomes; an error response's description starts with its codes:
//! `"validation_failed, unknown_sku (with `skus`): explanation"`. [`complete`] then adds the
//! answers of the shared edge (extractors, body limit, auth, unavailable dependencies), gives
//! every error response the [`ErrorBody`](crate::error::ErrorBody) schema with its codes as an
//! `enum`, so a conformance checker (schemathesis) fails on an undocumented code, and declares
//! the bearer scheme.

use serde_json::{Map, Value, json};

/// The security scheme's name in every document.
pub const BEARER: &str = "bearer";

/// The shared answers an operation can give besides its own, from what the document says of it.
fn shared_errors(path: &str, op: &Value) -> Vec<(u16, &'static str)> {
    let params = op["parameters"].as_array().map(Vec::as_slice).unwrap_or_default();
    let has_in = |place: &str| params.iter().any(|p| p["in"] == place);
    let mut errors = Vec::new();
    if path.contains('{') {
        errors.push((400, "invalid_path"));
    }
    if has_in("query") {
        errors.push((400, "invalid_query"));
    }
    if op.get("requestBody").is_some() {
        errors.extend([
            (400, "malformed_json"),
            (413, "payload_too_large"),
            (415, "unsupported_media_type"),
            (422, "invalid_body"),
            (422, "validation_failed"),
        ]);
    }
    if is_admin(path) || op.get("security").is_some() {
        errors.push((401, "unauthorized"));
    }
    if is_admin(path) {
        errors.push((403, "forbidden"));
    }
    errors.extend([(503, "unavailable"), (504, "timeout")]);
    errors
}

fn is_admin(path: &str) -> bool {
    path.starts_with("/admin/")
}

/// The codes an error response's description starts with: comma-separated, each optionally
/// followed by a parenthesised note, up to the first `:`. `None` when a token is not a code.
fn codes_of(description: &str) -> Option<Vec<String>> {
    let head = description.split(':').next().unwrap_or_default();
    let mut codes = Vec::new();
    for token in head.split(',') {
        let code = token.split('(').next().unwrap_or_default().trim();
        let well_formed = !code.is_empty()
            && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            && !code.starts_with('_');
        if !well_formed {
            return None;
        }
        codes.push(code.to_owned());
    }
    Some(codes)
}

/// The document with the shared answers, the error schema on every 4xx/5xx (its `code` an enum
/// of the documented codes) and the bearer scheme on admin routes.
///
/// # Panics
/// When an error response's description does not start with its codes: a fault of the
/// annotations, caught by every test that fetches the document.
pub fn complete(doc: &impl serde::Serialize) -> Value {
    let mut doc = serde_json::to_value(doc).expect("an OpenAPI document serializes");
    let paths = doc["paths"]
        .as_object_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut completed = Map::new();
    for (path, mut item) in paths {
        if let Some(ops) = item.as_object_mut() {
            for (method, op) in ops.iter_mut() {
                if op.is_object() {
                    complete_operation(&path, method, op);
                }
            }
        }
        completed.insert(path, item);
    }
    doc["paths"] = Value::Object(completed);
    let components = doc
        .as_object_mut()
        .expect("a document is an object")
        .entry("components")
        .or_insert_with(|| json!({}));
    let components = components.as_object_mut().expect("components is an object");
    components.entry("schemas").or_insert_with(|| json!({}))["Error"] = error_schema();
    components.insert("securitySchemes".into(), json!({
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A token from `mall-gateway token`; the gateway verifies it and passes the identity on."
        }
    }));
    doc
}

fn complete_operation(path: &str, method: &str, op: &mut Value) {
    let shared = shared_errors(path, op);
    // utoipa names an operation after its handler, and `show` or `list` recur across modules.
    if let (Some(id), Some(tag)) = (op["operationId"].as_str(), op["tags"][0].as_str())
        && !id.starts_with(tag)
    {
        op["operationId"] = format!("{tag}_{id}").into();
    }
    if is_admin(path) && op.get("security").is_none() {
        op["security"] = json!([{ BEARER: [] }]);
    }
    let responses = op["responses"]
        .as_object_mut()
        .expect("an operation has responses");
    // OpenAPI requires a description; utoipa leaves it out when an annotation gives none.
    for (status, response) in responses.iter_mut() {
        if response.get("description").is_none() {
            let reason = status
                .parse::<http::StatusCode>()
                .ok()
                .and_then(|s| s.canonical_reason());
            response["description"] = reason.unwrap_or("answer").into();
        }
    }
    let mut codes: std::collections::BTreeMap<u16, (Vec<String>, Option<String>)> = Default::default();
    for (status, response) in responses.iter() {
        let Ok(status) = status.parse::<u16>() else {
            continue;
        };
        if status < 400 {
            continue;
        }
        let description = response["description"].as_str().unwrap_or_default();
        let listed = codes_of(description).unwrap_or_else(|| {
            panic!(
                "{method} {path}: the {status} description must start with its error codes: {description:?}"
            )
        });
        codes.insert(status, (listed, Some(description.to_owned())));
    }
    for (status, code) in shared {
        let (listed, _) = codes.entry(status).or_default();
        if !listed.iter().any(|c| c == code) {
            listed.push(code.to_owned());
        }
    }
    for (status, (listed, description)) in codes {
        let description = description.unwrap_or_else(|| listed.join(", "));
        responses.insert(status.to_string(), error_response(status, description, listed));
    }
}

/// Adds `code` to the `status` answer of an operation's `responses`, making that answer when
/// it has none (the gateway adds its own answers to the services' operations this way).
pub fn add_error(responses: &mut Map<String, Value>, status: u16, code: &str) {
    let response = responses
        .entry(status.to_string())
        .or_insert_with(|| error_response(status, code.to_owned(), Vec::new()));
    let codes = &mut response["content"]["application/json"]["schema"]["properties"]["code"]["enum"];
    if let Some(codes) = codes.as_array_mut()
        && !codes.iter().any(|c| c == code)
    {
        codes.push(code.into());
    }
}

/// An error answer: the Error schema with `codes` as the enum of its `code`.
fn error_response(status: u16, description: String, codes: Vec<String>) -> Value {
    let mut response = json!({
        "description": description,
        "content": { "application/json": { "schema": {
            "allOf": [{ "$ref": "#/components/schemas/Error" }],
            "properties": { "code": { "enum": codes } }
        } } }
    });
    if status == 503 || status == 429 {
        response["headers"] = json!({
            "Retry-After": { "description": "seconds to wait before retrying", "schema": { "type": "integer" } }
        });
    }
    response
}

/// [`ErrorBody`](crate::error::ErrorBody) as a schema; other fields (e.g. `skus`) may follow.
fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": { "type": "string", "description": "stable, machine-readable; match on it" },
            "message": { "type": "string", "description": "for people; may change" }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_up_to_the_explanation() {
        assert_eq!(codes_of("not_found"), Some(vec!["not_found".into()]));
        assert_eq!(
            codes_of("validation_failed, unknown_sku (with `skus`): nothing is reserved"),
            Some(vec!["validation_failed".into(), "unknown_sku".into()])
        );
        assert_eq!(codes_of("unknown or delisted: not_found"), None);
        assert_eq!(codes_of(""), None);
    }

    #[test]
    fn an_operation_gains_the_shared_answers_and_keeps_its_own() {
        let doc = json!({
            "openapi": "3.1.0",
            "paths": { "/admin/stock/{sku_id}/receive": { "post": {
                "parameters": [{ "name": "sku_id", "in": "path" }],
                "requestBody": { "content": {} },
                "responses": {
                    "200": { "description": "ok" },
                    "422": { "description": "unknown_sku: the catalog has no such SKU" }
                }
            } } }
        });
        let done = complete(&doc);
        let op = &done["paths"]["/admin/stock/{sku_id}/receive"]["post"];
        let codes = |s: &str| {
            op["responses"][s]["content"]["application/json"]["schema"]["properties"]["code"]["enum"].clone()
        };
        assert_eq!(codes("400"), json!(["invalid_path", "malformed_json"]));
        assert_eq!(
            codes("422"),
            json!(["unknown_sku", "invalid_body", "validation_failed"])
        );
        assert_eq!(codes("401"), json!(["unauthorized"]));
        assert_eq!(codes("403"), json!(["forbidden"]));
        assert_eq!(codes("503"), json!(["unavailable"]));
        assert_eq!(
            op["responses"]["422"]["description"],
            "unknown_sku: the catalog has no such SKU"
        );
        assert_eq!(op["responses"]["200"], json!({ "description": "ok" }));
        assert_eq!(op["security"], json!([{ "bearer": [] }]));
        assert!(done["components"]["schemas"]["Error"].is_object());
    }

    #[test]
    #[should_panic(expected = "must start with its error codes")]
    fn an_error_described_without_its_codes_is_refused() {
        let doc = json!({ "paths": { "/x": { "get": { "responses": { "404": { "description": "Not there" } } } } } });
        complete(&doc);
    }
}
