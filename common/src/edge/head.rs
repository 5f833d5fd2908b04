//! A request head off the front of a connection's buffer: parsed with httparse, held to the
//! service's limits, and turned into `http` parts whose header values share the buffer (no copy
//! per header), with the body's framing decided (RFC 9112 6) and the hop-by-hop headers, this
//! connection's own, left out.

use std::mem::MaybeUninit;

use crate::error::ApiError;
use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

use crate::wire::{self, Chunk, Decoder};

/// Most header fields in a request (as the proxy's own check: 431 above).
pub(super) const MAX_FIELDS: usize = 100;
/// Longest request line; past it, 414 `uri_too_long`.
const MAX_REQUEST_LINE: usize = 8 * 1024;

/// A parsed request head.
pub(super) struct Head {
    pub(super) method: Method,
    pub(super) uri: Uri,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    /// How the body is delimited (`Length(0)`: none).
    pub(super) body: Decoder,
    /// The client keeps the connection for another request.
    pub(super) keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub(super) expects_continue: bool,
}

/// Takes a complete head off the front of `buf`; `Ok(None)` while it is still incomplete.
/// `max_head` bounds the whole head (request line and fields).
pub(super) fn parse(buf: &mut BytesMut, max_head: usize) -> Result<Option<Head>, ApiError> {
    // The head is found first and split off, then parsed where it lies: the fields' values
    // become slices of it (no copy, no offsets to keep), and httparse gets uninitialised room
    // for the fields (zeroing room for a hundred showed up as a tenth of the request's cost).
    let Some(end) = wire::head_end(buf) else {
        let line_ends = memchr::memchr(b'\n', &buf[..buf.len().min(MAX_REQUEST_LINE + 1)]);
        if line_ends.is_none() && buf.len() > MAX_REQUEST_LINE {
            return Err(too_long_uri());
        }
        if buf.len() > max_head {
            return Err(too_large_head(max_head));
        }
        return Ok(None);
    };
    if end > max_head {
        return Err(too_large_head(max_head));
    }
    let head = buf.split_to(end).freeze();
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(&head, &mut fields) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad_request("malformed request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large_head(max_head)),
        Err(e) => return Err(bad_request(&format!("malformed request: {e}"))),
    }
    let method = req.method.unwrap_or_default();
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad_request("invalid method"))?;
    let path = req.path.unwrap_or_default();
    if path.len() > MAX_REQUEST_LINE {
        return Err(too_long_uri());
    }
    let version = if req.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let uri = Uri::from_maybe_shared(head.slice_ref(path.as_bytes()))
        .map_err(|_| bad_request("invalid request target"))?;
    let count = req.headers.len();
    // Room for the fields and no more: the edge's routes add none (the gateway writes its own
    // into the upstream head, the request id is taken without inserting it), and room for a
    // dozen more made a short request's map over 1 KiB, which takes mimalloc's slower
    // allocation path (callgrind: about 200 instructions a request).
    let mut headers = HeaderMap::with_capacity(count);
    let mut framing = wire::Framing::default();
    let mut expects_continue = false;
    for field in req.headers.iter() {
        let name = match known(field.name.as_bytes()) {
            Some(name) => name.clone(),
            None => HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| bad_request("invalid header name"))?,
        };
        let value = head.slice_ref(field.value);
        if name == header::EXPECT {
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return Err(ApiError::new(
                    StatusCode::EXPECTATION_FAILED,
                    "expectation_failed",
                    "only 100-continue is supported",
                ));
            }
            // Answered here; the upstream gets the body without being asked.
            expects_continue = true;
            continue;
        }
        // This connection's own fields are read for the framing and never forwarded.
        if framing.read(&name, &value).map_err(bad_request)? {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(value).map_err(|_| bad_request("invalid header value"))?;
        headers.append(name, value);
    }
    framing.drop_named(&mut headers);
    let keep_alive = !framing.close && (framing.keep_alive || version == Version::HTTP_11);
    // Both framings at once is how requests are smuggled past a proxy (RFC 9112 6.3): refused,
    // as is a transfer coding that does not end in chunked (the body could not be delimited).
    let body = match (framing.encoded, framing.length) {
        (true, Some(_)) => return Err(bad_request("both transfer-encoding and content-length")),
        (true, None) if framing.chunked => Decoder::Chunked(Chunk::Size),
        (true, None) => return Err(bad_request("a request's transfer coding must end in chunked")),
        (false, n) => Decoder::Length(n.unwrap_or(0)),
    };
    Ok(Some(Head {
        method,
        uri,
        version,
        headers,
        body,
        keep_alive,
        expects_continue,
    }))
}

