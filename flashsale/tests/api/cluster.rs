//! The scripts on a real Redis Cluster (three masters with a replica each, this test binary's
//! own): every key of an item hashes to one slot, the scripts run unchanged through the cluster
//! client, an admission waits for its replica, and a node that does not own the slot refuses.

use std::time::Duration;

use mall_common::redis::{LuaScript, Redis, RedisSettings};
use mall_flashsale::store::admission::{
    ADMIT, Admission, Admitted, Attempt, ItemKeys, LOAD_ITEM, Load, admit, admit_with, load_item,
};
use mall_flashsale::store::replica::{ReplicaAcks, Replication};
use mall_testkit::RedisCluster;

/// A handle on the cluster (`seeds`), or on the one node `single` alone, under `prefix`.
fn redis_on(seeds: Vec<url::Url>, single: Option<u16>, prefix: &str) -> Redis {
    Redis::connect_lazy(&RedisSettings {
        url: format!("redis://127.0.0.1:{}", single.unwrap_or(6379))
            .parse()
            .unwrap(),
        cluster_nodes: if single.is_some() { Vec::new() } else { seeds },
        key_prefix: prefix.to_owned(),
        connections: 1,
        timeout: Duration::from_secs(2),
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripts_run_unchanged_on_a_redis_cluster_and_wait_for_a_replica() {
    let cluster = RedisCluster::shared().await;
    let prefix = format!("cl{}:", uuid::Uuid::new_v4().simple());
    let redis = redis_on(cluster.seed_urls(), None, &prefix);
    redis.check().await.expect("the cluster is ok");
    LuaScript::load_all(&redis, &[&ADMIT, &LOAD_ITEM]).await.unwrap();
    let keys = ItemKeys::new(&redis, 12, 34);
    let load = Load {
        start_ms: 0,
        end_ms: i64::MAX / 2,
        limit: 1,
        quantity: 2,
        expire_at_ms: 4_000_000_000_000,
        epoch: 1,
        run_id: "test-run",
        booked: &[],
    };
    assert!(load_item(&redis, &keys, &load).await.unwrap());
    let acks = ReplicaAcks {
        replicas: 1,
        wait: Duration::from_secs(2),
    };
    let attempt = |user, request, order| Attempt {
        user_id: user,
        request_id: request,
        quantity: 1,
        now_ms: 10,
        order_id: order,
    };
    assert_eq!(
        admit_with(&redis, &keys, attempt("u1", "r1", "o1"), acks)
            .await
            .unwrap(),
        Admission::Admitted(Admitted {
            order_id: "o1".into(),
            quantity: 1,
            left: 1,
            epoch: 1,
            booked: false,
            replication: Replication::Acked,
        })
    );
    assert_eq!(
        admit_with(&redis, &keys, attempt("u1", "r2", "o2"), acks)
            .await
            .unwrap(),
        Admission::LimitExceeded
    );

    // A node that does not own the slot refuses the same call when asked directly: the cluster
    // is really enforcing slots, so the success above is the hash tags' (and the client's) doing.
    let owner = cluster.master_of(&keys.meta).await;
    let other = cluster.ports().into_iter().find(|p| *p != owner).unwrap();
    let direct = redis_on(Vec::new(), Some(other), &prefix);
    let refused = admit(&direct, &keys, attempt("u2", "r3", "o3")).await;
    assert!(
        refused.is_err(),
        "a node that is not the owner answers MOVED: {refused:?}"
    );
}
