//! A webhook receiver for the event tests: it records every request it
//! gets, and can be down (not yet listening), slow, or fail a share of
//! requests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio::net::TcpListener;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: String,
    /// Whether it was answered 2xx.
    pub accepted: bool,
}

#[derive(Default)]
struct Behaviour {
    /// Share of requests answered 500, decided by a counter: every n-th.
    fail_every: Option<usize>,
    delay: Duration,
    seen: usize,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    address: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl Receiver {
    /// A receiver with an address, not yet listening: requests to it are
    /// refused until [`Receiver::listen`].
    pub async fn down() -> Self {
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = probe.local_addr().unwrap();
        drop(probe);
        Self { url: format!("http://{address}/events"), address, received: Arc::default(), behaviour: Arc::default() }
    }

    pub async fn up() -> Self {
        let receiver = Self::down().await;
        receiver.listen().await;
        receiver
    }

    pub async fn listen(&self) {
        let listener = TcpListener::bind(self.address).await.unwrap();
        let (received, behaviour) = (self.received.clone(), self.behaviour.clone());
        let app = axum::Router::new().route(
            "/events",
            post(move |headers: HeaderMap, body: Bytes| {
                let (received, behaviour) = (received.clone(), behaviour.clone());
                async move {
                    let (fail, delay) = {
                        let mut behaviour = behaviour.lock().unwrap();
                        behaviour.seen += 1;
                        let fail = behaviour.fail_every.is_some_and(|n| behaviour.seen % n == 0);
                        (fail, behaviour.delay)
                    };
                    tokio::time::sleep(delay).await;
                    let body = String::from_utf8(body.to_vec()).unwrap();
                    received.lock().unwrap().push(Received { headers, body, accepted: !fail });
                    if fail { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::NO_CONTENT }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    }

    /// Answers 500 to every `n`-th request from now on (`None`: to none).
    pub fn fail_every(&self, n: Option<usize>) {
        self.behaviour.lock().unwrap().fail_every = n;
    }

    pub fn delay(&self, delay: Duration) {
        self.behaviour.lock().unwrap().delay = delay;
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}
