//! The payment provider's callback: HMAC-SHA256 over the raw body, checked before anything.

use axum::body::Bytes;
use axum::extract::State;
use http::HeaderMap;
use mall_common::http::Json;
use serde_json::{Value, json};

use crate::domain::{self, PaymentCallback};
use crate::error::OrderError;
use crate::state::AppState;
use crate::store;

/// The payment provider's result.
#[utoipa::path(post, path = "/api/payments/callback", tag = "payments", request_body = PaymentCallback,
    params(("X-Signature" = String, Header, description = "hex HMAC-SHA256 of the raw body with the payment secret")),
    responses((status = 200, description = "`{payment_id, order_id, outcome}`: applied, late, ignored, mismatch, unknown_order, duplicate"),
              (status = 401, description = "invalid_signature"), (status = 422, description = "validation_failed")))]
/// `POST /api/payments/callback` with `X-Signature`.
pub(super) async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, OrderError> {
    let signature = headers
        .get("x-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !domain::verify(&state.payment_secret, &body, signature) {
        return Err(OrderError::InvalidSignature);
    }
    let cb: PaymentCallback = serde_json::from_slice(&body).map_err(|_| domain::ValidationError {
        field: "body",
        reason: "not a payment callback",
    })?;
    // Read from the raw body (the signature covers its bytes), so the Json extractor's NUL
    // check is done here: PostgreSQL refuses NUL in text.
    if cb.payment_id.contains('\0') {
        return Err(domain::ValidationError {
            field: "payment_id",
            reason: "must not contain the NUL character",
        }
        .into());
    }
    if cb.payment_id.is_empty() || cb.payment_id.len() > 200 || cb.amount_cents <= 0 {
        return Err(domain::ValidationError {
            field: "body",
            reason: "payment_id and a positive amount_cents",
        }
        .into());
    }
    let outcome = store::pay(&state.db, &cb).await?;
    Ok(Json(
        json!({ "payment_id": cb.payment_id, "order_id": cb.order_id, "outcome": outcome }),
    ))
}
