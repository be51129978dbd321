//! HAProxy before a test's instances, configured by `scripts/haproxy.cfg`
//! as `scripts/cluster` configures it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::cluster::Cluster;

pub struct FrontDoor {
    pub port: u16,
    haproxy: Child,
    config: std::path::PathBuf,
}

impl FrontDoor {
    pub async fn start(cluster: &Cluster) -> Self {
        let port = super::free_port();
        let servers: String = (0..cluster.len())
            .map(|i| {
                let address = cluster.url(i, "").trim_start_matches("http://").to_owned();
                format!("  server shop{i} {address} check\n")
            })
            .collect();
        let config = std::env::temp_dir().join(format!("shop-test-haproxy-{port}.cfg"));
        let template = include_str!("../../../../scripts/haproxy.cfg");
        std::fs::write(&config, format!("{}{servers}", template.replace("FRONT_PORT", &port.to_string()))).unwrap();
        let haproxy = Command::new("haproxy")
            .arg("-f")
            .arg(&config)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is installed (scripts/services)");
        let door = Self { port, haproxy, config };
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if client.get(door.url("/health/ready")).send().await.is_ok_and(|answer| answer.status().is_success()) {
                return door;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("HAProxy did not serve on port {port}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        self.haproxy.kill().ok();
        self.haproxy.wait().ok();
        std::fs::remove_file(&self.config).ok();
    }
}
