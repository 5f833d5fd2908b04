//! Extractors whose rejections speak the standard error body with stable codes.
//!
//! axum's own `Json`, `Query` and `Path` reject with plain text; these wrappers answer
//! `malformed_json`, `invalid_body`, `unsupported_media_type`, `payload_too_large`,
//! `invalid_query` and `invalid_path` instead, so clients can match on codes. They also refuse
//! the NUL character in any string (422 `validation_failed` in a body, 400 `invalid_query` or
//! `invalid_path` in the URL, naming the field): PostgreSQL cannot store it in text, so it
//! would otherwise reach a query and come back as a 500, counted against a healthy service.

use axum::extract::rejection::{JsonRejection, MissingJsonContentType, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// JSON body extractor and response.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // axum's own rejections, so they map to our codes in one place (`From<JsonRejection>`).
        if !json_content_type(req.headers()) {
            return Err(JsonRejection::from(MissingJsonContentType::default()).into());
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(JsonRejection::from)?;
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        // Only a body that spells `\u0000` somewhere is read again, as a tree, to be sure.
        if memchr::memmem::find(&bytes, br"\u0000").is_some()
            && let Ok(tree) = serde_json::from_slice::<Value>(&bytes)
            && let Some(field) = nul_field(&tree, "")
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("{field}: must not contain the NUL character"),
            ));
        }
        Ok(Json(value))
    }
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`),
/// as axum's own `Json` decides.
fn json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|m| {
            m.type_() == "application" && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"))
        })
}

/// The path (`items[2].title`) of the first string or key in `value` holding a NUL.
fn nul_field(value: &Value, at: &str) -> Option<String> {
    let named = |at: &str| {
        if at.is_empty() {
            "body".to_owned()
        } else {
            at.to_owned()
        }
    };
    match value {
        Value::String(s) if s.contains('\0') => Some(named(at)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_field(item, &format!("{at}[{i}]"))),
        Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            let path = if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            };
            if key.contains('\0') {
                Some(named(at))
            } else {
                nul_field(item, &path)
            }
        }),
        _ => None,
    }
}

/// Query-string extractor.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // `%00` is the only way a NUL reaches a decoded parameter.
        if let Some(query) = parts.uri.query().filter(|q| q.contains("%00"))
            && let Some((name, _)) = form_urlencoded::parse(query.as_bytes())
                .find(|(name, value)| name.contains('\0') || value.contains('\0'))
        {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("{}: must not contain the NUL character", name.escape_debug()),
            ));
        }
        let axum::extract::Query(value) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

/// Path-parameter extractor.
#[derive(Debug, Clone, Copy)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if parts.uri.path().contains("%00") {
            return Err(ApiError::bad_request(
                "invalid_path",
                "path parameters must not contain the NUL character",
            ));
        }
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let text = rejection.body_text();
        let status = rejection.status();
        match rejection {
            JsonRejection::JsonSyntaxError(_) => ApiError::bad_request("malformed_json", text),
            JsonRejection::JsonDataError(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", text)
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(_) if status == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", text)
            }
            _ => ApiError::bad_request("bad_request", text),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use serde::Deserialize;
    use tower::ServiceExt as _;

    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Item {
        title: String,
        tags: Vec<String>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Search {
        q: Option<String>,
    }

    async fn answer(uri: &str, body: &str) -> (StatusCode, Value) {
        let app = Router::new().route(
            "/items/{name}",
            post(
                |Path(_name): Path<String>, Query(_q): Query<Search>, Json(_item): Json<Item>| async { "ok" },
            ),
        );
        let req = http::Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let res = app.oneshot(req).await.unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn a_nul_anywhere_is_refused_naming_where() {
        let good = r#"{"title": "a", "tags": ["x"]}"#;
        assert_eq!(answer("/items/a?q=b", good).await.0, StatusCode::OK);

        let (status, err) = answer("/items/a", r#"{"title": "a\u0000b", "tags": []}"#).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed"))
        );
        assert!(err["message"].as_str().unwrap().starts_with("title:"), "{err}");

        let (_, err) = answer("/items/a", r#"{"title": "a", "tags": ["x", "\u0000"]}"#).await;
        assert!(err["message"].as_str().unwrap().starts_with("tags[1]:"), "{err}");

        let (status, err) = answer("/items/a?q=%00", good).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_query"))
        );
        assert!(err["message"].as_str().unwrap().starts_with("q:"), "{err}");

        let (status, err) = answer("/items/a%00b", good).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_path"))
        );
    }

    #[tokio::test]
    async fn an_escaped_backslash_before_u0000_is_text_not_a_nul() {
        // `\\u0000` is a backslash followed by "u0000": a legal title.
        let body = r#"{"title": "C:\\u0000", "tags": []}"#;
        assert_eq!(answer("/items/a", body).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn bodies_keep_their_codes() {
        let (status, err) = answer("/items/a", "{").await;
        assert_eq!(
            (status, err["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("malformed_json"))
        );
        let (status, err) = answer("/items/a", r#"{"title": 3}"#).await;
        assert_eq!(
            (status, err["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_body"))
        );
    }
}
