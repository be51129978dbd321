//! Interleavings forced with fail points: a request is held at a named point
//! inside an operation while others run, so each race happens on every run.

#[path = "../support/mod.rs"]
mod support;

mod batch;
mod cluster;
mod fencing;
mod gates;
mod issuance;
mod lifecycle;
mod races;
mod top_sellers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

use serde_json::json;
use support::{TestApp, User};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// A charge sent from its own task, so the test can go on while it is held.
pub fn charge_in_background(
    app: &TestApp,
    user: &User,
    amount: i64,
    key: Option<&str>,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let path = format!("/api/users/{}/points", user.id);
    let body = json!({"amount": amount});
    let request = match key {
        Some(key) => app.post_with_key(&path, &user.token, key, &body),
        None => app.client.post(app.url(&path)).bearer_auth(&user.token).json(&body),
    };
    tokio::spawn(async move { request.send().await.unwrap() })
}

/// Holds the first request that reaches a fail point until released.
pub struct Hold {
    reached: UnboundedReceiver<()>,
    release: mpsc::Sender<()>,
}

impl Hold {
    pub fn first_at(point: &str) -> Self {
        let (reached_tx, reached) = unbounded_channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let first = AtomicBool::new(true);
        fail::cfg_callback(point, move || {
            if first.swap(false, Ordering::SeqCst) {
                reached_tx.send(()).ok();
                // Fail points are synchronous, so the held request blocks its
                // thread; `block_in_place` first hands this worker's queued
                // tasks to another thread, so nothing else is held with it.
                tokio::task::block_in_place(|| release_rx.lock().unwrap().recv().ok());
            }
        })
        .unwrap();
        Self { reached, release }
    }

    /// Waits until a request is held at the point.
    pub async fn reached(&mut self) {
        self.reached.recv().await.expect("a request reaches the fail point");
    }

    pub fn release(&self) {
        self.release.send(()).ok();
    }
}
