//! The floor under the gateway's throughput: a reverse proxy made of hyper alone, for
//! `loadtest/gateway.sh` and `loadtest/instructions.sh` to measure beside mall-gateway and nginx.
//! What mall-gateway does per request is this plus its layers (routing, auth, limits, the pool's
//! stack, the span and the access line), so the two figures split the gap to nginx into
//! hyper's part and ours. Not a product: no errors beyond 502, no limits, no telemetry.
//!
//! Serves HTTP/1.1 and h2c on `BARE_ADDR` with hyper-util's auto builder (as every mall process
//! does) on `BARE_THREADS` threads (default 2), each with a current-thread runtime and its own
//! `SO_REUSEPORT` listener, and forwards every request to `BARE_UPSTREAM` (`host:port`) over
//! keep-alive HTTP/1.1 connections from that thread's pool (`hyper::client::conn::http1`).
//!
//!   BARE_ADDR=127.0.0.1:18095 BARE_UPSTREAM=127.0.0.1:18081 target/release/examples/bare_proxy

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpSocket, TcpStream};

// The same allocator as mall-gateway, so the comparison is of the code alone.
use mimalloc as _;

type Answer = Response<UnsyncBoxBody<Bytes, hyper::Error>>;

thread_local! {
    /// This thread's idle upstream connections.
    static IDLE: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = var("BARE_ADDR", "127.0.0.1:18095")
        .parse()
        .map_err(std::io::Error::other)?;
    let upstream: &'static str = Box::leak(var("BARE_UPSTREAM", "127.0.0.1:18081").into_boxed_str());
    let threads: usize = var("BARE_THREADS", "2").parse().map_err(std::io::Error::other)?;
    let serving: Vec<_> = (0..threads)
        .map(|_| std::thread::spawn(move || serve(addr, upstream)))
        .collect();
    for thread in serving {
        thread
            .join()
            .map_err(|_| std::io::Error::other("a serving thread panicked"))??;
    }
    Ok(())
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// One serving thread: its own listener on the shared port, its connections on its runtime.
fn serve(addr: SocketAddr, upstream: &'static str) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(4096)?;
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let (stream, _) = listener.accept().await?;
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| forward(req, upstream));
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}

/// Sends `req` upstream on a pooled connection (or a new one) and streams the answer back; the
/// connection returns to the pool when the answer's body has ended.
async fn forward(req: Request<Incoming>, upstream: &'static str) -> Result<Answer, hyper::Error> {
    let mut sender = loop {
        match IDLE.with_borrow_mut(Vec::pop) {
            Some(mut sender) => {
                if sender.ready().await.is_ok() {
                    break sender;
                }
            }
            None => match connect(upstream).await {
                Some(sender) => break sender,
                None => return Ok(bad_gateway()),
            },
        }
    };
    let (head, body) = match sender.send_request(req).await {
        Ok(res) => res.into_parts(),
        Err(_) => return Ok(bad_gateway()),
    };
    let body = Pooled {
        body,
        sender: Some(sender),
        ended: false,
    };
    Ok(Response::from_parts(head, UnsyncBoxBody::new(body)))
}

async fn connect(upstream: &str) -> Option<SendRequest<Incoming>> {
    let stream = TcpStream::connect(upstream).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

fn bad_gateway() -> Answer {
    let mut res = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res
}

/// An upstream answer's body that gives its connection back to the pool once read to its end.
struct Pooled {
    body: Incoming,
    sender: Option<SendRequest<Incoming>>,
    ended: bool,
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        self.ended |= matches!(polled, Poll::Ready(None));
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // Read to its end, the connection can carry the next request; cut short, it cannot.
        if (self.ended || self.body.is_end_stream())
            && let Some(sender) = self.sender.take()
        {
            IDLE.with_borrow_mut(|idle| idle.push(sender));
        }
    }
}
