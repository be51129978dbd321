//! A randomized history checker in the spirit of Jepsen's bank test: clients
//! run a seeded random mix of sign-ups, charges, coupon issues, orders,
//! payments and cancellations (orders also expire) against three instances,
//! with random pauses, and record every answer. Afterwards every invariant of
//! API.md is checked, and every answer against the database: each success
//! left exactly its record, each refusal left nothing.
//!
//! The seed (and the strategies it picks) is printed; to replay a run or go
//! longer:
//!
//! ```sh
//! SHOP_HISTORY_SEED=42 SHOP_HISTORY_OPERATIONS=20000 \
//!   cargo nextest run --all-features -E 'test(random_history)' --no-capture
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::support::cluster::Cluster;
use crate::support::{User, admin_of, bulk_users, invariants};

const CLIENTS: u64 = 8;
const COUPON_CODES: [&str; 2] = ["SCARCE", "PLENTY"];

/// What one answered request claims happened.
#[derive(Debug)]
enum Event {
    SignedUp { email: String, user_id: Option<i64> },
    Charged { user_id: i64, amount: i64, ok: bool },
    Issued { user_id: i64, code: &'static str, coupon_id: Option<i64> },
    Placed { user_id: i64, order_id: Option<i64>, final_amount: i64 },
    Paid { user_id: i64, order_id: i64, payment_id: Option<i64>, amount: i64 },
    Cancelled { order_id: i64, ok: bool },
}

/// What clients learn as they go and share: who exists, what they hold.
#[derive(Default)]
struct Known {
    users: Vec<User>,
    coupons: HashMap<i64, Vec<i64>>,
    orders: Vec<(User, i64)>,
}

fn setting(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_random_history_across_instances_is_consistent() {
    let seed = setting("SHOP_HISTORY_SEED").unwrap_or_else(rand::random);
    let operations = setting("SHOP_HISTORY_OPERATIONS").unwrap_or(400);
    let mut rng = StdRng::seed_from_u64(seed);
    let points = *["optimistic", "pessimistic", "atomic", "redis-lock", "batch"].choose(&mut rng).unwrap();
    let stock = *["optimistic", "pessimistic", "atomic", "redis-lock", "redis-gate", "batch"].choose(&mut rng).unwrap();
    let coupons = *["pessimistic", "atomic", "redis-lock", "redis-gate"].choose(&mut rng).unwrap();
    eprintln!(
        "history: seed {seed}, {operations} operations, points {points}, stock {stock}, coupons {coupons} \
         (replay with SHOP_HISTORY_SEED={seed})"
    );
    let cluster = Cluster::start(
        3,
        &[
            ("POINTS_STRATEGY", points),
            ("STOCK_STRATEGY", stock),
            ("COUPON_STRATEGY", coupons),
            ("POINTS_DAILY_CHARGE_LIMIT", "5"),
            ("ORDER_PAYMENT_TIMEOUT_SECS", "2"),
            ("DATABASE_MAX_CONNECTIONS", "5"),
        ],
        |_| Vec::new(),
    )
    .await;
    let admin = admin_of(&cluster.db).await;
    let mut products = Vec::new();
    for (name, price, stock) in [("a", 3000, 30), ("b", 8000, 15), ("c", 15000, 5)] {
        let body = json!({"name": name, "price": price, "stock": stock, "category": "history"});
        let created: Value = post(&cluster, 0, "/api/admin/products", &admin.token, body).await.1;
        products.push(created["id"].as_i64().unwrap());
    }
    for (code, total) in COUPON_CODES.iter().zip([5, 50]) {
        let body = json!({"code": code, "kind": "PERCENT", "value": 10, "minOrderAmount": 5000, "totalQuantity": total, "validDays": 7});
        post(&cluster, 0, "/api/admin/coupon-types", &admin.token, body).await;
    }
    let users = bulk_users(&cluster.db, 20).await;
    let mut events = Vec::new();
    for user in &users {
        // Enough to pay for a few orders, so payments are a real part of the mix.
        let path = format!("/api/users/{}/points", user.id);
        let (status, _) = post(&cluster, 0, &path, &user.token, json!({"amount": 100_000})).await;
        events.push(Event::Charged { user_id: user.id, amount: 100_000, ok: status == StatusCode::OK });
    }
    let known = Arc::new(Mutex::new(Known { users, ..Known::default() }));
    let cluster = Arc::new(cluster);
    let products = Arc::new(products);

    let clients = (0..CLIENTS).map(|client| {
        let (cluster, known, products) = (cluster.clone(), known.clone(), products.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(client + 1));
            let mut events = Vec::new();
            for step in 0..operations / CLIENTS {
                let instance = (client + step) as usize;
                events.push(random_operation(&mut rng, &cluster, instance, &known, &products).await);
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
            }
            events
        })
    });
    for client in clients {
        events.extend(client.await.unwrap());
    }
    check(&cluster, &events).await;
    invariants::all(&cluster.db).await;
}

