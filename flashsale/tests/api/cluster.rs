//! The scripts on a real Redis Cluster (three masters on loopback ports, started here from
//! redis-server): every key of an item hashes to one slot, and the scripts run unchanged on the
//! node that owns it, which a cluster refuses for keys spread over slots.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mall_common::redis::{Redis, RedisSettings, client};
use mall_flashsale::store::admission::{
    ADMIT, Admission, Admitted, Attempt, ItemKeys, LOAD_ITEM, Load, admit, load_item,
};
use mall_testkit::eventually;

struct Node {
    port: u16,
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    // Cluster bus ports are port + 10000, so stay below 55535.
    loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

fn start_node() -> Node {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("mall-cluster-{port}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
        ])
        .args([
            "--cluster-config-file",
            "nodes.conf",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    Node { port, child, dir }
}

fn redis_at(port: u16) -> Redis {
    Redis::connect_lazy(&RedisSettings {
        url: format!("redis://127.0.0.1:{port}").parse().unwrap(),
        key_prefix: "mall:".into(),
        connections: 1,
        timeout: Duration::from_secs(2),
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripts_run_unchanged_on_a_three_master_redis_cluster() {
    let nodes: Vec<Node> = (0..3).map(|_| start_node()).collect();
    for n in &nodes {
        eventually(Duration::from_secs(10), "cluster node up", || async {
            redis_at(n.port).check().await
        })
        .await;
    }
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli is installed");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stdout)
    );

    let probe = redis_at(nodes[0].port);
    let keys = ItemKeys::new(&probe, 12, 34);
    let mut conn = probe.conn().await.unwrap();
    let mut slots = Vec::new();
    for k in keys.all() {
        let slot: i64 = client::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(k)
            .query_async(&mut *conn)
            .await
            .unwrap();
        slots.push(slot);
    }
    slots.dedup();
    assert_eq!(slots.len(), 1, "one hash tag, one slot");

    // Every node must report the cluster as ok before any of them serves a command: each node
    // reaches that state on its own once gossip has told it about every slot, so one node saying
    // ok does not mean the owner of our slot does (seen in CI as `ClusterDown`).
    for n in &nodes {
        let node = redis_at(n.port);
        eventually(
            Duration::from_secs(30),
            "every node sees the cluster ok",
            || async {
                let mut conn = node.conn().await.map_err(|e| e.to_string())?;
                let info: String = client::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut *conn)
                    .await
                    .map_err(|e| e.to_string())?;
                if info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384") {
                    Ok(())
                } else {
                    Err(format!("node {} not ok yet", n.port))
                }
            },
        )
        .await;
    }

    // Find the master that owns the slot.
    let owner = eventually(Duration::from_secs(15), "the slot has an owner", || async {
        let mut conn = probe.conn().await.map_err(|e| e.to_string())?;
        let ranges: Vec<Vec<client::Value>> = client::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        for r in ranges {
            let (lo, hi): (i64, i64) = (
                client::from_redis_value(r[0].clone()).unwrap(),
                client::from_redis_value(r[1].clone()).unwrap(),
            );
            if (lo..=hi).contains(&slots[0]) {
                let master: Vec<client::Value> = client::from_redis_value(r[2].clone()).unwrap();
                let port: i64 = client::from_redis_value(master[1].clone()).unwrap();
                return Ok(port as u16);
            }
        }
        Err("slot not assigned".to_owned())
    })
    .await;

    let redis = redis_at(owner);
    mall_common::redis::LuaScript::load_all(&redis, &[&ADMIT, &LOAD_ITEM])
        .await
        .unwrap();
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
    let a = Attempt {
        user_id: "u1",
        request_id: "r1",
        quantity: 1,
        now_ms: 10,
        order_id: "o1",
    };
    assert_eq!(
        admit(&redis, &keys, a).await.unwrap(),
        Admission::Admitted(Admitted {
            order_id: "o1".into(),
            quantity: 1,
            left: 1,
            epoch: 1,
            booked: false
        })
    );
    let b = Attempt {
        user_id: "u1",
        request_id: "r2",
        quantity: 1,
        now_ms: 11,
        order_id: "o2",
    };
    assert_eq!(admit(&redis, &keys, b).await.unwrap(), Admission::LimitExceeded);

    // A node that does not own the slot refuses the same call: the cluster is really enforcing
    // slots, so the success above is the hash tags' doing.
    let other = nodes.iter().map(|n| n.port).find(|p| *p != owner).unwrap();
    let elsewhere = redis_at(other);
    let refused = admit(
        &elsewhere,
        &keys,
        Attempt {
            user_id: "u2",
            request_id: "r3",
            quantity: 1,
            now_ms: 12,
            order_id: "o3",
        },
    )
    .await;
    assert!(refused.is_err(), "a non-owner answers MOVED: {refused:?}");
}
