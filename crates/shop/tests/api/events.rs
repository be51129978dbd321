//! Paid and cancelled orders delivered to a webhook: at least once, in
//! order per order, the same signed bytes on every attempt, however the
//! receiver behaves.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::nats::OwnNats;
use crate::support::receiver::{Received, Receiver};
use crate::support::{TestApp, User, assert_problem, spawn_app_with};

const KEY: &[u8] = b"a test signing key";

async fn app_delivering_to(receiver: &Receiver, configure: impl FnOnce(&mut shop::config::Config)) -> TestApp {
    let url = receiver.url.clone();
    spawn_app_with(|config| {
        config.events.data_platform_url = Some(url);
        config.events.data_platform_secret = Some(format!("whsec_{}", BASE64.encode(KEY)));
        configure(config);
    })
    .await
}

/// Orders placed and paid by one user; every other one then cancelled
/// (refunded): one or two events each. Returns how many events.
async fn paid_orders(app: &TestApp, user: &User, count: usize) -> usize {
    let product = app.create_product("lamp", 5000, 1000).await;
    app.charge(user, 1_000_000).await;
    let mut events = 0;
    for i in 0..count {
        let order = app.order_id(user, &[(product, 1)], None).await;
        assert_eq!(app.pay(user, order).await.status(), StatusCode::CREATED);
        events += 1;
        if i % 2 == 0 {
            let cancelled = app.post(&format!("/api/orders/{order}/cancel"), Some(&user.token), json!({})).await;
            assert_eq!(cancelled.status(), StatusCode::OK);
            events += 1;
        }
    }
    events
}

/// Waits until no event is pending, or `within` has passed.
async fn settle(app: &TestApp, within: Duration) {
    wait_for_events(app, "PENDING", 0, within).await;
}

/// Waits until `count` events have `status`, or `within` has passed.
async fn wait_for_events(app: &TestApp, status: &str, count: i64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let found: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status = $1")
            .bind(status)
            .fetch_one(&app.db)
            .await
            .unwrap();
        if found == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn header<'a>(received: &'a Received, name: &str) -> &'a str {
    received.headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default()
}

