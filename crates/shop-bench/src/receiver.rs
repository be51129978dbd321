//! The webhook the `events` scenario delivers to: it answers 503 while the
//! run builds a backlog, then 204 at once, counting what it took.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::http::StatusCode;
use axum::routing::post;
use tokio::net::TcpListener;

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    accepting: Arc<AtomicBool>,
    taken: Arc<AtomicU64>,
}

impl Receiver {
    /// Listening, and refusing every delivery until [`Receiver::accept`].
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/events", listener.local_addr()?);
        let (accepting, taken) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let app = axum::Router::new().route("/events", {
            let (accepting, taken) = (accepting.clone(), taken.clone());
            post(move || {
                let (accepting, taken) = (accepting.clone(), taken.clone());
                async move {
                    if !accepting.load(Ordering::Relaxed) {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    taken.fetch_add(1, Ordering::Relaxed);
                    StatusCode::NO_CONTENT
                }
            })
        });
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        Ok(Self { url, accepting, taken })
    }

    pub fn accept(&self) {
        self.accepting.store(true, Ordering::Relaxed);
    }

    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }
}
