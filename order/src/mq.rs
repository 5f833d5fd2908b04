//! The order service's own queue: `order.timeouts`, fed by the delay hold queue. A timeout
//! cancels the order only if it is still unpaid and past its expiry (a guarded update), so a
//! repeat, or a timeout racing a payment, changes nothing twice.

use lapin::message::Delivery;
use mall_common::amqp::consumer::Outcome;
use mall_common::db::Db;
use mall_common::events::OrderTimeout;

use crate::store;

/// The queue of due timeouts.
pub const TIMEOUTS_QUEUE: &str = "order.timeouts";

/// The hold queue for a payment window of `ttl_secs` (one per delay length).
pub fn hold_queue(ttl_secs: u64) -> String {
    format!("order.timeout.hold-{ttl_secs}s")
}

/// Handles one due timeout.
pub async fn handle(db: &Db, delivery: &Delivery) -> Outcome {
    let timeout: OrderTimeout = match serde_json::from_slice(&delivery.data) {
        Ok(t) => t,
        Err(e) => return Outcome::Poison(format!("bad order.timeout payload: {e}")),
    };
    match store::time_out(db, timeout.order_id).await {
        // Cancelled now, or already paid/cancelled, or not yet due (the sweeper will see it):
        // either way this message has done its job.
        Ok(_) => Outcome::Done,
        Err(e) => Outcome::Retry(e.to_string()),
    }
}

/// The queue of flash-sale admissions this service turns into orders.
pub const ADMISSIONS_QUEUE: &str = "order.flashsale-admissions";

/// What the admission consumer needs.
pub struct AdmissionContext {
    /// The order database.
    pub db: Db,
    /// Inventory (for the carve).
    pub peers: std::sync::Arc<crate::peers::Peers>,
    /// The payment window.
    pub order_ttl_secs: u64,
    /// How much longer the order's reservation lives than its payment window.
    pub reservation_grace_secs: u64,
    /// The timeout hold queue.
    pub timeout_queue: String,
    /// Stops the wait for inventory at shutdown.
    pub cancel: tokio_util::sync::CancellationToken,
}

/// Creates the order of one admission, idempotently by its order id: carve its units out of the
/// session's reservation at inventory (idempotent by the order id too), then write the order.
/// While inventory cannot be reached, the delivery is held and retried with backoff rather than
/// requeued (a requeue would count against the delivery limit and dead-letter a sold unit
/// during an outage); the admission stays unacked, so a crash redelivers it.
pub async fn handle_admission(ctx: &AdmissionContext, delivery: &Delivery) -> Outcome {
    use crate::peers::Carved;
    let a: mall_common::events::FlashAdmitted = match serde_json::from_slice(&delivery.data) {
        Ok(a) => a,
        Err(e) => return Outcome::Poison(format!("bad flashsale.admitted payload: {e}")),
    };
    match store::exists(&ctx.db, a.order_id).await {
        Ok(true) => return Outcome::Done,
        Ok(false) => {}
        Err(e) => return Outcome::Retry(e.to_string()),
    }
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        let carved = ctx
            .peers
            .carve(
                a.reservation_id,
                a.order_id,
                &format!("order:{}", a.order_id),
                a.sku_id,
                a.quantity,
                ctx.order_ttl_secs + ctx.reservation_grace_secs,
            )
            .await;
        match carved {
            Ok(Carved::Held(status)) if status == "reserved" => break,
            Ok(Carved::Held(status)) => {
                // The order's reservation was settled without an order (the inventory sweeper
                // released it after a very long outage): nothing holds the unit any more.
                metrics::counter!("flash_orders_failed_total").increment(1);
                return Outcome::Poison(format!("reservation of {} is already {status}", a.order_id));
            }
            Ok(Carved::Refused(why)) => {
                metrics::counter!("flash_orders_failed_total").increment(1);
                return Outcome::Poison(format!("inventory refused the carve of {}: {why}", a.order_id));
            }
            Err(e) => {
                tracing::warn!(error = %e, order_id = %a.order_id, "inventory unreachable; holding the admission");
                tokio::select! {
                    () = ctx.cancel.cancelled() => return Outcome::Retry("shutting down".into()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
    match store::create_flash_order(&ctx.db, &a, ctx.order_ttl_secs, &ctx.timeout_queue).await {
        Ok(_) => Outcome::Done,
        Err(e) => Outcome::Retry(e.to_string()),
    }
}
