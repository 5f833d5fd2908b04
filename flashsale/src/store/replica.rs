//! Keeping an admission through a Redis Cluster failover: Redis replicates asynchronously, so
//! a master that dies can take its last writes with it, and a promoted replica that missed an
//! admission would sell its unit again. An admission is promised (202) only once a replica
//! holds it (`WAIT`), on the connection that wrote it (`WAIT` counts that connection's writes).

use std::time::Duration;

use mall_common::redis::{Conn, RedisError, client};

/// How many replicas must hold an admission before it is promised, and for how long to wait
/// (`MALL_FLASHSALE_REPLICA_ACKS`, `MALL_FLASHSALE_REPLICA_WAIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAcks {
    /// Replicas to wait for; 0 waits for none.
    pub replicas: u32,
    /// The longest wait.
    pub wait: Duration,
}

impl ReplicaAcks {
    /// Waits for nothing (one Redis node, or a cluster whose operator accepts the risk).
    pub const NONE: Self = Self {
        replicas: 0,
        wait: Duration::ZERO,
    };
}

/// Where an admission stands against a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// Not asked for ([`ReplicaAcks::NONE`]), or nothing was written.
    NotAsked,
    /// The replicas asked for hold it.
    Acked,
    /// Its master has no replica (after a failover, until one rejoins): nothing can be promoted
    /// over it, so nothing can lose it to a promotion.
    NoReplica,
    /// A replica exists but did not confirm in time: not promised; the buyer retries.
    Lagging,
}

/// Waits until `acks.replicas` replicas of the master owning `key` hold every write sent on
/// `conn` so far.
pub async fn wait_for_replicas(
    conn: &mut Conn,
    key: &str,
    acks: ReplicaAcks,
) -> Result<Replication, RedisError> {
    if acks.replicas == 0 {
        return Ok(Replication::NotAsked);
    }
    let ms = u64::try_from(acks.wait.as_millis()).unwrap_or(u64::MAX).max(1);
    let wait = client::cmd("WAIT").arg(acks.replicas).arg(ms).clone();
    let acked: i64 = conn.query_owner(&wait, key).await?;
    if acked >= i64::from(acks.replicas) {
        return Ok(Replication::Acked);
    }
    // ROLE on a master: ["master", offset, [[host, port, offset], ...]].
    let role: Vec<client::Value> = conn.query_owner(&client::cmd("ROLE"), key).await?;
    let is_master = match role.first() {
        Some(client::Value::BulkString(b)) => b == b"master",
        Some(client::Value::SimpleString(s)) => s == "master",
        _ => false,
    };
    let replicas = match role.get(2) {
        Some(client::Value::Array(r)) => r.len(),
        _ => usize::MAX,
    };
    Ok(if is_master && replicas == 0 {
        Replication::NoReplica
    } else {
        Replication::Lagging
    })
}