/// The non-standard fields mall's requests carry. `HeaderName::from_bytes` copies such a name
/// into an allocation of its own on every request; one of these is a clone of a static name.
static KNOWN: [HeaderName; 11] = [
    HeaderName::from_static(KNOWN_NAMES[0]),
    HeaderName::from_static(KNOWN_NAMES[1]),
    HeaderName::from_static(KNOWN_NAMES[2]),
    HeaderName::from_static(KNOWN_NAMES[3]),
    HeaderName::from_static(KNOWN_NAMES[4]),
    HeaderName::from_static(KNOWN_NAMES[5]),
    HeaderName::from_static(KNOWN_NAMES[6]),
    HeaderName::from_static(KNOWN_NAMES[7]),
    HeaderName::from_static(KNOWN_NAMES[8]),
    HeaderName::from_static(KNOWN_NAMES[9]),
    HeaderName::from_static(KNOWN_NAMES[10]),
];
/// [`KNOWN`] as text, for the lookup: a length compared first rules out most names at once
/// (a `HeaderName` must be matched on its representation to tell its length).
const KNOWN_NAMES: [&str; 11] = [
    "x-mall-identity",
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-forwarded-for",
    "x-forwarded-proto",
];

fn known(name: &[u8]) -> Option<&'static HeaderName> {
    KNOWN_NAMES
        .iter()
        .position(|k| k.len() == name.len() && k.as_bytes().eq_ignore_ascii_case(name))
        .map(|i| &KNOWN[i])
}

fn bad_request(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn too_long_uri() -> ApiError {
    ApiError::new(
        StatusCode::URI_TOO_LONG,
        "uri_too_long",
        format!("the request line is longer than {MAX_REQUEST_LINE} bytes"),
    )
}

fn too_large_head(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        format!("request headers exceed {max} bytes or {MAX_FIELDS} fields"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(wire: &str) -> Result<Option<Head>, ApiError> {
        parse(&mut BytesMut::from(wire), 16 * 1024)
    }

    #[test]
    fn a_head_is_taken_off_the_buffer_with_its_framing() {
        let mut buf = BytesMut::from(
            "POST /api/orders?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-Two: 1\r\nx-two: 2\r\n\r\nhelloGET",
        );
        let head = parse(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.uri.path(), "/api/orders");
        assert_eq!(head.uri.query(), Some("x=1"));
        assert_eq!(head.body, Decoder::Length(5));
        assert!(head.keep_alive);
        assert_eq!(head.headers.get_all("x-two").iter().count(), 2);
        assert_eq!(
            &buf[..],
            b"helloGET",
            "the body and what follows stay in the buffer"
        );
    }

    #[test]
    fn mall_s_own_fields_are_found_whatever_their_case() {
        let head = parsed("GET / HTTP/1.1\r\nX-Mall-Identity: v1\r\nTRACEPARENT: 00\r\nx-b3: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.headers["x-mall-identity"], "v1");
        assert_eq!(head.headers["traceparent"], "00");
        assert_eq!(
            head.headers["x-b3"], "1",
            "a name that only starts like a known one"
        );
        assert!(known(b"X-Request-Id").is_some_and(|n| n == "x-request-id"));
        assert!(known(b"x-request-i").is_none());
        assert!(known(b"x-request-idx").is_none());
    }

    #[test]
    fn incomplete_heads_wait_and_oversized_ones_are_refused() {
        assert!(parsed("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        let long_uri = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_REQUEST_LINE + 10));
        assert_eq!(parsed(&long_uri).err().unwrap().code(), "uri_too_long");
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n", "b".repeat(17 * 1024));
        assert_eq!(parsed(&big).err().unwrap().code(), "headers_too_large");
        let many: String = (0..MAX_FIELDS + 1).map(|i| format!("x-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parsed(&many).err().unwrap().code(), "headers_too_large");
    }

    #[test]
    fn ambiguous_or_broken_framing_is_a_bad_request() {
        for wire in [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: 1\r\n\r\n",
            "G@T / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                parsed(wire).err().map(|e| e.code()),
                Some("bad_request"),
                "{wire:?}"
            );
        }
        let chunked = parsed("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(chunked.body, Decoder::Chunked(Chunk::Size));
    }

    #[test]
    fn connection_semantics_follow_the_version() {
        let close = parsed("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!close.keep_alive);
        let old = parsed("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!old.keep_alive);
        let old_kept = parsed("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(old_kept.keep_alive);
        let expects = parsed("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(expects.expects_continue);
        assert!(
            !expects.headers.contains_key(header::EXPECT),
            "answered, not forwarded"
        );
    }

    #[test]
    fn hop_by_hop_headers_stay_on_this_connection() {
        let head = parsed(
            "GET / HTTP/1.1\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nUpgrade: h2c\r\nTE: trailers\r\nX-Kept: 1\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = head.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        assert!(head.keep_alive);
    }
}
