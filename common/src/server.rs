//! Binding, serving and stopping a service.
//!
//! [`Server::bind`] binds the listener (port 0 works; the real address is read back) and puts
//! the service's routes, the health routes and the standard stack together.
//! [`Server::run_until_stopped`] serves until the given shutdown future resolves, then stops
//! accepting, lets in-flight requests and background work finish within
//! `MALL_SHUTDOWN_TIMEOUT`, and returns; past the grace it drops what is left and says so.
//! Connections are served on the process's runtime, or with `MALL_HTTP_THREADS` > 0 on that many
//! threads with a single-threaded runtime each (the gateway's default; see `serve_per_thread`).
//! Every connection is hyper's: hyper-util's auto builder reads HTTP/1.1, or HTTP/2 when the
//! client opens with its preface (h2c, prior knowledge), and hands each request to the router;
//! a connection it closes lingers (see `linger`) so an early answer is not lost to a reset.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

mod linger;
mod threads;
pub use linger::Lingering;

use crate::health;
use crate::http::standard_stack;
use crate::platform::{HttpSettings, Platform};

/// The client of a connection, as handlers read it with axum's `ConnectInfo<Peer>`: its IP
/// address as text, formatted once per connection instead of once per request (the gateway
/// writes it into every request's `x-forwarded-for` and access line).
#[derive(Debug, Clone)]
pub struct Peer {
    ip: http::HeaderValue,
}

impl Peer {
    /// The client at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = addr.ip().to_string();
        Self {
            ip: http::HeaderValue::from_str(&ip).expect("an IP address is a header value"),
        }
    }

    /// The client's IP address as a header value (`x-forwarded-for`).
    pub fn ip_header(&self) -> &http::HeaderValue {
        &self.ip
    }

    /// The client's IP address as text.
    pub fn ip(&self) -> &str {
        // Made from an IP address's text: ASCII digits, dots, colons and hex letters.
        self.ip.to_str().unwrap_or_default()
    }
}

/// A bound, ready-to-run service.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
    platform: Platform,
}

/// Request header fields a server reads (hyper answers 431 past it). More than the gateway
/// passes on ([`crate::http::MAX_CLIENT_FIELDS`]) plus the few it adds, so a request the
/// gateway accepts is never refused by a service's parser.
pub const MAX_HEADER_FIELDS: usize = 128;