/// Every receipt is signed over its own timestamp and the same bytes.
fn assert_signed(received: &Received) {
    let (id, timestamp) = (header(received, "webhook-id"), header(received, "webhook-timestamp"));
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
    mac.update(format!("{id}.{timestamp}.{}", received.body).as_bytes());
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    assert_eq!(header(received, "webhook-signature"), expected, "a signature the secret verifies");
    assert_eq!(header(received, "idempotency-key"), id);
    let body: Value = serde_json::from_str(&received.body).unwrap();
    assert_eq!(body["eventId"].as_str(), Some(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_arrives_in_order_with_the_same_signed_bytes_though_the_receiver_was_down_then_flaky() {
    let receiver = Receiver::down().await;
    let app = app_delivering_to(&receiver, |_| {}).await;
    let user = app.new_user().await;
    let events = paid_orders(&app, &user, 10).await;
    // Down for ten seconds: refused connections, retried.
    tokio::time::sleep(Duration::from_secs(10)).await;
    receiver.fail_every(Some(3));
    receiver.listen().await;
    settle(&app, Duration::from_secs(30)).await;

    let statuses: Vec<(String, i32)> =
        sqlx::query_as("SELECT status, attempts FROM outbox_events").fetch_all(&app.db).await.unwrap();
    assert_eq!(statuses.len(), events);
    assert!(statuses.iter().all(|(status, _)| status == "DELIVERED"), "{statuses:?}");
    assert!(statuses.iter().any(|(_, attempts)| *attempts > 1), "some were retried");

    let received = receiver.received();
    assert!(received.iter().any(|r| !r.accepted), "the receiver failed some");
    let mut bodies: HashMap<&str, &str> = HashMap::new();
    // Per order: the sequence last accepted, which a later receipt must not precede.
    let mut accepted: HashMap<i64, i64> = HashMap::new();
    for receipt in &received {
        assert_signed(receipt);
        let id = header(receipt, "webhook-id");
        assert_eq!(*bodies.entry(id).or_insert(&receipt.body), receipt.body, "the same bytes on every attempt");
        let body: Value = serde_json::from_str(&receipt.body).unwrap();
        let (order, sequence) = (body["orderId"].as_i64().unwrap(), body["sequence"].as_i64().unwrap());
        let last = accepted.get(&order).copied().unwrap_or(0);
        assert!(sequence <= last + 1, "order {order}: event {sequence} sent before {} was delivered", last + 1);
        if receipt.accepted {
            accepted.insert(order, last.max(sequence));
        }
    }
    assert_eq!(bodies.len(), events, "every event arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_fails_after_its_attempts_holds_back_its_order_and_comes_back_when_retried() {
    let receiver = Receiver::up().await;
    receiver.fail_every(Some(1));
    let app = app_delivering_to(&receiver, |config| config.events.event_max_attempts = 3).await;
    let user = app.new_user().await;
    paid_orders(&app, &user, 1).await;
    wait_for_events(&app, "FAILED", 1, Duration::from_secs(10)).await;

    let events: Vec<(String, i32, String, i32, Option<String>)> = sqlx::query_as(
        "SELECT event_id::text, sequence, status, attempts, last_error FROM outbox_events ORDER BY sequence",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!((events[0].2.as_str(), events[0].3), ("FAILED", 3), "{events:?}");
    assert!(events[0].4.as_deref().is_some_and(|error| error.contains("500")), "{events:?}");
    assert_eq!((events[1].2.as_str(), events[1].3), ("PENDING", 0), "the order's later event waits");
    assert!(receiver.received().iter().all(|r| header(r, "webhook-id") == events[0].0));

    let admin = app.admin().await;
    let failed: Value = app.get("/api/admin/outbox?status=FAILED", Some(&admin.token)).await.json().await.unwrap();
    assert_eq!(failed["items"][0]["eventId"], events[0].0.as_str());
    assert_eq!(
        (failed["items"][0]["type"].as_str(), failed["items"][0]["attempts"].as_i64()),
        (Some("ORDER_PAID"), Some(3))
    );
    let retry = format!("/api/admin/outbox/{}/retry", events[0].0);
    assert_problem(app.get("/api/admin/outbox", Some(&user.token)).await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    assert_problem(app.post(&retry, Some(&user.token), json!({})).await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let bad = app.get("/api/admin/outbox?status=LOST", Some(&admin.token)).await;
    assert_problem(bad, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;

    receiver.fail_every(None);
    assert_eq!(app.post(&retry, Some(&admin.token), json!({})).await.status(), StatusCode::NO_CONTENT);
    wait_for_events(&app, "DELIVERED", 2, Duration::from_secs(10)).await;
    let delivered: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status = 'DELIVERED'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(delivered, 2, "retried, then the order's next event followed");
    assert_problem(app.post(&retry, Some(&admin.token), json!({})).await, StatusCode::CONFLICT, "CONFLICT").await;
    let unknown = format!("/api/admin/outbox/{}/retry", uuid::Uuid::new_v4());
    assert_problem(app.post(&unknown, Some(&admin.token), json!({})).await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
}

const NATS: &str = "nats://127.0.0.1:4222";

/// `SHOP_EVENTS`, shared by every run on this server: a test reads it from
/// where it stood when the test began, and counts only its own events.
struct EventStream {
    stream: async_nats::jetstream::stream::Stream,
    first: u64,
}

impl EventStream {
    async fn from_now() -> Self {
        let jetstream = async_nats::jetstream::new(async_nats::connect(NATS).await.unwrap());
        let config = async_nats::jetstream::stream::Config {
            name: "SHOP_EVENTS".into(),
            subjects: vec!["shop.events.>".into()],
            max_age: Duration::from_secs(7 * 86_400),
            ..Default::default()
        };
        let mut stream = jetstream.get_or_create_stream(config).await.unwrap();
        let first = stream.info().await.unwrap().state.last_sequence + 1;
        Self { stream, first }
    }

    /// How many times each of the database's events was published since.
    async fn copies_of_events_in(&mut self, db: &sqlx::PgPool) -> HashMap<String, usize> {
        let ours: Vec<String> =
            sqlx::query_scalar("SELECT event_id::text FROM outbox_events").fetch_all(db).await.unwrap();
        let last = self.stream.info().await.unwrap().state.last_sequence;
        let mut seen: HashMap<String, usize> = HashMap::new();
        for sequence in self.first..=last {
            let Ok(message) = self.stream.get_raw_message(sequence).await else { continue };
            let id = message.headers.get("Nats-Msg-Id").map(|id| id.to_string()).unwrap_or_default();
            if ours.contains(&id) {
                *seen.entry(id.clone()).or_default() += 1;
                let body: Value = serde_json::from_slice(&message.payload).unwrap();
                assert_eq!(body["eventId"].as_str(), Some(id.as_str()));
                assert_eq!(message.subject.as_str(), format!("shop.events.{}", body["type"].as_str().unwrap()));
            }
        }
        seen
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jetstream_holds_every_event_once_even_when_a_publish_is_repeated() {
    let mut stream = EventStream::from_now().await;
    let app = spawn_app_with(|config| config.events.events_nats_url = Some(NATS.into())).await;
    let user = app.new_user().await;
    let events = paid_orders(&app, &user, 3).await;
    settle(&app, Duration::from_secs(10)).await;
    // As if the first event's acknowledgement had been lost: published again.
    sqlx::query(
        "UPDATE outbox_events SET status = 'PENDING', delivered_to = '{}', next_attempt_at = now()
         WHERE id = (SELECT min(id) FROM outbox_events)",
    )
    .execute(&app.db)
    .await
    .unwrap();
    settle(&app, Duration::from_secs(10)).await;
    let attempts: i64 =
        sqlx::query_scalar("SELECT max(attempts)::bigint FROM outbox_events").fetch_one(&app.db).await.unwrap();
    assert_eq!(attempts, 2, "published twice");

    let seen = stream.copies_of_events_in(&app.db).await;
    assert_eq!(seen.len(), events, "every event is in the stream");
    assert!(seen.values().all(|count| *count == 1), "each once: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_naming_different_sinks_deliver_every_event_to_each_until_a_sink_is_retired() {
    let mut stream = EventStream::from_now().await;
    let receiver = Receiver::up().await;
    // One instance delivers to the webhook only, the other to the webhook
    // and JetStream; the first records every event.
    let webhook_only = app_delivering_to(&receiver, |_| {}).await;
    let mut both = webhook_only.another_instance_with(|config| config.events.events_nats_url = Some(NATS.into())).await;
    // Each relay registers its sinks as it starts running.
    let mut registered = 0;
    for _ in 0..100 {
        registered = sqlx::query_scalar("SELECT count(*) FROM event_sinks").fetch_one(&webhook_only.db).await.unwrap();
        if registered == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(registered, 2_i64, "webhook and jetstream registered");
    let user = webhook_only.new_user().await;
    let events = paid_orders(&webhook_only, &user, 10).await;
    settle(&webhook_only, Duration::from_secs(20)).await;
    let seen = stream.copies_of_events_in(&webhook_only.db).await;
    assert_eq!(seen.len(), events, "every event reached JetStream, whichever relay took it");
    let at_webhook: std::collections::HashSet<String> =
        receiver.received().iter().filter(|r| r.accepted).map(|r| header(r, "webhook-id").to_owned()).collect();
    assert_eq!(at_webhook.len(), events, "and the webhook");

    // With the JetStream instance gone, a new event reaches the webhook and
    // waits for a relay that has JetStream.
    both.begin_shutdown();
    both.stopped().await;
    let order = webhook_only.order_id(&user, &[(webhook_only.create_product("desk", 5000, 10).await, 1)], None).await;
    assert_eq!(webhook_only.pay(&user, order).await.status(), StatusCode::CREATED);
    let waiting = || async {
        sqlx::query_as::<_, (String, Vec<String>)>("SELECT status, delivered_to FROM outbox_events WHERE order_id = $1")
            .bind(order)
            .fetch_one(&webhook_only.db)
            .await
            .unwrap()
    };
    for _ in 0..100 {
        if !waiting().await.1.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(waiting().await, ("PENDING".to_owned(), vec!["webhook".to_owned()]), "at the webhook only");
    let listed = sinks_command(&webhook_only, &[]);
    assert!(listed.lines().any(|line| line.starts_with("jetstream") && line.ends_with(" 1")), "{listed}");
    assert!(listed.lines().any(|line| line.starts_with("webhook") && line.ends_with(" 0")), "{listed}");

    // Retired, JetStream is no longer awaited: the event is delivered.
    assert_eq!(sinks_command(&webhook_only, &["retire", "jetstream"]).trim(), "retired jetstream");
    settle(&webhook_only, Duration::from_secs(10)).await;
    assert_eq!(waiting().await, ("DELIVERED".to_owned(), vec!["webhook".to_owned()]));
    let listed = sinks_command(&webhook_only, &[]);
    assert!(!listed.contains("jetstream"), "{listed}");
}

/// Runs `shop sinks ARGS` against the app's database; what it printed.
fn sinks_command(app: &TestApp, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shop"))
        .arg("sinks")
        .args(args)
        .env("DATABASE_URL", &app.config.database.database_url)
        .env("DATABASE_MAX_CONNECTIONS", "1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn a_webhook_url_that_is_not_http_is_refused_at_start() {
    for url in ["not a url", "ftp://127.0.0.1/events"] {
        let mut config = crate::support::test_config();
        config.events.data_platform_url = Some(url.to_owned());
        let error = shop::startup::Server::build(&config).await.err().expect("refused");
        assert!(format!("{error:#}").contains("DATA_PLATFORM_URL"), "{error:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_with_no_sink_in_common_feed_each_sink_from_the_one_that_has_it() {
    let nats = OwnNats::start().await;
    let receiver = Receiver::up().await;
    let webhook_only = app_delivering_to(&receiver, |_| {}).await;
    let url = nats.url.clone();
    let jetstream_only = webhook_only
        .another_instance_with(|config| {
            config.events.data_platform_url = None;
            config.events.events_nats_url = Some(url);
        })
        .await;
    let user = webhook_only.new_user().await;
    let events = paid_orders(&jetstream_only, &user, 6).await;
    settle(&webhook_only, Duration::from_secs(20)).await;

    let at_webhook: std::collections::HashSet<String> =
        receiver.received().iter().filter(|r| r.accepted).map(|r| header(r, "webhook-id").to_owned()).collect();
    assert_eq!(at_webhook.len(), events, "every event at the webhook");
    let mut stream = nats.jetstream().await.get_stream("SHOP_EVENTS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, events as u64, "and each once in the stream");
    let delivered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox_events WHERE status = 'DELIVERED' AND delivered_to @> '{webhook,jetstream}'",
    )
    .fetch_one(&webhook_only.db)
    .await
    .unwrap();
    assert_eq!(delivered, events as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stream_remembers_ids_as_long_as_retries_wait_and_comes_back_if_deleted() {
    let nats = OwnNats::start().await;
    let jetstream = nats.jetstream().await;
    // Found with JetStream's default two minutes: widened to twice the longest retry delay.
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "SHOP_EVENTS".into(),
            subjects: vec!["shop.events.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let url = nats.url.clone();
    let app = spawn_app_with(|config| {
        config.events.events_nats_url = Some(url);
        config.events.event_retry_max_ms = 300_000;
    })
    .await;
    let user = app.new_user().await;
    let first = paid_orders(&app, &user, 1).await;
    settle(&app, Duration::from_secs(10)).await;
    let mut stream = jetstream.get_stream("SHOP_EVENTS").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.duplicate_window, Duration::from_secs(600));
    assert_eq!(info.state.messages, first as u64);

    // Deleted while the shop runs: the next publish creates it again.
    jetstream.delete_stream("SHOP_EVENTS").await.unwrap();
    let later = paid_orders(&app, &user, 2).await;
    settle(&app, Duration::from_secs(10)).await;
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status <> 'DELIVERED'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(failed, 0, "every event delivered");
    let mut stream = jetstream.get_stream("SHOP_EVENTS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, later as u64);
}
