//! What the handlers, the consumer and the background jobs share.

use mall_common::amqp::Amqp;
use mall_common::db::Db;
use mall_common::identity::IdentityKey;
use mall_common::peer::Peer;
use mall_common::redis::Redis;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::FlashSettings;
use crate::domain::TokenKey;
use crate::live::{Breaker, OnSale, SoldOut, Uncertain};
use crate::store::replica::ReplicaAcks;

/// What the handlers and the background tasks share.
pub struct AppState {
    /// Sessions and the book of admissions.
    pub db: Db,
    /// Live counters, catalog.
    pub redis: Redis,
    /// The hand-off's broker.
    pub amqp: Amqp,
    /// Inventory instances.
    pub inventory: Peer,
    /// The sale's settings.
    pub flash: FlashSettings,
    /// What an admission waits for before its 202 (from `flash` and the Redis in use).
    pub replica_acks: ReplicaAcks,
    /// Verifies the gateway-asserted identity of purchases.
    pub identity: IdentityKey,
    /// Signs and verifies purchase tokens (`MALL_FLASHSALE_TOKEN_SECRET`, prepared once).
    pub token_key: TokenKey,
    /// The sessions on sale, in memory.
    pub on_sale: OnSale,
    /// Sold-out flags.
    pub sold_out: SoldOut,
    /// Purchases whose retries must reach Redis even when sold out.
    pub uncertain: Uncertain,
    /// The Redis breaker of the purchase path.
    pub breaker: Breaker,
    /// Purchases in flight.
    pub permits: Semaphore,
    /// Stops background waits at shutdown.
    pub cancel: CancellationToken,
    /// `flashsale_sold_out_answers_total`.
    pub sold_out_answers: metrics::Counter,
    /// `flashsale_rejections_total{reason="sold_out"}`.
    pub sold_out_rejections: metrics::Counter,
}
