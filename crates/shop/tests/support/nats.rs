//! A NATS server of a test's own, on a free port with its own store, for
//! tests that do to JetStream what the shared server must not suffer.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct OwnNats {
    pub url: String,
    child: Child,
    store: std::path::PathBuf,
}

impl OwnNats {
    pub async fn start() -> Self {
        let port = super::free_port();
        let store = std::env::temp_dir().join(format!("shop-test-nats-{}", uuid::Uuid::new_v4().simple()));
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed");
        // Stopped by `drop` however this ends.
        let nats = Self { url: format!("nats://127.0.0.1:{port}"), child, store };
        for _ in 0..100 {
            if async_nats::connect(&nats.url).await.is_ok() {
                return nats;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server did not start on {}", nats.url);
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(async_nats::connect(&self.url).await.unwrap())
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        std::fs::remove_dir_all(&self.store).ok();
    }
}