/// The connection builder every process serves with: HTTP/1.1 and h2c on one port; a
/// keep-alive connection that starts no request head within `MALL_IDLE_TIMEOUT` is closed.
fn connection_builder(http: &HttpSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(http.idle_timeout)
        .max_headers(MAX_HEADER_FIELDS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(None);
    builder
}

/// Connections the kernel completes for the listener before it accepts them (the kernel caps it
/// at `net.core.somaxconn`, 4096 by default since Linux 5.4).
const BACKLOG: u32 = 4096;

/// Binds `addr` (address reuse on, as tokio's `TcpListener::bind` sets it) with [`BACKLOG`].
/// tokio's `bind` asks for 128: a burst of new connections larger than that (a gateway
/// opening 250 upstream connections at once under load) had its handshakes dropped, and each
/// dropped one waited out the client's one-second SYN retransmission (`ListenOverflows` in
/// `nstat`; the gateway's connect timeout is one second, so it failed instead).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

impl Server {
    /// Binds `MALL_HTTP_ADDR` and assembles the router.
    pub async fn bind(platform: Platform, routes: Router) -> std::io::Result<Self> {
        let settings = platform.settings();
        let listener = listen(settings.http.addr)?;
        let addr = listener.local_addr()?;
        let app = routes.merge(health::routes(platform.service(), platform.readiness().clone()));
        // `with_state` turns every handler into its layered route once: left as handlers, axum
        // clones each one and applies every layer again on every request.
        let router = standard_stack(app, &settings.stack(platform.service())).with_state(());
        tracing::info!(service = platform.service(), %addr, "listening");
        Ok(Self {
            listener,
            addr,
            router,
            platform,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The platform (dependencies, background tasks).
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// Serves until `shutdown` resolves, then stops within the configured grace.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Self {
            listener,
            router,
            platform,
            ..
        } = self;
        let service = platform.service();
        let grace = platform.settings().http.shutdown_timeout;
        let threads = platform.settings().http.threads;
        // `stop` asks every accept loop to stop accepting and drain; `abort` ends them at once
        // (grace exceeded) and, once this future ends or is dropped, lets the serving threads
        // and their runtimes go.
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        let _abort_when_dropped = abort.clone().drop_guard();
        let serving = Serving {
            router,
            builder: Arc::new(connection_builder(&platform.settings().http)),
            stop: stop.clone(),
            abort: abort.clone(),
        };
        let mut loops = if threads == 0 {
            serve_shared(listener, serving)
        } else {
            threads::serve_per_thread(service, threads, listener, serving)?
        };

        tokio::select! {
            ended = loops.next() => {
                // An accept loop stopped on its own: an accept error. Stop the rest too.
                platform.cancel_token().cancel();
                return ended.unwrap_or(Ok(()));
            }
            () = shutdown => {}
        }

        tracing::info!(service, grace = ?grace, "shutting down: no new connections, draining requests");
        stop.cancel();
        platform.cancel_token().cancel();
        platform.tasks().close();
        let drained = tokio::time::timeout(grace, async {
            let mut served = Ok(());
            while let Some(ended) = loops.next().await {
                served = served.and(ended);
            }
            platform.tasks().wait().await;
            served
        })
        .await;
        match drained {
            Ok(served) => {
                tracing::info!(service, "stopped");
                served
            }
            Err(_) => {
                tracing::warn!(service, grace = ?grace, "shutdown grace exceeded; dropping what is left");
                abort.cancel();
                Ok(())
            }
        }
    }
}

/// The accept loops still running; each yields how it ended.
pub(super) struct AcceptLoops(FuturesUnordered<oneshot::Receiver<std::io::Result<()>>>);

impl AcceptLoops {
    /// How the next accept loop to end ended; `None` once all have.
    async fn next(&mut self) -> Option<std::io::Result<()>> {
        let ended = self.0.next().await?;
        Some(ended.unwrap_or_else(|_| Err(std::io::Error::other("an HTTP serving thread panicked"))))
    }
}

/// What every accept loop serves with: the router, hyper's connection builder, and the tokens
/// that stop it.
#[derive(Clone)]
struct Serving {
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: CancellationToken,
    abort: CancellationToken,
}

/// One accept loop on the process's runtime.
fn serve_shared(listener: TcpListener, serving: Serving) -> AcceptLoops {
    let (done, ended) = oneshot::channel();
    tokio::spawn(async move {
        let _ = done.send(accept_loop(listener, serving).await);
    });
    AcceptLoops(FuturesUnordered::from_iter([ended]))
}

/// Accepts until `stop`, serving each connection on a task of this runtime; then lets the open
/// ones finish their request in progress (hyper's graceful shutdown) until `abort`.
async fn accept_loop<L>(mut listener: L, serving: Serving) -> std::io::Result<()>
where
    L: axum::serve::Listener<Io = TcpStream, Addr = SocketAddr>,
{
    let Serving {
        router,
        builder,
        stop,
        abort,
    } = serving;
    let open = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
            () = abort.cancelled() => return Ok(()),
        };
        open.spawn(serve_connection(
            builder.clone(),
            stream,
            peer,
            router.clone(),
            stop.clone(),
        ));
    }
    open.close();
    tokio::select! {
        () = open.wait() => {}
        () = abort.cancelled() => {}
    }
    Ok(())
}

/// One connection through hyper until the peer closes it; on `stop`, the request in progress
/// is finished and the connection closed.
async fn serve_connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    stop: CancellationToken,
) {
    // Handlers that name the client read it as axum's `ConnectInfo<Peer>`.
    let peer_info = Peer::new(peer);
    let service = router.map_request(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer_info.clone()));
        req.map(axum::body::Body::new)
    });
    let conn = builder.serve_connection_with_upgrades(
        TokioIo::new(Lingering::new(stream)),
        TowerToHyperService::new(service),
    );
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            return;
        }
        () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, %peer, "connection ended with an error while draining");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_names_its_ip_without_the_port() {
        for (addr, ip) in [
            ("10.1.2.3:5555", "10.1.2.3"),
            ("[2001:db8::7]:443", "2001:db8::7"),
        ] {
            let peer = Peer::new(addr.parse().unwrap());
            assert_eq!(peer.ip(), ip);
            assert_eq!(peer.ip_header(), ip);
        }
    }

    #[tokio::test]
    async fn the_listener_holds_a_burst_of_connections_larger_than_tokios_default_backlog() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Nobody accepts: each connection waits in the kernel's queue. With tokio's backlog of
        // 128 the rest had their handshakes dropped and would connect only after the client's
        // one-second retransmission.
        let connects = (0..300)
            .map(|_| tokio::time::timeout(std::time::Duration::from_millis(500), TcpStream::connect(addr)));
        let connected = futures_util::future::join_all(connects)
            .await
            .into_iter()
            .filter(|c| matches!(c, Ok(Ok(_))))
            .count();
        // The kernel caps the backlog at `net.core.somaxconn` (and lets one more in): on a
        // machine set lower than the burst, that cap is what must show, not tokio's.
        let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .map_or(300, |max| max + 1);
        assert_eq!(connected, cap.min(300));
        drop(listener);
    }
}
