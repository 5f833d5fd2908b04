//! What every service's start-up shares: the built application, the [`Service`] a harness
//! starts it through, and the loop of its periodic jobs.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Vars};
use crate::platform::{PlatformSettings, ServiceDefaults};
use crate::server::Server;
use crate::telemetry::TelemetrySettings;

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

/// A mall service as a harness sees it: settings from variables, the parts every service
/// shares, and the build (testkit's `TestEnv::spawn` starts any service through it).
pub trait Service {
    /// Its settings.
    type Settings: Send + 'static;
    /// Its name, port and schema.
    const DEFAULTS: ServiceDefaults;
    /// Its binary's name (the service name its telemetry reports).
    const BINARY: &'static str;

    /// Settings from variables, as the binary reads its environment.
    fn settings(vars: &Vars) -> Result<Self::Settings, ConfigError>;

    /// The shared settings and the telemetry settings within `settings`.
    fn platform(settings: &mut Self::Settings) -> (&mut PlatformSettings, &mut TelemetrySettings);

    /// Binds, creates its pools and starts its background work.
    fn build(settings: Self::Settings) -> impl Future<Output = anyhow::Result<Application>> + Send;
}

/// Declares `$name`, the invoking crate's [`Service`], from its `config::Settings` (with
/// `platform` and `telemetry` fields), `config::DEFAULTS` and `startup::build`.
// `crate` here is the invoking service's crate, on purpose.
#[allow(clippy::crate_in_macro_def)]
#[macro_export]
macro_rules! service {
    ($name:ident, $binary:literal) => {
        #[doc = concat!("`", $binary, "` as a harness starts it.")]
        pub struct $name;

        impl $crate::service::Service for $name {
            type Settings = crate::config::Settings;
            const DEFAULTS: $crate::platform::ServiceDefaults = crate::config::DEFAULTS;
            const BINARY: &'static str = $binary;

            fn settings(vars: &$crate::config::Vars) -> Result<Self::Settings, $crate::config::ConfigError> {
                crate::config::Settings::from_vars(vars)
            }

            fn platform(
                settings: &mut Self::Settings,
            ) -> (
                &mut $crate::platform::PlatformSettings,
                &mut $crate::telemetry::TelemetrySettings,
            ) {
                (&mut settings.platform, &mut settings.telemetry)
            }

            fn build(
                settings: Self::Settings,
            ) -> impl Future<Output = anyhow::Result<$crate::service::Application>> + Send {
                crate::startup::build(settings)
            }
        }
    };
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
