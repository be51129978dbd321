//! A Redis server of a test's own, on a free port and keeping nothing on
//! disk, for faults the shared one must never suffer: a restart that loses
//! every key.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct OwnRedis {
    pub port: u16,
    server: Child,
}

impl OwnRedis {
    pub async fn start() -> Self {
        let port = super::free_port();
        let redis = Self { port, server: spawn(port) };
        redis.answering().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server and starts an empty one on the same port.
    pub async fn restart_empty(&mut self) {
        self.server.kill().ok();
        self.server.wait().ok();
        self.server = spawn(self.port);
        self.answering().await;
    }

    async fn answering(&self) {
        for _ in 0..100 {
            if let Ok(client) = redis::Client::open(self.url())
                && client.get_multiplexed_async_connection().await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }
}

fn spawn(port: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed")
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.server.kill().ok();
        self.server.wait().ok();
    }
}
