//! What an operator configures around the API: its own metrics listener,
//! CORS, a deadline on every request, connections that must speak in time
//! and a cap on how many are open, and a shutdown that lets requests in
//! flight finish.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::pg_proxy::{PgProxy, Statement};
use crate::support::{assert_problem, spawn_app_behind, spawn_app_with};

#[tokio::test]
async fn metrics_addr_serves_metrics_there_and_not_on_the_api() {
    let port = crate::support::free_port();
    let app = spawn_app_with(|config| config.metrics_addr = Some(format!("127.0.0.1:{port}").parse().unwrap())).await;
    app.get("/api/products", None).await;
    assert_problem(app.get("/metrics", None).await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let scraped = app.client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    let text = scraped.text().await.unwrap();
    assert!(text.contains(r#"route="/api/products""#), "{text}");
    let other = app.client.get(format!("http://127.0.0.1:{port}/api/products")).send().await.unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND, "the metrics listener serves nothing else");
}

#[tokio::test]
async fn cors_answers_the_allowed_origins_only_and_nothing_when_unset() {
    let app = spawn_app_with(|config| config.cors_allowed_origins = vec!["https://shop.example".into()]).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(Method::OPTIONS, app.url("/api/orders"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type, idempotency-key")
            .send()
    };
    let allowed = preflight("https://shop.example").await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://shop.example");
    let headers = allowed.headers()["access-control-allow-headers"].to_str().unwrap().to_owned();
    assert!(headers.contains("authorization") && headers.contains("idempotency-key"), "{headers}");
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(!refused.headers().contains_key("access-control-allow-origin"));
    let simple =
        app.client.get(app.url("/api/products")).header("origin", "https://shop.example").send().await.unwrap();
    assert_eq!(simple.headers()["access-control-allow-origin"], "https://shop.example");
    assert!(simple.headers()["access-control-expose-headers"].to_str().unwrap().contains("retry-after"));

    let unset = spawn_app_with(|_| {}).await;
    let plain =
        unset.client.get(unset.url("/api/products")).header("origin", "https://shop.example").send().await.unwrap();
    assert!(!plain.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_past_its_deadline_is_503_and_a_change_keeps_its_key() {
    let proxy = PgProxy::start().await;
    let app = spawn_app_behind(&proxy, |config| config.request_timeout_ms = 300).await;
    let user = app.new_user().await;
    proxy.delay_reply_to(Statement::Containing("FROM products".into()), Duration::from_secs(2), 1);
    let started = std::time::Instant::now();
    let read = app.get("/api/products", None).await;
    assert!(started.elapsed() < Duration::from_millis(1500), "answered at its deadline: {:?}", started.elapsed());
    assert!(read.headers().contains_key("retry-after"));
    assert_problem(read, StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE").await;

    // A change past its deadline runs on: its key replays what it did.
    proxy.delay_reply_to(Statement::Commit, Duration::from_secs(1), 1);
    let charge = format!("/api/users/{}/points", user.id);
    let body = json!({"amount": 5000});
    let late = app.post_with_key(&charge, &user.token, "slow-charge", &body).send().await.unwrap();
    assert_problem(late, StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let replayed = app.post_with_key(&charge, &user.token, "slow-charge", &body).send().await.unwrap();
    assert_eq!(replayed.status(), StatusCode::OK);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (5000, 5000), "charged once");
}

/// Whether the server has closed the connection (reads end or fail).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_that_do_not_send_a_whole_request_in_time_are_closed() {
    let app = spawn_app_with(|_| {}).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut silent = TcpStream::connect(&address).await.unwrap();
    let mut half = TcpStream::connect(&address).await.unwrap();
    half.write_all(b"GET /api/products HTTP/1.1\r\nhost: shop\r\n").await.unwrap();
    let mut trickle = TcpStream::connect(&address).await.unwrap();
    trickle.write_all(b"GET /api/products HTTP/1.1\r\n").await.unwrap();
    let mut idle = TcpStream::connect(&address).await.unwrap();
    idle.write_all(b"GET /health/live HTTP/1.1\r\nhost: shop\r\n\r\n").await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        trickle.write_all(b"x-slow: one more line\r\n").await.ok();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (what, stream) in [("silent", &mut silent), ("half", &mut half), ("trickle", &mut trickle), ("idle", &mut idle)]
    {
        assert!(closed(stream).await, "the {what} connection is closed");
    }
    assert_eq!(app.get("/health/live", None).await.status(), StatusCode::OK, "and others are served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_past_the_cap_wait_until_one_closes() {
    let app = spawn_app_with(|config| config.http_max_connections = 4).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        // Answered: the server has taken this connection.
        stream.write_all(b"GET /health/live HTTP/1.1\r\nhost: shop\r\n\r\n").await.unwrap();
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200");
        held.push(stream);
    }
    // A fifth connects (the kernel's backlog takes it) but is not served...
    let mut fifth = TcpStream::connect(&address).await.unwrap();
    fifth.write_all(b"GET /health/live HTTP/1.1\r\nhost: shop\r\n\r\n").await.unwrap();
    let mut answer = [0u8; 12];
    let waiting = tokio::time::timeout(Duration::from_millis(500), fifth.read_exact(&mut answer)).await;
    assert!(waiting.is_err(), "served past the cap");
    // ...until one of the four closes.
    held.pop();
    tokio::time::timeout(Duration::from_secs(2), fifth.read_exact(&mut answer)).await.expect("served").unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_lets_a_request_in_flight_finish() {
    let proxy = PgProxy::start().await;
    let mut app = spawn_app_behind(&proxy, |_| {}).await;
    let user = app.new_user().await;
    proxy.delay_reply_to(Statement::Commit, Duration::from_millis(800), 1);
    let charge = app
        .client
        .post(app.url(&format!("/api/users/{}/points", user.id)))
        .bearer_auth(&user.token)
        .json(&json!({"amount": 5000}))
        .send();
    let stop = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        app.begin_shutdown();
    };
    let (charged, ()) = tokio::join!(charge, stop);
    assert_eq!(charged.unwrap().status(), StatusCode::OK);
    app.stopped().await;
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (5000, 5000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_that_does_not_arrive_in_time_is_503_and_loses_its_connection() {
    let app = spawn_app_with(|config| config.request_timeout_ms = 500).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut slow = TcpStream::connect(&address).await.unwrap();
    let head = "POST /api/auth/register HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n{";
    slow.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await.expect("closed in time").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    // A body declared too large is refused before it is read.
    let mut large = TcpStream::connect(&address).await.unwrap();
    let head = "POST /api/auth/register HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\ncontent-length: 10000000\r\n\r\n";
    large.write_all(head.as_bytes()).await.unwrap();
    let mut answer = [0u8; 64];
    let read =
        tokio::time::timeout(Duration::from_millis(400), large.read(&mut answer)).await.expect("at once").unwrap();
    assert!(String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 413"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_shutdown_begins_readiness_says_draining_while_requests_are_still_served() {
    let mut app = spawn_app_with(|config| config.shutdown_grace_secs = 10).await;
    assert_eq!(app.get("/health/ready", None).await.status(), StatusCode::OK);
    let started = std::time::Instant::now();
    app.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A fresh client: a new connection, still taken during the drain.
    let client = crate::support::http_client().build().unwrap();
    let ready = client.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json::<serde_json::Value>().await.unwrap()["status"], "draining");
    assert_eq!(client.get(app.url("/api/products")).send().await.unwrap().status(), StatusCode::OK);
    app.stopped().await;
    assert!(started.elapsed() < Duration::from_secs(10), "within the grace: {:?}", started.elapsed());
}

#[tokio::test]
async fn cors_preflights_carry_the_common_headers_and_origins_must_be_origins() {
    let app = spawn_app_with(|config| config.cors_allowed_origins = vec!["*".into()]).await;
    let preflight = app
        .client
        .request(Method::OPTIONS, app.url("/api/orders"))
        .header("origin", "https://anywhere.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "traceparent")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    assert_eq!(preflight.headers()["x-content-type-options"], "nosniff");
    assert!(preflight.headers().contains_key("x-request-id"));
    assert!(preflight.headers()["access-control-allow-headers"].to_str().unwrap().contains("traceparent"));
    for origin in ["https://shop.example/", "shop.example", "https://shop.example/path"] {
        let mut config = crate::support::test_config();
        config.cors_allowed_origins = vec![origin.into()];
        let refused = shop::startup::Server::build(&config).await.err().expect("refused");
        assert!(format!("{refused:#}").contains("CORS_ALLOWED_ORIGINS"), "{refused:#}");
    }
}
