//! The service's background loop: the sweeper of unpaid orders past their expiry.

use std::time::Duration;

use mall_common::db::Db;
use tokio_util::sync::CancellationToken;

/// The backstop for lost timeout messages: cancels unpaid orders past their expiry.
pub async fn sweep(db: Db, every: Duration, cancel: CancellationToken) {
    mall_common::service::every(every, cancel, || async {
        match crate::store::sweep_expired(&db, 100).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(cancelled = n, "expired orders cancelled by the sweeper"),
            Err(e) => tracing::warn!(error = %e, "order sweep failed; retrying"),
        }
    })
    .await;
}
