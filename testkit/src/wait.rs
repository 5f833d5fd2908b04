//! Waiting for effects that arrive asynchronously, with a deadline instead of a fixed sleep.

use std::fmt::Debug;
use std::time::Duration;

/// Polls `probe` every 50 ms until it returns `Ok`, and panics with `what` and the last error
/// once `within` has passed.
pub async fn eventually<T, E, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not true within {within:?}; last: {e:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until the outbox of `db`'s schema has no unsent row: every event its service wrote
/// has been published.
pub async fn outbox_drained(db: &mall_common::db::Db, within: Duration) {
    eventually(within, "every outbox row sent", || async {
        let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(db.pool())
            .await
            .map_err(|e| e.to_string())?;
        if unsent == 0 {
            Ok(())
        } else {
            Err(format!("{unsent} unsent"))
        }
    })
    .await;
}
