//! JSON answers for requests hyper cannot parse.
//!
//! A request hyper cannot read as HTTP (a garbled request line, a malformed header, a head over
//! its buffer, a URI over 64 KiB) never reaches a handler: hyper answers it itself, with a bare
//! status, `content-length: 0` and `connection: close`, and has no hook to change that answer.
//! Every other 4xx of mall is JSON with a stable `code`, so each connection's socket is wrapped
//! and such an answer, recognised by hyper's exact head, is written as the JSON error instead.
//! Nothing else is touched: an answer of ours carries `x-request-id` and its content type
//! before hyper's `connection` and `content-length`, so it never starts like one of these.
//! One case stays hyper's: a client that pipelines a bad request behind good ones may get the
//! error answer in the same write as the answers before it, which is passed on as it is.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::serve::Listener;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::error::{ErrorBody, code_for_status};

/// A listener of TCP connections (a TCP listener's own, or those dealt to a serving thread)
/// whose connections answer hyper's own parse errors in JSON.
pub(super) struct JsonErrorListener<L>(pub(super) L);

impl<L> Listener for JsonErrorListener<L>
where
    L: Listener<Io = TcpStream, Addr = SocketAddr>,
{
    type Io = JsonErrors<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The inner listener's accept (a TCP listener's retries and logs errors).
        let (io, addr) = self.0.accept().await;
        (JsonErrors::new(io), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// One connection: reads pass through; a write of hyper's automatic error answer is replaced.
pub(super) struct JsonErrors<IO> {
    io: IO,
    /// The replacement answer being written, and how much of it is.
    pending: Option<(Vec<u8>, usize)>,
}

impl<IO> JsonErrors<IO> {
    /// Wraps `io`.
    pub(super) fn new(io: IO) -> Self {
        Self { io, pending: None }
    }
}

/// What follows the status line of hyper's automatic answers, exactly.
const HYPER_ERROR_HEAD: &[u8] = b"\r\nconnection: close\r\ncontent-length: 0\r\n";

/// The JSON answer for `head` when it is one of hyper's automatic error answers.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    let (status, message) = match rest.get(..3)? {
        b"400" => (StatusCode::BAD_REQUEST, "the request is not valid HTTP/1.1"),
        b"414" => (StatusCode::URI_TOO_LONG, "the request URI is too long"),
        b"431" => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "the request head is too large",
        ),
        _ => return None,
    };
    let line_end = rest.iter().position(|&b| b == b'\r')?;
    if !rest[line_end..].starts_with(HYPER_ERROR_HEAD) {
        return None;
    }
    let body = serde_json::to_vec(&ErrorBody {
        code: code_for_status(status).into(),
        message: message.into(),
    })
    .expect("an error body serializes");
    let mut answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nx-request-id: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        uuid::Uuid::new_v4(),
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    Some(answer)
}

impl<IO: AsyncWrite + Unpin> JsonErrors<IO> {
    /// Writes what is left of a replacement answer.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((answer, written)) = &mut self.pending {
            if *written == answer.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for JsonErrors<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for JsonErrors<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        if let Some(answer) = replacement(buf) {
            // Taken as written; hyper flushes and closes next, which writes the replacement.
            this.pending = Some((answer, 0));
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        // hyper writes a head as one slice, first.
        if let Some(answer) = bufs.first().and_then(|head| replacement(head)) {
            this.pending = Some((answer, 0));
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_own_error_heads_are_replaced() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 15:56:58 GMT\r\n\r\n";
        let answer = String::from_utf8(replacement(hyper).expect("replaced")).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["code"], "bad_request");

        let large =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let answer = String::from_utf8(replacement(large).expect("replaced")).unwrap();
        assert!(answer.contains(r#""code":"headers_too_large""#), "{answer}");

        // Ours: the same status, with our headers first; and other statuses.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nx-request-id: 1\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
        assert!(replacement(ours).is_none());
        let ok = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert!(replacement(ok).is_none());
        assert!(replacement(b"HTTP/1.1 4").is_none(), "a cut head");
    }
}
