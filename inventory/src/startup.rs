//! Building and running mall-inventory.

use std::sync::Arc;

use mall_common::amqp::Topology;
use mall_common::amqp::consumer::consume;
use mall_common::events::{ORDER_CANCELLED, ORDER_EVENTS, ORDER_PAID};
use mall_common::platform::{Needs, Platform};
use mall_common::server::Server;
use mall_common::service::Application;
use sqlx::migrate::Migrator;

use crate::config::{DEFAULTS, Settings};
use crate::mq::{self, ORDER_EVENTS_QUEUE};
use crate::peers::Product;
use crate::state::AppState;

/// This service's own migrations (the platform's outbox and inbox tables are added to them).
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The exchanges and queues this service declares on every connect. The order exchange is
/// declared here too (declarations are idempotent) so the binding exists whichever service
/// starts first.
pub fn topology(delivery_limit: u32) -> Topology {
    Topology::new()
        .topic_exchange("mall.inventory.events")
        .topic_exchange(ORDER_EVENTS)
        .queue(
            ORDER_EVENTS_QUEUE,
            ORDER_EVENTS,
            &[ORDER_PAID, ORDER_CANCELLED],
            delivery_limit,
        )
}

/// Binds, creates the lazy Postgres pool, starts migrations, the AMQP connection, the
/// order-event consumer and the reservation sweeper. Never waits on a dependency that is
/// down: `/readyz` reports it instead.
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    let needs = Needs {
        postgres: Some(&MIGRATIONS),
        redis: None,
        amqp: Some(topology(settings.delivery_limit)),
    };
    let platform = Platform::start(DEFAULTS.name, settings.platform, needs).await?;
    mall_common::health::declare_counters(&[
        (
            "inventory_reservations_total",
            "Reservations, by outcome.",
            Some(("outcome", &["created"])),
        ),
        (
            "inventory_reservations_expired_total",
            "Expired reservations released by the sweeper.",
            None,
        ),
        // Paged on: the flash sale admitted more units than its session holds.
        (
            "inventory_oversell_refused_total",
            "Carves refused because the session had no unit left.",
            None,
        ),
    ]);
    let db = platform.db().expect("declared").clone();
    let amqp = platform.amqp().expect("declared").clone();
    let cancel = platform.cancel_token();

    let consumer_db = db.clone();
    platform.tasks().spawn(consume(
        amqp,
        ORDER_EVENTS_QUEUE,
        "mall-inventory",
        cancel.clone(),
        move |d| {
            let db = consumer_db.clone();
            async move {
                let outcome = mq::handle(&db, &d).await;
                (d, outcome)
            }
        },
    ));
    platform.tasks().spawn(crate::jobs::sweep(
        db.clone(),
        settings.sweep_interval,
        settings.sweep_batch,
        cancel,
    ));
    let product = Arc::new(Product::new(settings.product_urls.clone(), settings.peer_timeout));
    let state = AppState { db, product };
    let server = Server::bind(platform, crate::http::router(state)).await?;
    Ok(Application::new(server))
}
