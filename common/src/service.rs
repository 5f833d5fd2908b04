//! What every service's start-up shares: the built application, and the loop of its
//! periodic jobs.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::server::Server;

/// A built service: listener bound, pools created, background work started.
pub struct Application {
    server: Server,
}

impl Application {
    /// The application serving through `server`.
    pub fn new(server: Server) -> Self {
        Self { server }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains within `MALL_SHUTDOWN_TIMEOUT`.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        Ok(self.server.run_until_stopped(shutdown).await?)
    }

    /// The underlying server (tests run it through `mall-testkit`).
    pub fn into_server(self) -> Server {
        self.server
    }
}

/// Runs `tick` every `period` (the first after one period) until `cancel` fires; a tick in
/// progress finishes first.
pub async fn every<F, Fut>(period: Duration, cancel: CancellationToken, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        tick().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_once_per_period_and_stops_when_cancelled() {
        let (ticks, cancel) = (Arc::new(AtomicU32::new(0)), CancellationToken::new());
        let counted = ticks.clone();
        let job = tokio::spawn(every(Duration::from_secs(10), cancel.clone(), move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async {}
        }));
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 3);
        cancel.cancel();
        job.await.expect("the loop ends");
        assert_eq!(ticks.load(Ordering::SeqCst), 3);
    }
}
