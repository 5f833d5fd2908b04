//! The service's background loop: the sweeper of expired reservations.

use std::time::Duration;

use mall_common::db::Db;
use tokio_util::sync::CancellationToken;

/// Releases reservations past their expiry that no `order.paid` confirmed (an order that was
/// never written, or whose cancellation event was lost). Every instance sweeps; `SKIP LOCKED`
/// gives each reservation to one of them.
pub async fn sweep(db: Db, every: Duration, batch: i64, cancel: CancellationToken) {
    mall_common::service::every(every, cancel, || async {
        match crate::store::sweep_expired(&db, batch).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!("inventory_reservations_expired_total").increment(n);
                tracing::info!(released = n, "expired reservations released");
            }
            Err(e) => tracing::warn!(error = %e, "reservation sweep failed; retrying"),
        }
    })
    .await;
}
