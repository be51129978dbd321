//! The accept loop. `axum::serve` sets no header-read timeout and takes every
//! connection offered, so a client sending half a request (or nothing) holds
//! a connection for good; this loop serves HTTP/1.1 through hyper with
//! limits on both:
//! - every connection must send a complete request head within
//!   `HEADER_READ_TIMEOUT` of opening, and of finishing its previous
//!   request (which bounds idle keep-alive connections too);
//! - at most `max_connections` (HTTP_MAX_CONNECTIONS) are open at once;
//!   more wait in the kernel's backlog.
//!
//! Slow bodies and slow handlers are bounded by `REQUEST_TIMEOUT_MS` (see
//! `http::request_deadline`). TLS and HTTP/2 end at the proxy in front.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Serves `router` on at most `max_connections` at once until `shutdown`,
/// then lets the requests in flight finish (closing idle connections at
/// once) for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors, or a connection reset before it
                // was taken: wait a moment rather than spin.
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        stream.set_nodelay(true).ok();
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            // What `into_make_service_with_connect_info` would add.
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(client));
            let response = router.clone().oneshot(request.map(axum::body::Body::new));
            async move { Ok::<_, Infallible>(response.await.unwrap_or_else(|never| match never {})) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            connection.await.ok();
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(?grace, "requests still running after the shutdown grace period; closing their connections");
    }
    Ok(())
}
