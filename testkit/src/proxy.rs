//! A TCP proxy in front of a real dependency, to break it without stopping the shared server.
//!
//! [`ChaosProxy::cut`] drops every open connection and refuses new ones (each is closed right
//! after accept, which clients see as a reset or EOF); [`ChaosProxy::restore`] lets traffic
//! through again; [`ChaosProxy::set_delay`] slows every chunk in both directions.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};
use url::Url;

#[derive(Default)]
struct State {
    cut: AtomicBool,
    delay_ms: AtomicU64,
    pipes: Mutex<Vec<AbortHandle>>,
}

/// A breakable proxy to one upstream address.
pub struct ChaosProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl ChaosProxy {
    /// Proxies a fresh loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(State::default());
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if accept_state.cut.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let state = accept_state.clone();
                let pipe = tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = upstream.into_split();
                    tokio::select! {
                        () = copy(cr, uw, state.clone()) => {}
                        () = copy(ur, cw, state.clone()) => {}
                    }
                });
                let mut pipes = accept_state.pipes.lock().expect("pipes");
                pipes.retain(|p| !p.is_finished());
                pipes.push(pipe.abort_handle());
            }
        });
        Self { addr, state, accept }
    }

    /// Proxies the host and port of `url`, and returns the proxy with `url` rewritten to it.
    pub async fn for_url(url: &Url) -> (Self, Url) {
        let host = url.host_str().expect("url host");
        let port = url.port_or_known_default().expect("url port");
        let target = tokio::net::lookup_host((host, port))
            .await
            .expect("resolve")
            .next()
            .expect("an address");
        let proxy = Self::start(target).await;
        let mut through = url.clone();
        through.set_host(Some("127.0.0.1")).expect("set host");
        through.set_port(Some(proxy.addr.port())).expect("set port");
        (proxy, through)
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::Release);
        for pipe in self.state.pipes.lock().expect("pipes").drain(..) {
            pipe.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::Release);
    }

    /// Delays every forwarded chunk by `delay` (zero to stop).
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = state.delay_ms.load(Ordering::Acquire);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
