//! Binding, serving and stopping a service.
//!
//! [`Server::bind`] binds the listener (port 0 works; the real address is read back) and puts
//! the service's routes, the health routes and the standard stack together.
//! [`Server::run_until_stopped`] serves until the given shutdown future resolves, then stops
//! accepting, lets in-flight requests and background work finish within
//! `MALL_SHUTDOWN_TIMEOUT`, and returns; past the grace it drops what is left and says so.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::health;
use crate::http::standard_stack;
use crate::platform::Platform;

/// A bound, ready-to-run service.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
    platform: Platform,
}

impl Server {
    /// Binds `MALL_HTTP_ADDR` and assembles the router.
    pub async fn bind(platform: Platform, routes: Router) -> std::io::Result<Self> {
        let settings = platform.settings();
        let listener = TcpListener::bind(settings.http.addr).await?;
        let addr = listener.local_addr()?;
        let app = routes.merge(health::routes(platform.service(), platform.readiness().clone()));
        let router = standard_stack(app, &settings.stack(platform.service())).layer(axum::Extension(
            crate::identity::IdentityKey::new(settings.internal_secret.expose().as_bytes()),
        ));
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
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let serve = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        });
        let mut server = tokio::spawn(async move { serve.await });

        tokio::select! {
            ended = &mut server => {
                // The server stopped on its own: an accept error. Stop the background work too.
                platform.cancel_token().cancel();
                return ended.map_err(std::io::Error::other)?;
            }
            () = shutdown => {}
        }

        tracing::info!(service, grace = ?grace, "shutting down: no new connections, draining requests");
        let _ = stop_tx.send(true);
        platform.cancel_token().cancel();
        platform.tasks().close();
        let drained = tokio::time::timeout(grace, async {
            let served = (&mut server).await;
            platform.tasks().wait().await;
            served
        })
        .await;
        match drained {
            Ok(served) => {
                tracing::info!(service, "stopped");
                served.map_err(std::io::Error::other)?
            }
            Err(_) => {
                tracing::warn!(service, grace = ?grace, "shutdown grace exceeded; dropping what is left");
                server.abort();
                Ok(())
            }
        }
    }
}
