//! Writing a response on a client connection: the head with the framing the body allows, and
//! a body that came whole in the same write as the head.

use std::pin::Pin;
use std::task::Poll;

use axum::body::HttpBody;
use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use http::header;
use http_body_util::BodyExt as _;
use tokio::net::TcpStream;

use crate::wire;

/// A body at most this large that is in hand goes out in the head's write.
const INLINE_BODY: usize = 64 * 1024;

/// What the client asked for that shapes the answer.
#[derive(Clone, Copy)]
pub(super) struct Asked {
    /// An HTTP/1.1 client (chunked answers allowed).
    pub(super) http11: bool,
    /// A HEAD request: the head only.
    pub(super) head_only: bool,
    /// The connection stays open after this answer.
    pub(super) keep_alive: bool,
}

/// Writes `res`; `Ok(true)` when the connection can carry another request.
pub(super) async fn write(
    stream: &TcpStream,
    out: &mut Vec<u8>,
    res: Response,
    asked: Asked,
) -> std::io::Result<bool> {
    let (parts, mut body) = res.into_parts();
    let status = parts.status;
    let bodiless = asked.head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut keep_alive = asked.keep_alive;

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        // The framing is this hop's own; a HEAD answer keeps the length the upstream gave.
        let own = *name == header::TRANSFER_ENCODING
            || *name == header::CONNECTION
            || (*name == header::CONTENT_LENGTH && !asked.head_only);
        if !own {
            wire::push_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    // An upstream's fields as it sent them: whoever made them left the framing out (and kept
    // a HEAD answer's length).
    if let Some(raw) = parts.extensions.get::<wire::RawHeaders>() {
        out.extend_from_slice(&raw.lines);
    }
    let exact = body.size_hint().exact();
    let chunked = !bodiless && exact.is_none() && asked.http11;
    if !bodiless {
        match exact {
            Some(n) => wire::push_header(out, b"content-length", itoa::Buffer::new().format(n).as_bytes()),
            None if chunked => wire::push_header(out, b"transfer-encoding", b"chunked"),
            // An HTTP/1.0 client: the body ends when the connection does.
            None => keep_alive = false,
        }
    }
    if !keep_alive {
        wire::push_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if bodiless {
        wire::write_all(stream, out).await?;
        return Ok(keep_alive);
    }

    // The usual answer: a body that is already whole goes out with the head, in one write.
    let mut first: Option<Bytes> = None;
    if let Some(n) = exact.filter(|n| *n <= INLINE_BODY as u64) {
        if n == 0 {
            wire::write_all(stream, out).await?;
            return Ok(keep_alive);
        }
        if let Poll::Ready(Some(Ok(frame))) =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await
            && let Ok(data) = frame.into_data()
        {
            if data.len() as u64 == n {
                out.extend_from_slice(&data);
                wire::write_all(stream, out).await?;
                return Ok(keep_alive);
            }
            first = Some(data);
        }
    }
    wire::write_all(stream, out).await?;

    // Streamed: as the length said, or chunked.
    let mut sent = 0u64;
    loop {
        let data = match first.take() {
            Some(data) => data,
            None => match body.frame().await {
                None => break,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue, // trailers are not forwarded
                },
                // The body failed mid-way (the upstream closed, say): the client must not take
                // what it got for the whole answer, so the connection closes without the end.
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "response body failed; closing the connection");
                    return Ok(false);
                }
            },
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if chunked {
            wire::write_chunk(stream, out, &data).await?;
        } else {
            wire::write_all(stream, &data).await?;
        }
    }
    if chunked {
        wire::write_all(stream, wire::LAST_CHUNK).await?;
    }
    // A body shorter than its declared length leaves the client waiting for the rest.
    Ok(keep_alive && exact.is_none_or(|n| n == sent))
}

/// Writes `100 Continue`, for a client that waits for it before sending its body.
pub(super) async fn continue_100(stream: &TcpStream) -> std::io::Result<()> {
    wire::write_all(stream, b"HTTP/1.1 100 Continue\r\n\r\n").await
}
