//! The checks every request head passes before it is routed.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap};
use http::{Request, Version};
use mall_common::http::MAX_CLIENT_FIELDS;

use crate::error::GatewayError;

fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum()
}

/// The longest request target the gateway takes (414 `uri_too_long` past it).
const MAX_TARGET: usize = 8 * 1024;

/// What every request must pass before it is routed, answered with a closed connection when it
/// does not (the rest of what the client sent cannot be trusted to frame the next request):
/// 400 for a head that is ambiguous or reaches past its route (both `Content-Length` and
/// `Transfer-Encoding`; HTTP/1.1 without exactly one `Host`; an absolute-form target naming
/// another host than `Host`; a dot segment or encoded slash), 414 for a target over 8 KiB,
/// 431 for more fields or bytes than the gateway passes on. hyper refused what it could not
/// parse before this.
/// Returns the refusal, if any.
pub fn refusal(req: &Request<Body>, max_header_bytes: usize) -> Option<Response> {
    check_head(req, max_header_bytes).err().map(|e| {
        let mut res = e.into_response();
        res.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        res
    })
}

fn check_head(req: &Request<Body>, max_header_bytes: usize) -> Result<(), GatewayError> {
    let headers = req.headers();
    // The standard stack has set `x-request-id` by now: one field more than the client sent.
    if header_bytes(headers) > max_header_bytes || headers.len() > MAX_CLIENT_FIELDS + 1 {
        return Err(GatewayError::HeadersTooLarge {
            max_bytes: max_header_bytes,
            max_fields: MAX_CLIENT_FIELDS,
        });
    }
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_TARGET {
        return Err(GatewayError::UriTooLong(MAX_TARGET));
    }
    if headers.contains_key(header::CONTENT_LENGTH) && headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(GatewayError::BadRequest(
            "a request may not carry both Content-Length and Transfer-Encoding",
        ));
    }
    if req.version() < Version::HTTP_2 {
        let hosts = headers.get_all(header::HOST).iter().count();
        if hosts > 1 || (hosts == 0 && req.version() == Version::HTTP_11) {
            return Err(GatewayError::BadRequest(
                "an HTTP/1.1 request needs exactly one Host field",
            ));
        }
        if let Some(authority) = req.uri().authority() {
            let host = headers.get(header::HOST).map(http::HeaderValue::as_bytes);
            if host.is_some_and(|host| !host.eq_ignore_ascii_case(authority.as_str().as_bytes())) {
                return Err(GatewayError::BadRequest(
                    "the request target names another host than the Host field",
                ));
            }
        }
    }
    if !path_is_plain(req.uri().path()) {
        return Err(GatewayError::InvalidPath);
    }
    Ok(())
}

/// Whether a path stays below the route it matched: no `.` or `..` segment (plain or
/// percent-encoded), no encoded slash or backslash, no empty segment inside it. Services route
/// the raw path, but whatever sits between them and the gateway may normalise it toward
/// `/internal/...`.
fn path_is_plain(path: &str) -> bool {
    // Most paths hold none of the bytes that could hide a step out of the route.
    if !path.bytes().any(|b| matches!(b, b'%' | b'.' | b'\\')) && !path.contains("//") {
        return true;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains('\\') {
        return false;
    }
    let segments: Vec<&str> = lower.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    segments.iter().enumerate().all(|(i, segment)| {
        let decoded = segment.replace("%2e", ".");
        decoded != "." && decoded != ".." && (i == last || !segment.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_reach_past_their_route_are_not_plain() {
        for plain in [
            "/api/products",
            "/api/products/7",
            "/api/products/",
            "/api/p.x/..y",
        ] {
            assert!(path_is_plain(plain), "{plain}");
        }
        for reaching in [
            "/api/products/../internal/x",
            "/api/products/%2e%2e/internal",
            "/api/products/%2E%2e/internal",
            "/api/products/.%2E/internal",
            "/api/products/..%2finternal",
            "/api/products/..%2Finternal",
            "/api/products//internal",
            "/api/products/./x",
            "/api/products/..\\internal",
        ] {
            assert!(!path_is_plain(reaching), "{reaching}");
        }
    }
}
