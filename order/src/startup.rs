//! Building and running mall-order.

use std::sync::Arc;

use mall_common::amqp::Topology;
use mall_common::amqp::consumer::{consume, consume_parallel};
use mall_common::events::{FLASHSALE_ADMITTED, FLASHSALE_EVENTS, ORDER_EVENTS, ORDER_TIMEOUT};
use mall_common::platform::{Needs, Platform};
use mall_common::server::Server;
use mall_common::service::Application;
use sqlx::migrate::Migrator;

use crate::config::{DEFAULTS, DEV_PAYMENT_SECRET, Settings};
use crate::mq::{self, ADMISSIONS_QUEUE, AdmissionContext, TIMEOUTS_QUEUE, hold_queue};
use crate::peers::Peers;
use crate::state::AppState;

/// This service's own migrations (the platform's outbox and inbox tables are added to them).
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The exchanges and queues this service declares on every connect: its events exchange, the
/// delay hold queue for its payment window (dead-lettering into `order.timeout`), the queue of
/// due timeouts, and the queue of flash-sale admissions (bound to the flash-sale exchange,
/// declared here too so the binding exists whichever service starts first).
pub fn topology(order_ttl_secs: u64, delivery_limit: u32) -> Topology {
    // One second past the window, so a due order is past its expiry when the message lands.
    let delay_ms = (order_ttl_secs + 1) * 1000;
    Topology::new()
        .topic_exchange(ORDER_EVENTS)
        .delay_queue(&hold_queue(order_ttl_secs), delay_ms, ORDER_EVENTS, ORDER_TIMEOUT)
        .queue(TIMEOUTS_QUEUE, ORDER_EVENTS, &[ORDER_TIMEOUT], delivery_limit)
        .topic_exchange(FLASHSALE_EVENTS)
        .queue(
            ADMISSIONS_QUEUE,
            FLASHSALE_EVENTS,
            &[FLASHSALE_ADMITTED],
            delivery_limit,
        )
}

/// Binds, creates lazy pools, starts migrations, the AMQP connection, the outbox relay, the
/// timeout consumer and the expiry sweeper. Never waits on a dependency that is down.
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    let o = settings.order;
    if o.payment_secret.expose() == DEV_PAYMENT_SECRET {
        tracing::warn!("MALL_PAYMENT_SECRET is the development default; set your own outside development");
    }
    let ttl_secs = o.order_ttl.as_secs();
    let needs = Needs {
        postgres: Some(&MIGRATIONS),
        redis: Some(Vec::new()),
        amqp: Some(topology(ttl_secs, o.delivery_limit)),
    };
    let platform = Platform::start(DEFAULTS.name, settings.platform, needs).await?;
    let db = platform.db().expect("declared").clone();
    let amqp = platform.amqp().expect("declared").clone();
    let cancel = platform.cancel_token();
    declare_metrics();

    platform.tasks().spawn(mall_common::outbox::relay(
        db.clone(),
        amqp.clone(),
        o.outbox_interval,
        cancel.clone(),
    ));
    let peers = Arc::new(Peers::new(o.product_urls, o.inventory_urls, o.peer_timeout));
    let admissions = Arc::new(AdmissionContext {
        db: db.clone(),
        peers: peers.clone(),
        order_ttl_secs: ttl_secs,
        reservation_grace_secs: o.reservation_grace.as_secs(),
        timeout_queue: hold_queue(ttl_secs),
        cancel: cancel.clone(),
    });
    // Admissions are independent of each other: a few at once keeps the hand-off of a crowd
    // short (each waits on a carve at inventory and an insert).
    platform.tasks().spawn(consume_parallel(
        amqp.clone(),
        ADMISSIONS_QUEUE,
        "mall-order",
        8,
        cancel.clone(),
        move |d| {
            let ctx = admissions.clone();
            async move {
                let outcome = mq::handle_admission(&ctx, &d).await;
                (d, outcome)
            }
        },
    ));
    let consumer_db = db.clone();
    platform.tasks().spawn(consume(
        amqp,
        TIMEOUTS_QUEUE,
        "mall-order",
        cancel.clone(),
        move |d| {
            let db = consumer_db.clone();
            async move {
                let outcome = mq::handle(&db, &d).await;
                (d, outcome)
            }
        },
    ));
    platform
        .tasks()
        .spawn(crate::jobs::sweep(db.clone(), o.sweep_interval, cancel));

    let state = AppState {
        db,
        redis: platform.redis().expect("declared").clone(),
        peers,
        order_ttl_secs: ttl_secs,
        reservation_grace_secs: o.reservation_grace.as_secs(),
        timeout_queue: hold_queue(ttl_secs),
        payment_secret: o.payment_secret.expose().as_bytes().into(),
    };
    let server = Server::bind(platform, crate::http::router(state)).await?;
    Ok(Application::new(server))
}

/// The service's counters exported at 0 from the start, so dashboards and alerts find every
/// series on an idle instance.
fn declare_metrics() {
    mall_common::health::declare_counters(&[
        ("orders_placed_total", "Orders placed through the API.", None),
        (
            "orders_cancelled_total",
            "Orders cancelled, by reason.",
            Some(("reason", &["buyer", "timeout"])),
        ),
        (
            "payments_total",
            "Payment callbacks, by outcome.",
            Some(("outcome", &["applied", "late", "mismatch"])),
        ),
        (
            "flash_orders_created_total",
            "Orders created from flash-sale admissions.",
            None,
        ),
        // An admission answered 202 that became no order: paged on.
        (
            "flash_orders_failed_total",
            "Flash-sale admissions that could not become an order.",
            None,
        ),
    ]);
}