async fn post(cluster: &Cluster, instance: usize, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let response =
        cluster.client.post(cluster.url(instance, path)).bearer_auth(token).json(&body).send().await.unwrap();
    let status = response.status();
    assert!(!status.is_server_error(), "{path} answered {status}");
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn random_operation(
    rng: &mut StdRng,
    cluster: &Cluster,
    instance: usize,
    known: &Mutex<Known>,
    products: &[i64],
) -> Event {
    let user = known.lock().await.users.choose(rng).unwrap().clone();
    match rng.random_range(0..100) {
        0..10 => {
            // Often an email someone else may be signing up at the same moment.
            let email = format!("history-{}@example.com", rng.random_range(0..40));
            let body = json!({"email": email, "password": "password123", "name": "History"});
            let (status, answer) = post(cluster, instance, "/api/auth/register", "", body).await;
            let user_id = (status == StatusCode::CREATED).then(|| answer["userId"].as_i64().unwrap());
            if let Some(id) = user_id {
                let token = answer["accessToken"].as_str().unwrap().to_owned();
                known.lock().await.users.push(User { id, email: email.clone(), token, refresh_token: String::new() });
            }
            Event::SignedUp { email, user_id }
        }
        10..35 => {
            let amount = rng.random_range(1..=20) * 1000;
            let path = format!("/api/users/{}/points", user.id);
            let (status, _) = post(cluster, instance, &path, &user.token, json!({"amount": amount})).await;
            Event::Charged { user_id: user.id, amount, ok: status == StatusCode::OK }
        }
        35..50 => {
            let code = *COUPON_CODES.choose(rng).unwrap();
            let (status, answer) =
                post(cluster, instance, "/api/coupons/issue", &user.token, json!({"couponType": code})).await;
            let coupon_id = (status == StatusCode::CREATED).then(|| answer["couponId"].as_i64().unwrap());
            if let Some(id) = coupon_id {
                known.lock().await.coupons.entry(user.id).or_default().push(id);
            }
            Event::Issued { user_id: user.id, code, coupon_id }
        }
        50..75 => {
            let count = rng.random_range(1..=products.len());
            let chosen: Vec<i64> = products.sample(rng, count).copied().collect();
            let lines: Vec<Value> =
                chosen.iter().map(|id| json!({"productId": id, "quantity": rng.random_range(1..=3)})).collect();
            let coupon = known.lock().await.coupons.get(&user.id).and_then(|held| held.choose(rng).copied());
            let coupon = coupon.filter(|_| rng.random_bool(0.5));
            let (status, answer) =
                post(cluster, instance, "/api/orders", &user.token, json!({"items": lines, "couponId": coupon})).await;
            let order_id = (status == StatusCode::CREATED).then(|| answer["orderId"].as_i64().unwrap());
            if let Some(id) = order_id {
                known.lock().await.orders.push((user.clone(), id));
            }
            Event::Placed { user_id: user.id, order_id, final_amount: answer["finalAmount"].as_i64().unwrap_or(0) }
        }
        75..92 => {
            let Some((owner, order_id)) = known.lock().await.orders.choose(rng).cloned() else {
                return Event::Cancelled { order_id: 0, ok: false };
            };
            let (status, answer) =
                post(cluster, instance, "/api/payments", &owner.token, json!({"orderId": order_id})).await;
            let payment_id = (status == StatusCode::CREATED).then(|| answer["paymentId"].as_i64().unwrap());
            Event::Paid { user_id: owner.id, order_id, payment_id, amount: answer["finalAmount"].as_i64().unwrap_or(0) }
        }
        _ => {
            let Some((owner, order_id)) = known.lock().await.orders.choose(rng).cloned() else {
                return Event::Cancelled { order_id: 0, ok: false };
            };
            let path = format!("/api/orders/{order_id}/cancel");
            let (status, _) = post(cluster, instance, &path, &owner.token, json!({})).await;
            Event::Cancelled { order_id, ok: status == StatusCode::OK }
        }
    }
}

/// Every answer against the database.
async fn check(cluster: &Cluster, events: &[Event]) {
    let db = &cluster.db;
    let mut charges: HashMap<i64, (i64, i64)> = HashMap::new();
    let mut payments: HashMap<i64, i64> = HashMap::new();
    let mut coupons_issued = HashSet::new();
    let mut orders_placed = HashSet::new();
    let mut signed_up = HashSet::new();
    for event in events {
        match event {
            Event::SignedUp { email, user_id } => {
                let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
                    .bind(email)
                    .fetch_all(db)
                    .await
                    .unwrap();
                assert!(ids.len() <= 1, "{email} signed up twice");
                if let Some(id) = user_id {
                    assert_eq!(ids, vec![*id], "{email}'s account is the one answered");
                    assert!(signed_up.insert(email.clone()), "{email} answered 201 twice");
                }
            }
            Event::Charged { user_id, amount, ok: true } => {
                let (count, sum) = charges.entry(*user_id).or_default();
                *count += 1;
                *sum += amount;
            }
            Event::Charged { .. } => {}
            Event::Issued { user_id, code, coupon_id: Some(id) } => {
                let holder: (i64, String) = sqlx::query_as(
                    "SELECT c.user_id, t.code FROM coupons c JOIN coupon_types t ON t.id = c.coupon_type_id WHERE c.id = $1",
                )
                .bind(id)
                .fetch_one(db)
                .await
                .unwrap();
                assert_eq!(holder, (*user_id, (*code).to_owned()));
                coupons_issued.insert(*id);
            }
            Event::Issued { .. } => {}
            Event::Placed { user_id, order_id: Some(id), final_amount } => {
                let row: (i64, i64) = sqlx::query_as("SELECT user_id, final_amount FROM orders WHERE id = $1")
                    .bind(id)
                    .fetch_one(db)
                    .await
                    .unwrap();
                assert_eq!(row, (*user_id, *final_amount));
                orders_placed.insert(*id);
            }
            Event::Placed { .. } => {}
            Event::Paid { user_id, order_id, payment_id: Some(id), amount } => {
                let row: (i64, i64, i64) =
                    sqlx::query_as("SELECT order_id, user_id, amount FROM payments WHERE id = $1")
                        .bind(id)
                        .fetch_one(db)
                        .await
                        .unwrap();
                assert_eq!(row, (*order_id, *user_id, *amount));
                assert!(payments.insert(*order_id, *id).is_none(), "order {order_id} answered paid twice");
            }
            Event::Paid { .. } => {}
            Event::Cancelled { order_id, ok: true } => {
                let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
                    .bind(order_id)
                    .fetch_one(db)
                    .await
                    .unwrap();
                assert_eq!(status, "CANCELLED");
            }
            Event::Cancelled { .. } => {}
        }
    }
    // Refusals left nothing: the rows are exactly the successes.
    for (user_id, (count, sum)) in &charges {
        let (rows, total): (i64, i64) = sqlx::query_as(
            "SELECT count(*), COALESCE(SUM(amount), 0)::bigint FROM point_ledger WHERE user_id = $1 AND kind = 'CHARGE'",
        )
        .bind(user_id)
        .fetch_one(db)
        .await
        .unwrap();
        assert_eq!((rows, total), (*count, *sum), "user {user_id}'s charges");
    }
    let counted: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM coupons), (SELECT count(*) FROM orders), (SELECT count(*) FROM payments)",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(counted, (coupons_issued.len() as i64, orders_placed.len() as i64, payments.len() as i64));
    eprintln!(
        "history: {} events, {} charges, {} coupons, {} orders, {} payments checked",
        events.len(),
        charges.values().map(|(count, _)| count).sum::<i64>(),
        counted.0,
        counted.1,
        counted.2
    );
}
