//! Building and running mall-product.

use std::net::SocketAddr;

use mall_common::amqp::Topology;
use mall_common::platform::{Needs, Platform};
use mall_common::server::Server;
use sqlx::migrate::Migrator;

use crate::config::{DEFAULTS, Settings};
use crate::store::Catalog;
use crate::store::bloom::BLOOM_ADD;

/// This service's own migrations (the platform's outbox and inbox tables are added to them).
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The exchanges and queues this service declares on every connect.
pub fn topology() -> Topology {
    Topology::new().topic_exchange("mall.product.events")
}

/// A built mall-product: listener bound, pools created, background work started.
pub struct Application {
    server: Server,
}

impl Application {
    /// Binds, creates lazy pools, loads scripts, starts migrations, the AMQP connection and the
    /// cache's background work (bloom filters, invalidations). Never waits on a dependency that
    /// is down: `/readyz` reports it instead.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let needs = Needs {
            postgres: Some(&MIGRATIONS),
            redis: Some(vec![&BLOOM_ADD]),
            amqp: Some(topology()),
        };
        let mut platform = Platform::start(DEFAULTS.name, settings.platform, needs).await?;
        let catalog = Catalog::new(
            platform.db().expect("declared").clone(),
            platform.redis().expect("declared").clone(),
            settings.cache,
        );
        platform
            .tasks()
            .spawn(catalog.clone().run_background(platform.cancel_token()));
        let ready = catalog.clone();
        platform.readiness_mut().add("bloom", move || {
            let ready = ready.blooms_ready();
            async move {
                if ready {
                    Ok(())
                } else {
                    Err("bloom filters not built yet".to_owned())
                }
            }
        });
        let server = Server::bind(platform, crate::http::router(catalog)).await?;
        Ok(Self { server })
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
