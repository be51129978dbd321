//! A Redis Cluster of a test's own — three masters with a replica each, on
//! free ports, keeping no data on disk — for the failovers the shared
//! cluster must never suffer.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uuid::Uuid;

pub struct OwnRedisCluster {
    nodes: Vec<Node>,
    /// Where the nodes keep their cluster state files.
    dir: PathBuf,
}

struct Node {
    port: u16,
    server: Option<Child>,
}

/// A node as `CLUSTER NODES` describes it.
struct Described {
    id: String,
    port: u16,
    master: bool,
    /// The id of its master, for a replica.
    replicates: Option<String>,
    slots: Vec<(u16, u16)>,
}

impl OwnRedisCluster {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("shop-test-cluster-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        // A client port and a cluster bus port for each node, all distinct.
        let ports = super::free_ports(12);
        let nodes: Vec<Node> =
            ports.chunks(2).map(|pair| Node { port: pair[0], server: Some(spawn(&dir, pair[0], pair[1])) }).collect();
        let cluster = Self { nodes, dir };
        for node in &cluster.nodes {
            answering(node.port).await;
        }
        let addresses: Vec<String> = cluster.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        let created = tokio::task::spawn_blocking(move || {
            Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addresses)
                .args(["--cluster-replicas", "1", "--cluster-yes"])
                .stdout(Stdio::null())
                .status()
        })
        .await
        .unwrap()
        .expect("redis-cli is installed");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.settled(Duration::from_secs(20)).await;
        cluster
    }

    /// Seed nodes for `REDIS_CLUSTER_NODES`: every node.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|node| format!("redis://127.0.0.1:{}", node.port)).collect()
    }

    /// Waits until every running node sees every slot served.
    pub async fn settled(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let mut ok = true;
            for node in self.nodes.iter().filter(|node| node.server.is_some()) {
                let info: String = query(node.port, redis::cmd("CLUSTER").arg("INFO")).await.unwrap_or_default();
                ok &= info.contains("cluster_state:ok");
            }
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not settle within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The port of the master serving `key`, and of its replica.
    pub async fn master_and_replica_of(&self, key: &str) -> (u16, u16) {
        let alive = self.nodes.iter().find(|node| node.server.is_some()).unwrap().port;
        let slot: u16 = query(alive, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await.unwrap();
        let nodes: String = query(alive, redis::cmd("CLUSTER").arg("NODES")).await.unwrap();
        let nodes: Vec<Described> = nodes.lines().map(describe).collect();
        let master = nodes
            .iter()
            .find(|node| node.master && node.slots.iter().any(|(from, to)| (*from..=*to).contains(&slot)))
            .expect("a master serves the slot");
        let replica = nodes
            .iter()
            .find(|node| node.replicates.as_deref() == Some(master.id.as_str()))
            .expect("the master has a replica");
        (master.port, replica.port)
    }

    /// `CLUSTER FAILOVER FORCE` on the replica of `key`'s master: the
    /// replica takes over at once, without waiting for its master to agree.
    pub async fn force_failover_of(&self, key: &str) -> u16 {
        let (_, replica) = self.master_and_replica_of(key).await;
        let _: String = query(replica, redis::cmd("CLUSTER").arg("FAILOVER").arg("FORCE")).await.unwrap();
        replica
    }

    /// Kills `key`'s master; its replica is elected once the others have
    /// missed it for the node timeout.
    pub async fn kill_master_of(&mut self, key: &str) -> u16 {
        let (master, _) = self.master_and_replica_of(key).await;
        let node = self.nodes.iter_mut().find(|node| node.port == master).unwrap();
        if let Some(mut server) = node.server.take() {
            server.kill().ok();
            server.wait().ok();
        }
        master
    }

    /// Whether `port` is a master now.
    pub async fn is_master(&self, port: u16) -> bool {
        let role: Vec<redis::Value> = query(port, &redis::cmd("ROLE")).await.unwrap_or_default();
        matches!(role.first(), Some(redis::Value::BulkString(role)) if role == b"master")
    }
}

fn spawn(dir: &std::path::Path, port: u16, bus: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--cluster-enabled", "yes", "--cluster-port", &bus.to_string()])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf"), "--cluster-node-timeout", "1000"])
        // A replica fails over however long ago it last heard its master
        // (by default one idle for long is deemed too stale to).
        .args(["--cluster-replica-validity-factor", "0"])
        .args(["--dir", dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed")
}

async fn query<T: redis::FromRedisValue>(port: u16, command: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    // The client's default half-second reply wait is too short for a node
    // busy forming a cluster on a loaded machine.
    let patient = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let mut redis = client.get_multiplexed_async_connection_with_config(&patient).await?;
    command.query_async(&mut redis).await
}

async fn answering(port: u16) {
    for _ in 0..100 {
        if query::<String>(port, &redis::cmd("PING")).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("redis-server did not start on port {port}");
}

/// `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <state> <slot>…`
fn describe(line: &str) -> Described {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = fields[1].split(['@', ',']).next().unwrap().rsplit(':').next().unwrap().parse().unwrap();
    let slots = fields
        .iter()
        .skip(8)
        .filter(|range| !range.starts_with('['))
        .map(|range| match range.split_once('-') {
            Some((from, to)) => (from.parse().unwrap(), to.parse().unwrap()),
            None => (range.parse().unwrap(), range.parse().unwrap()),
        })
        .collect();
    Described {
        id: fields[0].to_owned(),
        port,
        master: fields[2].split(',').any(|flag| flag == "master") && !fields[2].contains("fail"),
        replicates: (fields[3] != "-").then(|| fields[3].to_owned()),
        slots,
    }
}

impl Drop for OwnRedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut server) = node.server.take() {
                server.kill().ok();
                server.wait().ok();
            }
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
