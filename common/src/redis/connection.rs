//! One connection type for a single Redis node or a Redis Cluster, chosen at start-up.
//!
//! Both are multiplexed and reconnect by themselves; the cluster connection also follows
//! `MOVED`/`ASK` redirections and refreshes its slot map (the redis crate's `cluster-async`).

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

/// A connection to send commands on, to one node or to a cluster.
#[derive(Clone)]
pub enum Connection {
    /// One Redis server (`MALL_REDIS_URL`).
    Node(ConnectionManager),
    /// A Redis Cluster (`MALL_REDIS_CLUSTER_NODES`).
    Cluster(ClusterConnection),
}

impl Connection {
    /// Runs `cmd` on the master that owns `key`'s slot: for commands that carry no key but
    /// are about one (`INFO`, `WAIT`, `ROLE`), which a cluster would otherwise send to every
    /// node or to any.
    pub async fn query_owner<T: FromRedisValue>(&mut self, cmd: &Cmd, key: &str) -> RedisResult<T> {
        match self {
            Self::Node(c) => cmd.query_async(c).await,
            Self::Cluster(c) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = c.route_command(cmd.clone(), routing).await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// The keys of a script call (`EVAL`, `EVALSHA`, `FCALL`) must share one cluster slot, or a
/// cluster refuses the call; this says which keys do not, so a single node's tests catch what
/// only a cluster would.
pub fn script_keys_in_one_slot(cmd: &Cmd) -> Result<(), String> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(b) => b,
        _ => &[][..],
    });
    let Some(verb) = args.next() else {
        return Ok(());
    };
    if !matches!(
        verb.to_ascii_uppercase().as_slice(),
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL"
    ) {
        return Ok(());
    }
    let _script = args.next();
    let count: usize = args
        .next()
        .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
        .unwrap_or(0);
    let mut first: Option<(&[u8], Slot)> = None;
    for key in args.take(count) {
        let slot = Slot::for_key(key);
        match first {
            None => first = Some((key, slot)),
            Some((k, s)) if s != slot => {
                return Err(format!(
                    "script keys {} and {} hash to different cluster slots; give them one hash tag",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(key)
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        // Checked in debug builds (every test), not on the production hot path.
        #[cfg(debug_assertions)]
        if let Err(e) = script_keys_in_one_slot(cmd) {
            let e = redis::RedisError::from((redis::ErrorKind::Client, "cross-slot script call", e));
            return Box::pin(std::future::ready(Err(e)));
        }
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evalsha(keys: &[&str]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg("0123").arg(keys.len()).arg(keys).arg("an-argument");
        cmd
    }

    #[test]
    fn script_keys_must_share_a_slot_and_a_hash_tag_makes_them() {
        assert_eq!(
            Slot::for_key("mall:fs:{fs:1:2}:meta"),
            Slot::for_key("fs:1:2"),
            "only the tag is hashed"
        );
        assert!(
            script_keys_in_one_slot(&evalsha(&["mall:fs:{fs:1:2}:meta", "mall:fs:{fs:1:2}:stock"])).is_ok()
        );
        let err = script_keys_in_one_slot(&evalsha(&["mall:fs:1:2:meta", "mall:fs:1:2:stock"])).unwrap_err();
        assert!(err.contains("mall:fs:1:2:stock"), "{err}");
        // Arguments past the keys are not keys.
        assert!(script_keys_in_one_slot(&evalsha(&["mall:{a}:x"])).is_ok());
        assert!(script_keys_in_one_slot(redis::cmd("GET").arg("k")).is_ok());
    }
}
