//! A Redis Cluster of a test's own: masters with one replica each, started from `redis-server`
//! on free loopback ports. [`RedisCluster::shared`] starts one per test binary (what
//! `MALL_TEST_REDIS=cluster` runs the suites on); a test that kills nodes starts its own.
//!
//! Each node runs under `sh`, which holds the read end of a pipe whose write end only this
//! process has: when the process ends, even killed, the pipe closes and `sh` kills the node.

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use mall_common::redis::client;
use tokio::sync::OnceCell;
use url::Url;

use crate::eventually;

/// One node's process and the pipe that keeps it alive.
struct Running {
    child: Child,
    lifeline: ChildStdin,
}

/// A node: its port, directory (`nodes.conf` survives a restart) and process, if running.
struct Node {
    port: u16,
    dir: PathBuf,
    running: Mutex<Option<Running>>,
}

/// A running cluster; dropping it stops its nodes and removes their directories.
pub struct RedisCluster {
    nodes: Vec<Node>,
}

/// How long a master may be unreachable before its replica takes over: short, so a failover
/// test is quick (Redis's default is 15 s).
const NODE_TIMEOUT_MS: u32 = 1000;

impl RedisCluster {
    /// The cluster of this test binary, started on first use.
    pub async fn shared() -> &'static Self {
        static SHARED: OnceCell<RedisCluster> = OnceCell::const_new();
        SHARED.get_or_init(|| Self::start(3)).await
    }

    /// Starts `masters` masters and as many replicas, and waits until every node serves every
    /// slot and every replica is in sync.
    pub async fn start(masters: usize) -> Self {
        let nodes: Vec<Node> = (0..masters * 2).map(|_| Node::new()).collect();
        for n in &nodes {
            n.spawn();
        }
        for n in &nodes {
            let port = n.port;
            eventually(Duration::from_secs(10), "cluster node up", || ping(port)).await;
        }
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_healthy().await;
        cluster
    }

    /// `MALL_REDIS_CLUSTER_NODES` for this cluster: every node as a seed.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's port.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The seed URLs.
    pub fn seed_urls(&self) -> Vec<Url> {
        self.seeds().split(',').map(|s| s.parse().expect("url")).collect()
    }

    /// Waits (30 s at most) until every running node says `cluster_state:ok` and every running
    /// master has a replica in sync: the state a test may start from, and the one a failover
    /// ends in once the old master is back as a replica.
    pub async fn wait_healthy(&self) {
        let ports: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.port)
            .collect();
        eventually(Duration::from_secs(30), "the cluster is healthy", || async {
            for &port in &ports {
                let info = query(port, client::cmd("CLUSTER").arg("INFO")).await?;
                if !info.contains("cluster_state:ok") {
                    return Err(format!("node {port} does not see the cluster ok yet"));
                }
                let repl = query(port, client::cmd("INFO").arg("replication")).await?;
                if repl.contains("role:master") && !repl.contains("state=online") {
                    return Err(format!("master {port} has no replica in sync yet"));
                }
                if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                    return Err(format!("replica {port} is not linked yet"));
                }
            }
            Ok(())
        })
        .await;
    }

    /// The port of the master that serves `key`'s slot now.
    pub async fn master_of(&self, key: &str) -> u16 {
        let port = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node")
            .port;
        let key = key.to_owned();
        eventually(Duration::from_secs(15), "the key's slot has a master", || async {
            let mut conn = connect(port).await?;
            let slot: i64 = client::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            // Each range: [first slot, last slot, [host, port, id, ...] of its master, replicas...].
            let ranges: Vec<Vec<client::Value>> = client::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let int = |v: &client::Value| client::from_redis_value_ref::<i64>(v).ok();
            ranges
                .iter()
                .find(|r| matches!((r.first().and_then(int), r.get(1).and_then(int)), (Some(lo), Some(hi)) if (lo..=hi).contains(&slot)))
                .and_then(|r| client::from_redis_value_ref::<Vec<client::Value>>(r.get(2)?).ok())
                .and_then(|master| u16::try_from(int(master.get(1)?)?).ok())
                .ok_or_else(|| format!("slot {slot} has no master"))
        })
        .await
    }

    /// Kills the node on `port` (`SIGKILL`: no goodbye to the cluster).
    pub fn kill(&self, port: u16) {
        self.node(port).stop();
    }

    /// Starts the node on `port` again, with the identity kept in its `nodes.conf`: a killed
    /// master comes back as a replica of the one promoted in its place.
    pub fn restart(&self, port: u16) {
        self.node(port).spawn();
    }

    fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.stop();
            let _ = std::fs::remove_dir_all(&n.dir);
        }
    }
}

impl Node {
    fn new() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("mall-redis-cluster-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("node directory");
        Self {
            port,
            dir,
            running: Mutex::new(None),
        }
    }

    fn spawn(&self) {
        let server = format!(
            "redis-server --port {port} --bind 127.0.0.1 --cluster-enabled yes \
             --cluster-config-file nodes.conf --cluster-node-timeout {NODE_TIMEOUT_MS} \
             --save '' --appendonly no --dir '{dir}'",
            port = self.port,
            dir = self.dir.display()
        );
        // `cat` returns when the pipe closes (this process is gone, or stop() dropped it).
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{server} & node=$!; cat >/dev/null; kill -9 $node"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh and redis-server are installed");
        let lifeline = child.stdin.take().expect("piped stdin");
        *self.running.lock().expect("node") = Some(Running { child, lifeline });
    }

    fn stop(&self) {
        if let Some(mut r) = self.running.lock().expect("node").take() {
            drop(r.lifeline);
            let _ = r.child.wait();
        }
    }

    fn is_running(&self) -> bool {
        self.running.lock().expect("node").is_some()
    }
}

fn free_port() -> u16 {
    // A node's cluster bus listens on its port + 10000, which must be free too.
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

async fn connect(port: u16) -> Result<client::aio::MultiplexedConnection, String> {
    let client = client::Client::open(format!("redis://127.0.0.1:{port}")).map_err(|e| e.to_string())?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())
}

async fn query(port: u16, cmd: &client::Cmd) -> Result<String, String> {
    let mut conn = connect(port).await?;
    cmd.query_async(&mut conn).await.map_err(|e| e.to_string())
}

async fn ping(port: u16) -> Result<(), String> {
    query(port, &client::cmd("PING")).await.map(drop)
}
