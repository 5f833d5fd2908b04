//! Order events the flash sale consumes: `order.cancelled` of a flash order gives its units
//! back to the session's Redis stock and the buyer's limit, exactly once per order (the restock
//! script remembers the order id, in the same atomic step as the effect). The book records the
//! return first, so a reload of the item from the book gives the units back too.

use lapin::message::Delivery;
use mall_common::amqp::consumer::Outcome;
use mall_common::events::OrderCancelled;

use crate::state::AppState;
use crate::store::admission::{self, ItemKeys, Restock};
use crate::store::book;

/// The queue of order events this service consumes.
pub const ORDER_EVENTS_QUEUE: &str = "flashsale.order-events";

/// Handles one delivery.
pub async fn handle(state: &AppState, delivery: &Delivery) -> Outcome {
    let event: OrderCancelled = match serde_json::from_slice(&delivery.data) {
        Ok(e) => e,
        Err(e) => return Outcome::Poison(format!("bad order.cancelled payload: {e}")),
    };
    let Some(flash) = event.flash else {
        return Outcome::Done;
    };
    let keys = ItemKeys::new(&state.redis, flash.session_id, flash.sku_id);
    let order_id = event.order_id.to_string();
    if let Err(e) = book::mark_returned(&state.db, event.order_id).await {
        return Outcome::Retry(format!("recording the return in the book: {e}"));
    }
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        match admission::restock(&state.redis, &keys, &order_id, &flash.user_id, flash.quantity).await {
            Ok(outcome) => {
                if outcome == Restock::Returned {
                    state.sold_out.clear(flash.session_id, flash.sku_id);
                    metrics::counter!("flashsale_restocks_total").increment(1);
                    tracing::info!(order_id = %order_id, session_id = flash.session_id, sku_id = flash.sku_id,
                        "a cancelled flash order's units are for sale again");
                }
                return Outcome::Done;
            }
            Err(e) => {
                // Redis is down: hold the delivery and try again, rather than requeueing it
                // into the delivery limit and dead-lettering a unit that should be sold.
                tracing::warn!(error = %e, order_id = %order_id, "restock failed; retrying");
                tokio::select! {
                    () = state.cancel.cancelled() => return Outcome::Retry(e.to_string()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}
