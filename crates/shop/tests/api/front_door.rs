//! The topology of `scripts/cluster`: HAProxy before three instances, and a
//! PgBouncer in transaction pooling mode between them and PostgreSQL. A
//! coupon drop and an order rush go through it while an instance is
//! killed: HAProxy stops sending to it within its health checks, requests
//! it had are retried by their clients (orders under their Idempotency-Key),
//! and every invariant holds. (The history checker runs through it too:
//! `history::a_random_history_through_haproxy_and_pgbouncer_…`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Barrier;

use crate::support::cluster::Cluster;
use crate::support::front_door::FrontDoor;
use crate::support::pgbouncer::PgBouncer;
use crate::support::{admin_of, bulk_users, invariants};

const COUPONS: i64 = 100;
const STOCK: i64 = 50;
const USERS: usize = 300;

/// A final answer: its status and problem code, after retrying what a
/// client retries (no answer, 502 from the proxy, 503, a key still in use);
/// and how many times it was retried.
async fn until_final(send: impl Fn() -> reqwest::RequestBuilder) -> (StatusCode, String, u32) {
    let started = Instant::now();
    for retries in 0.. {
        if let Ok(answer) = send().timeout(Duration::from_secs(10)).send().await {
            let status = answer.status();
            let body: Value = answer.json().await.unwrap_or(Value::Null);
            let code = body["code"].as_str().unwrap_or_default().to_owned();
            let retry = matches!(status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE)
                || code == "IDEMPOTENCY_KEY_IN_USE";
            assert!(status != StatusCode::INTERNAL_SERVER_ERROR, "{body}");
            if !retry {
                return (status, code, retries);
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never answered for good");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!("the loop returns")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drop_and_a_rush_through_haproxy_and_pgbouncer_survive_an_instance_killed_mid_run() {
    // A grant held by the killed instance is settled within 2 s and a third.
    let environment = [("REQUEST_TIMEOUT_MS", "3000"), ("GATE_RECONCILE_AFTER_MS", "2000")];
    let bouncer = PgBouncer::start().await;
    let cluster = Cluster::start_pooled(&bouncer.url(), 3, &environment, |_| Vec::new()).await;
    let door = FrontDoor::start(&cluster).await;
    let admin = admin_of(&cluster.db).await;
    let campaign = json!({"code": "FRONT", "kind": "FIXED", "value": 1000, "totalQuantity": COUPONS, "validDays": 7});
    let created = cluster.client.post(door.url("/api/admin/coupon-types")).bearer_auth(&admin.token).json(&campaign);
    assert_eq!(created.send().await.unwrap().status(), StatusCode::CREATED);
    let product = json!({"name": "mug", "price": 1000, "stock": STOCK, "category": "kitchen"});
    let created = cluster.client.post(door.url("/api/admin/products")).bearer_auth(&admin.token).json(&product);
    let product: Value = created.send().await.unwrap().json().await.unwrap();
    let product = product["id"].as_i64().unwrap();
    let users = bulk_users(&cluster.db, USERS).await;

    let barrier = Arc::new(Barrier::new(USERS + 1));
    let shoppers = join_all(users.iter().enumerate().map(|(i, user)| {
        let (barrier, client, door) = (barrier.clone(), &cluster.client, &door);
        async move {
            barrier.wait().await;
            tokio::time::sleep(Duration::from_millis(3) * i as u32).await;
            let coupon = until_final(|| {
                client
                    .post(door.url("/api/coupons/issue"))
                    .bearer_auth(&user.token)
                    .json(&json!({"couponType": "FRONT"}))
            })
            .await;
            let order = json!({"items": [{"productId": product, "quantity": 1}]});
            let order = until_final(|| {
                let request = client.post(door.url("/api/orders")).bearer_auth(&user.token);
                request.header("Idempotency-Key", format!("order-{}", user.id)).json(&order)
            })
            .await;
            (user.id, coupon, order)
        }
    }));
    let kill = async {
        barrier.wait().await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        cluster.kill(0);
    };
    let (answers, ()) = tokio::join!(shoppers, kill);

    // Coupons: exactly the campaign, to those told so (a retry told
    // ALREADY_ISSUED holds the one its first attempt got).
    let mut told: Vec<i64> = answers
        .iter()
        .filter(|(_, (status, code, _), _)| *status == StatusCode::CREATED || code == "COUPON_ALREADY_ISSUED")
        .map(|(id, _, _)| *id)
        .collect();
    for (_, (status, code, _), _) in &answers {
        assert!(*status == StatusCode::CREATED || code.starts_with("COUPON_"), "{status} {code}");
    }
    let mut holding: Vec<i64> = sqlx::query_scalar("SELECT user_id FROM coupons").fetch_all(&cluster.db).await.unwrap();
    told.sort_unstable();
    holding.sort_unstable();
    assert_eq!(holding.len() as i64, COUPONS);
    assert_eq!(holding, told, "those told they hold a coupon, and no one else");
    // Orders: the stock sold exactly, one order per buyer told 201.
    let placed = answers.iter().filter(|(_, _, (status, _, _))| *status == StatusCode::CREATED).count() as i64;
    let retried = answers.iter().filter(|(_, (.., coupon), (.., order))| coupon + order > 0).count();
    eprintln!("{retried} of {USERS} shoppers retried a request after the kill");
    for (_, _, (status, code, _)) in &answers {
        assert!(*status == StatusCode::CREATED || code == "OUT_OF_STOCK", "{status} {code}");
    }
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&cluster.db).await.unwrap();
    assert_eq!((placed, orders, cluster.stock(product).await), (STOCK, STOCK, 0));
    invariants::all(&cluster.db).await;
    assert!(bouncer.served(&cluster.db).await, "the instances' statements went through PgBouncer");
}
