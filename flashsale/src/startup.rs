//! Building and running mall-flashsale.

use std::sync::Arc;

use mall_common::amqp::Topology;
use mall_common::amqp::consumer::consume;
use mall_common::events::{FLASHSALE_EVENTS, ORDER_CANCELLED, ORDER_EVENTS};
use mall_common::identity::IdentityKey;
use mall_common::peer::{Peer, client};
use mall_common::platform::{Needs, Platform};
use mall_common::server::Server;
use mall_common::service::Application;
use sqlx::migrate::Migrator;
use tokio::sync::Semaphore;

use crate::config::{DEFAULTS, DEV_TOKEN_SECRET, Settings};
use crate::live::{Breaker, OnSale, SoldOut};
use crate::mq::{self, ORDER_EVENTS_QUEUE};
use crate::state::AppState;

/// This service's own migrations (the platform's outbox and inbox tables are added to them).
pub static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The exchanges and queues this service declares on every connect: its events exchange, and
/// its queue of order cancellations (the order exchange is declared too, so the binding exists
/// whichever service starts first).
pub fn topology(delivery_limit: u32) -> Topology {
    Topology::new()
        .topic_exchange(FLASHSALE_EVENTS)
        .topic_exchange(ORDER_EVENTS)
        .queue(
            ORDER_EVENTS_QUEUE,
            ORDER_EVENTS,
            &[ORDER_CANCELLED],
            delivery_limit,
        )
}

/// Binds, creates lazy pools, loads scripts, starts migrations, the AMQP connection, the
/// refresh of the sessions on sale, the load/settle job, the hand-off (outbox relay) and the
/// cancellation consumer. Never waits on a dependency that is down: `/readyz` reports it.
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    let flash = settings.flash;
    if flash.token_secret.expose() == DEV_TOKEN_SECRET {
        tracing::warn!(
            "MALL_FLASHSALE_TOKEN_SECRET is the development default; set your own outside development"
        );
    }
    let mut scripts = crate::store::admission::scripts();
    scripts.extend(mall_common::redis::lock::scripts());
    let needs = Needs {
        postgres: Some(&MIGRATIONS),
        // Loaded at start-up: a script Redis cannot compile stops the service here.
        redis: Some(scripts),
        amqp: Some(topology(flash.delivery_limit)),
    };
    let identity = IdentityKey::new(settings.platform.internal_secret.expose().as_bytes());
    let platform = Platform::start(DEFAULTS.name, settings.platform, needs).await?;
    let cancel = platform.cancel_token();
    declare_metrics();
    let state = Arc::new(AppState {
        db: platform.db().expect("declared").clone(),
        redis: platform.redis().expect("declared").clone(),
        amqp: platform.amqp().expect("declared").clone(),
        inventory: Peer::new(
            "inventory",
            client(flash.peer_timeout),
            flash.inventory_urls.clone(),
        ),
        on_sale: OnSale::default(),
        sold_out: SoldOut::new(flash.sold_out_ttl),
        uncertain: Default::default(),
        breaker: Breaker::new(flash.breaker_failures, flash.breaker_open),
        permits: Semaphore::new(flash.max_in_flight),
        cancel: cancel.clone(),
        identity,
        token_key: crate::domain::TokenKey::new(flash.token_secret.expose().as_bytes()),
        replica_acks: flash.replica_acks(platform.redis().expect("declared")),
        flash,
        // After Platform::start, so they belong to the installed recorder.
        sold_out_answers: metrics::counter!("flashsale_sold_out_answers_total"),
        sold_out_rejections: metrics::counter!("flashsale_rejections_total", "reason" => "sold_out"),
    });
    let tasks = platform.tasks();
    tasks.spawn(crate::jobs::refresh(state.clone(), cancel.clone()));
    tasks.spawn(crate::jobs::leader(state.clone(), cancel.clone()));
    // The hand-off: every booked admission's event is an outbox row.
    tasks.spawn(mall_common::outbox::relay(
        state.db.clone(),
        state.amqp.clone(),
        state.flash.handoff_interval,
        cancel.clone(),
    ));
    let consumer = state.clone();
    tasks.spawn(consume(
        state.amqp.clone(),
        ORDER_EVENTS_QUEUE,
        "mall-flashsale",
        cancel,
        move |d| {
            let state = consumer.clone();
            async move {
                let outcome = mq::handle(&state, &d).await;
                (d, outcome)
            }
        },
    ));
    let server = Server::bind(platform, crate::http::router(state)).await?;
    Ok(Application::new(server))
}

/// The service's counters exported at 0 from the start, so dashboards and alerts find every
/// series on an idle instance.
fn declare_metrics() {
    mall_common::health::declare_counters(&[
        (
            "flashsale_admissions_total",
            "Purchases admitted (answered 202).",
            None,
        ),
        (
            "flashsale_reloads_total",
            "Items loaded into Redis again from the book of admissions (Redis lost or rewound them).",
            None,
        ),
        (
            "flashsale_unreplicated_admissions_total",
            "Admissions promised while their Redis master had no replica to wait for.",
            None,
        ),
        (
            "flashsale_sold_out_answers_total",
            "Purchases answered sold out by the in-memory flag.",
            None,
        ),
        (
            "flashsale_restocks_total",
            "Units returned to a running session.",
            None,
        ),
        (
            "flashsale_sessions_created_total",
            "Flash-sale sessions created.",
            None,
        ),
        (
            "flashsale_settlements_deferred_total",
            "Passes of the settle job that put an ended session's item off, by what it waits for.",
            Some(("waiting_for", &["handoff", "orders"])),
        ),
    ]);
    metrics::gauge!("flashsale_redis_breaker_open").set(0.0);
}
