//! Building and running mall-product.

use mall_common::amqp::Topology;
use mall_common::platform::{Needs, Platform};
use mall_common::server::Server;
use mall_common::service::Application;
use sqlx::migrate::Migrator;

use crate::config::{DEFAULTS, Settings};
use crate::state::AppState;
use crate::store::Catalog;
use crate::store::bloom::BLOOM_ADD;

/// This service's own migrations (the platform's outbox and inbox tables are added to them).
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The exchanges and queues this service declares on every connect.
pub fn topology() -> Topology {
    Topology::new().topic_exchange("mall.product.events")
}

/// Binds, creates lazy pools, loads scripts, starts migrations, the AMQP connection and the
/// cache's background work (bloom filters, invalidations). Never waits on a dependency that
/// is down: `/readyz` reports it instead.
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
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
        .spawn(crate::jobs::run(catalog.clone(), platform.cancel_token()));
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
    let server = Server::bind(platform, crate::http::router(AppState { catalog })).await?;
    Ok(Application::new(server))
}
