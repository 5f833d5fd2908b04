//! Keeping an admission through a Redis Cluster failover: Redis replicates asynchronously, so
//! a master that dies can take its last writes with it, and a promoted replica that missed an
//! admission would sell its unit again. An admission is promised (202) only once a replica
//! holds it (`WAIT`), on the connection that wrote it (`WAIT` counts that connection's writes).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use mall_common::redis::client::cluster_routing::Slot;
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
    /// Its master has no replica that could be promoted (after a failover, until one rejoins):
    /// no promotion can lose it.
    NoReplica,
    /// A replica exists but did not confirm in time: not promised; the buyer retries.
    Lagging,
}

/// Slots whose master was found without a promotable replica, until when that is trusted: a
/// `WAIT` there can only time out, and it holds the connection it runs on for that long.
static WITHOUT_REPLICA: LazyLock<Mutex<HashMap<Slot, Instant>>> = LazyLock::new(Mutex::default);

/// How long a master found without a replica is taken to stay so (one rejoining is waited for
/// again within this time).
const NO_REPLICA_TRUSTED: Duration = Duration::from_secs(1);

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
    let slot = Slot::for_key(key);
    let known = WITHOUT_REPLICA.lock().expect("replica map").get(&slot).copied();
    if known.is_some_and(|until| Instant::now() < until) {
        return Ok(Replication::NoReplica);
    }
    let ms = u64::try_from(acks.wait.as_millis()).unwrap_or(u64::MAX).max(1);
    let wait = client::cmd("WAIT").arg(acks.replicas).arg(ms).clone();
    let acked: i64 = conn.query_owner(&wait, key).await?;
    if acked >= i64::from(acks.replicas) {
        return Ok(Replication::Acked);
    }
    Ok(if promotable_replicas(conn, key).await? == 0 {
        WITHOUT_REPLICA
            .lock()
            .expect("replica map")
            .insert(slot, Instant::now() + NO_REPLICA_TRUSTED);
        Replication::NoReplica
    } else {
        Replication::Lagging
    })
}

/// Replicas that could take over from `key`'s master: on a cluster every replica the cluster
/// knows and has not marked failed (one merely disconnected can still be promoted, with what it
/// missed), on one node the connected ones.
async fn promotable_replicas(conn: &mut Conn, key: &str) -> Result<usize, RedisError> {
    if !conn.is_cluster() {
        // ROLE on a master: ["master", offset, [[host, port, offset], ...]].
        let role: Vec<client::Value> = conn.query_owner(&client::cmd("ROLE"), key).await?;
        return Ok(match role.get(2) {
            Some(client::Value::Array(r)) => r.len(),
            _ => usize::MAX,
        });
    }
    let me: String = conn.query_owner(client::cmd("CLUSTER").arg("MYID"), key).await?;
    let replicas: Vec<String> = conn
        .query_owner(client::cmd("CLUSTER").arg("REPLICAS").arg(&me), key)
        .await?;
    // Each line: <id> <addr> <flags> <master> ...; flags like `slave` or `slave,fail`.
    Ok(replicas
        .iter()
        .filter(|line| {
            line.split(' ')
                .nth(2)
                .is_some_and(|flags| !flags.split(',').any(|f| f == "fail"))
        })
        .count())
}
