//! The service's background loops: the bloom filters kept in step, and other instances'
//! invalidations applied to this one's L1.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Catalog;

/// Runs both loops until `cancel`.
pub async fn run(catalog: Catalog, cancel: CancellationToken) {
    tokio::join!(
        sync_blooms(catalog.clone(), cancel.clone()),
        listen(catalog, cancel)
    );
}

/// Builds or loads the filters, quickly until both are ready, then every 10 s to pick up what
/// other instances added.
async fn sync_blooms(catalog: Catalog, cancel: CancellationToken) {
    loop {
        catalog.sync_blooms().await;
        let pause = if catalog.blooms_ready() {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(200)
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Follows the invalidation channel, resubscribing half a second after it is lost.
async fn listen(catalog: Catalog, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            r = catalog.follow_invalidations() => if let Err(e) = r {
                tracing::debug!(error = %e, "invalidation channel lost; resubscribing");
            },
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
