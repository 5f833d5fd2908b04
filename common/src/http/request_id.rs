//! Request ids: the caller's `x-request-id` when usable (visible ASCII, at most 128 bytes), else
//! a new UUID, set by tower-http's request-id layers and echoed on the answer.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};
use uuid::Uuid;

use super::REQUEST_ID;

/// Longest caller-sent request id kept; a longer one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// Makes a UUID v4 request id where the request has none (tower-http's `SetRequestId`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeRequestUuid;

impl MakeRequestId for MakeRequestUuid {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        Some(RequestId::new(new_request_id()))
    }
}

/// Drops a caller-sent request id that is not usable, so a new one is made in its place.
pub(super) fn drop_unusable<B>(mut req: Request<B>) -> Request<B> {
    if req.headers().contains_key(REQUEST_ID) && callers_request_id(req.headers()).is_none() {
        req.headers_mut().remove(REQUEST_ID);
    }
    req
}

fn callers_request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get(REQUEST_ID)
        .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.to_str().is_ok())
        .cloned()
}

fn new_request_id() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    Uuid::new_v4().hyphenated().encode_lower(&mut text);
    // One allocation shared by every clone (the extension, the echo, the upstream request): a
    // value copied from a slice allocates a second time when it is first cloned.
    HeaderValue::from_maybe_shared(Bytes::from_owner(text)).expect("a UUID is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    #[test]
    fn unusable_request_ids_are_dropped_and_usable_ones_kept() {
        let with = |id: &str| {
            Request::builder()
                .header(REQUEST_ID, id)
                .body(Body::empty())
                .unwrap()
        };
        assert_eq!(drop_unusable(with("abc-123")).headers()[REQUEST_ID], "abc-123");
        let long = "x".repeat(MAX_REQUEST_ID + 1);
        assert!(drop_unusable(with(&long)).headers().get(REQUEST_ID).is_none());
        assert!(drop_unusable(with("")).headers().get(REQUEST_ID).is_none());
        let made = MakeRequestUuid.make_request_id(&with("x")).unwrap();
        assert!(Uuid::parse_str(made.header_value().to_str().unwrap()).is_ok());
    }
}
