//! Serving on one thread per core (`MALL_HTTP_THREADS` > 0): each with its own current-thread
//! runtime, connections dealt to them in turn by one acceptor.

use std::net::SocketAddr;

use futures_util::stream::FuturesUnordered;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{AcceptLoops, Serving, accept_loop};

/// `threads` serving threads, each with a single-threaded runtime and its own serve loop, and
/// one acceptor on the process's runtime that deals the accepted connections to them in turn. A
/// connection then lives on one thread: its request, the tasks it spawns and the wake-ups between
/// them never cross to another core, which a work-stealing runtime cost dearly on the gateway
/// (`docs/performance.md`). What the handlers share (locks, channels, the
/// Redis connection's task) works across the runtimes; a task spawned while serving lives on the
/// serving thread's runtime, which ends with the server.
///
/// The acceptor deals the connections instead of every thread accepting from the one socket:
/// the socket woke every thread and the first to run took the whole backlog, so a load generator
/// opening its connections at once could leave one thread with all of them and the other idle.
/// In turn, each thread gets an even share of any burst.
pub(super) fn serve_per_thread(
    service: &'static str,
    threads: usize,
    listener: TcpListener,
    serving: Serving,
) -> std::io::Result<AcceptLoops> {
    let addr = listener.local_addr()?;
    let loops = FuturesUnordered::new();
    let mut dealt = Vec::with_capacity(threads);
    for i in 0..threads {
        let (deal, connections) = mpsc::unbounded_channel();
        dealt.push(deal);
        let listener = DealtListener { connections, addr };
        // A token of the thread's own, cancelled with the server's: its connections check it on
        // every request and wait on it between requests, and on the one token that both threads
        // share that was two mutexes every request locked from either core.
        let serving = Serving {
            stop: serving.stop.child_token(),
            ..serving.clone()
        };
        let (done, ended) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("{service}-http-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = done.send(Err(e));
                        return;
                    }
                };
                crate::serving_thread::mark();
                runtime.block_on(async move {
                    let abort = serving.abort.clone();
                    let served = accept_loop(listener, serving).await;
                    let _ = done.send(served);
                    // A task spawned here while serving (a Redis connection's driver, say) may be
                    // what other threads and the draining background work still use, so the
                    // runtime lives until the whole server is done; dropping it ends what is left.
                    abort.cancelled().await;
                });
            })?;
        loops.push(ended);
    }
    let (done, ended) = oneshot::channel();
    let (stop, abort) = (serving.stop.clone(), serving.abort.clone());
    tokio::spawn(async move {
        deal_connections(listener, dealt, stop, abort).await;
        let _ = done.send(Ok(()));
    });
    loops.push(ended);
    Ok(AcceptLoops(loops))
}

/// Accepts until `stop` (or `abort`) and hands each connection to the next serving thread.
async fn deal_connections(
    mut listener: TcpListener,
    threads: Vec<mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>>,
    stop: CancellationToken,
    abort: CancellationToken,
) {
    for next in (0..threads.len()).cycle() {
        let (stream, peer) = tokio::select! {
            // axum's accept for a TCP listener: it retries and logs what fails.
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            () = stop.cancelled() => return,
            () = abort.cancelled() => return,
        };
        // Out of this runtime's reactor, into the serving thread's when it takes it.
        match stream.into_std() {
            Ok(stream) => {
                // A thread that is gone has stopped serving: its connection is closed (dropped).
                let _ = threads[next].send((stream, peer));
            }
            Err(e) => tracing::warn!(error = %e, %peer, "could not hand a connection to a serving thread"),
        }
    }
}

/// A serving thread's side of the acceptor: the connections dealt to it.
struct DealtListener {
    connections: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for DealtListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.connections.recv().await {
                Some((stream, peer)) => match TcpStream::from_std(stream) {
                    Ok(stream) => return (stream, peer),
                    Err(e) => tracing::warn!(error = %e, %peer, "a dealt connection could not be served"),
                },
                // The acceptor has stopped: nothing more comes; the serve loop ends on `stop`.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
