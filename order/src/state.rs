//! What the handlers share.

use std::sync::Arc;

use mall_common::db::Db;
use mall_common::redis::Redis;

use crate::peers::Peers;

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) db: Db,
    pub(crate) redis: Redis,
    pub(crate) peers: Arc<Peers>,
    pub(crate) order_ttl_secs: u64,
    pub(crate) reservation_grace_secs: u64,
    pub(crate) timeout_queue: String,
    pub(crate) payment_secret: Arc<[u8]>,
}
