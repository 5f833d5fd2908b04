//! The gateway's upstream HTTP/1.1 connections: hyper's client connections
//! (`hyper::client::conn::http1`), kept alive in a pool per serving thread and instance.
//!
//! A request taken on a serving thread goes out on a connection of that thread, so the request,
//! its upstream connection and the wake-ups between them stay on one core; the pool needs no
//! lock. A connection goes back to its thread's pool when the answer's body has been read to its
//! end, never after an answer framed two ways (`Transfer-Encoding` with `Content-Length`: a
//! likely response-splitting attempt, RFC 9112 section 6.3), and is dropped when it has been idle
//! for [`IDLE_TIMEOUT`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long connecting to an instance may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long an idle connection is kept: under the services' `MALL_IDLE_TIMEOUT` (30 s), so the
/// gateway lets a connection go before the instance closes it under a request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Idle connections kept per thread and instance; more are closed when they come back.
const MAX_IDLE: usize = 512;

thread_local! {
    /// This thread's idle connections, by instance key.
    static IDLE: RefCell<HashMap<usize, Vec<Idle>>> = RefCell::new(HashMap::new());
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// Why an exchange with an instance failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: nothing was sent.
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP handshake on a new connection failed: nothing was sent.
    #[error("handshake: {0}")]
    Handshake(#[source] hyper::Error),
    /// The request (or part of it) may have been sent.
    #[error("{0}")]
    Exchange(#[source] hyper::Error),
    /// The answer had both `Transfer-Encoding` and `Content-Length`.
    #[error("an answer with both Transfer-Encoding and Content-Length")]
    Ambiguous,
}

impl SendError {
    /// Whether nothing was sent, so any request may be tried elsewhere.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Handshake(_))
    }
}

/// The connections to one instance (each thread keeps its own).
pub(crate) struct Connections {
    key: usize,
    addr: String,
}

static NEXT_KEY: AtomicUsize = AtomicUsize::new(0);

impl Connections {
    /// The connections to `addr` (`host:port`).
    pub(crate) fn new(addr: &str) -> Self {
        Self {
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            addr: addr.to_owned(),
        }
    }

    /// Sends `req` on an idle connection of this thread, or a new one, and gives `owner` (whose
    /// connections these are) back with the answer. A pooled connection that turns out closed
    /// before the request went out is passed over for the next.
    ///
    /// The one future that holds `req`: a caller awaiting it inside its own async block would
    /// keep `req` twice in a future every request moves into a box, so callers `map` it.
    /// Connecting, rare, is boxed for the same reason.
    #[allow(clippy::manual_async_fn, reason = "an async fn stores its argument twice")]
    pub(crate) fn send<O>(
        owner: Arc<O>,
        mut req: Request<Body>,
    ) -> impl Future<Output = (Arc<O>, Result<Response<Body>, SendError>)> + Send + 'static
    where
        O: AsRef<Connections> + Send + Sync + 'static,
    {
        async move {
            let this: &Connections = (*owner).as_ref();
            let result = 'sent: {
                while let Some(mut sender) = this.checkout() {
                    if sender.ready().await.is_err() {
                        continue;
                    }
                    match sender.try_send_request(req).await {
                        Ok(res) => break 'sent this.answer(res, sender),
                        Err(mut failed) => match failed.take_message() {
                            Some(unsent) => req = unsent,
                            None => break 'sent Err(SendError::Exchange(failed.into_error())),
                        },
                    }
                }
                match Box::pin(this.connect()).await {
                    Ok(mut sender) => match sender.try_send_request(req).await {
                        Ok(res) => this.answer(res, sender),
                        Err(failed) => Err(SendError::Exchange(failed.into_error())),
                    },
                    Err(e) => Err(e),
                }
            };
            (owner, result)
        }
    }

    fn checkout(&self) -> Option<SendRequest<Body>> {
        IDLE.with_borrow_mut(|idle| {
            let list = idle.get_mut(&self.key)?;
            while let Some(Idle { sender, since }) = list.pop() {
                if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                    return Some(sender);
                }
            }
            None
        })
    }

    async fn connect(&self) -> Result<SendRequest<Body>, SendError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| SendError::Connect(std::io::ErrorKind::TimedOut.into()))?
            .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Handshake)?;
        let addr = self.addr.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, upstream = addr, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn answer(
        &self,
        res: Response<Incoming>,
        sender: SendRequest<Body>,
    ) -> Result<Response<Body>, SendError> {
        let headers = res.headers();
        if headers.contains_key(http::header::TRANSFER_ENCODING)
            && headers.contains_key(http::header::CONTENT_LENGTH)
        {
            // Dropped unread with its sender: the connection is closed, never reused.
            return Err(SendError::Ambiguous);
        }
        let key = self.key;
        if res.body().is_end_stream() {
            check_in(key, sender);
            return Ok(res.map(Body::new));
        }
        Ok(res.map(|inner| {
            Body::new(Pooled {
                inner,
                back: Some((key, sender)),
            })
        }))
    }
}

fn check_in(key: usize, sender: SendRequest<Body>) {
    IDLE.with_borrow_mut(|idle| {
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    });
}

/// An answer's body that gives its connection back once read to its end.
struct Pooled {
    inner: Incoming,
    back: Option<(usize, SendRequest<Body>)>,
}

impl Pooled {
    fn ended(&mut self) {
        if let Some((key, sender)) = self.back.take() {
            check_in(key, sender);
        }
    }
}

impl HttpBody for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.ended(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.ended(),
            // A broken body: its connection is not given back.
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
