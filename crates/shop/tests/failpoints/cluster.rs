//! Instances killed mid-operation: a lease holder, a batch's transaction.

use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shop::config::{PointsStrategyKind, value_names};

use crate::support::cluster::Cluster;
use crate::support::{User, bulk_users, invariants, test_redis};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn others_go_on_after_a_killed_holders_lease_and_nothing_is_lost_or_doubled() {
    let cluster = Cluster::start(
        3,
        &[
            ("POINTS_STRATEGY", "redis-lock"),
            ("POINTS_DAILY_CHARGE_LIMIT", "0"),
            ("REDIS_LOCK_LEASE_MS", "1000"),
            ("REDIS_LOCK_WAIT_MS", "10000"),
        ],
        // Instance 0 stops every charge once it holds the lease and has
        // stamped the wallet: the moment to die.
        |i| if i == 0 { vec![("FAILPOINTS".into(), "points::charge::read=pause".into())] } else { Vec::new() },
    )
    .await;
    let user = bulk_users(&cluster.db, 1).await.remove(0);
    let wallet = format!("/api/users/{}/points", user.id);
    let charge = |instance: usize| {
        let request =
            cluster.client.post(cluster.url(instance, &wallet)).bearer_auth(&user.token).json(&json!({"amount": 1000}));
        async move { request.send().await }
    };
    let doomed = tokio::spawn(charge(0));
    let mut redis = test_redis().await;
    let lock = cluster.keys().key(format_args!("points:{}", user.id), "lock");
    let mut held = false;
    for _ in 0..200 {
        if redis::cmd("EXISTS").arg(&lock).query_async::<bool>(&mut redis).await.unwrap() {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held, "instance 0 took the lease");

    let others: Vec<_> = (1..=6).map(|i| tokio::spawn(charge(if i % 2 == 0 { 2 } else { 1 }))).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.kill(0);
    assert!(doomed.await.unwrap().is_err(), "the killed instance never answered");
    for other in others {
        let answer = other.await.unwrap().unwrap();
        let status = answer.status();
        assert_eq!(status, StatusCode::OK, "the others went on after the lease: {}", answer.text().await.unwrap());
    }
    let (balance, ledger, rows): (i64, i64, i64) = sqlx::query_as(
        "SELECT balance, (SELECT SUM(amount)::bigint FROM point_ledger WHERE user_id = $1),
                (SELECT count(*) FROM point_ledger WHERE user_id = $1)
         FROM point_wallets WHERE user_id = $1",
    )
    .bind(user.id)
    .fetch_one(&cluster.db)
    .await
    .unwrap();
    assert_eq!((balance, ledger, rows), (6000, 6000, 6), "the killed charge left nothing, the others everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_whose_clock_is_a_day_behind_cannot_reset_the_daily_charge_limit() {
    for strategy in value_names::<PointsStrategyKind>() {
        let cluster = Cluster::start(2, &[("POINTS_STRATEGY", &strategy), ("POINTS_DAILY_CHARGE_LIMIT", "3")], |i| {
            if i == 1 { vec![("FAILPOINTS".into(), "clock::days_behind=return(1)".into())] } else { Vec::new() }
        })
        .await;
        let user = bulk_users(&cluster.db, 1).await.remove(0);
        let wallet = format!("/api/users/{}/points", user.id);
        let charge = async |instance: usize| {
            let request = cluster.client.post(cluster.url(instance, &wallet)).bearer_auth(&user.token);
            request.json(&json!({"amount": 1000})).send().await.unwrap().status()
        };
        for _ in 0..3 {
            assert_eq!(charge(0).await, StatusCode::OK, "{strategy}");
        }
        // Instance 1 still thinks it is yesterday: its charge counts on the
        // later day, which is used up, and does not start yesterday afresh.
        assert_eq!(charge(1).await, StatusCode::CONFLICT, "{strategy}: a late stamp reset the count");
        assert_eq!(charge(0).await, StatusCode::CONFLICT, "{strategy}");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM point_ledger WHERE user_id = $1")
            .bind(user.id)
            .fetch_one(&cluster.db)
            .await
            .unwrap();
        assert_eq!(rows, 3, "{strategy}: three charges on one day");
    }
}

/// Sends each request (path, user, body) with a key of its own to instance
/// 0, whose batches stop at a fail point inside their transaction; kills it
/// there; then sends each again with its key to instance 1, as a client
/// whose answer never came would. Every one must succeed within 5 s of the
/// kill: the dead instance's claims on the keys are taken over once it has
/// gone quiet, not after the minute a claim is otherwise held.
async fn retried_after_a_kill_mid_batch(cluster: &Cluster, requests: &[(String, &User, Value)]) {
    let keyed = |instance: usize, (path, user, body): &(String, &User, Value), key: &str| {
        cluster
            .client
            .post(cluster.url(instance, path))
            .bearer_auth(&user.token)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
    };
    let keys: Vec<String> = (0..requests.len()).map(|i| format!("killed-mid-batch-{i}")).collect();
    let doomed: Vec<_> = requests.iter().zip(&keys).map(|(request, key)| keyed(0, request, key)).collect();
    let doomed = tokio::spawn(join_all(doomed));
    let mut held = false;
    for _ in 0..300 {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'",
        )
        .fetch_one(&cluster.db)
        .await
        .unwrap();
        if open > 0 {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held, "instance 0 is inside a batch's transaction");
    cluster.kill(0);
    let killed = Instant::now();
    // A request that ran alone may have been answered before the kill;
    // those in the held batch were not.
    let unanswered = doomed.await.unwrap().iter().filter(|answer| answer.is_err()).count();
    assert!(unanswered > 0, "the kill cut requests off");

    for (request, key) in requests.iter().zip(&keys) {
        loop {
            let answer = keyed(1, request, key).await.unwrap();
            let status = answer.status();
            if status.is_success() {
                break;
            }
            let body: Value = answer.json().await.unwrap();
            assert!(
                status == StatusCode::CONFLICT && body["code"] == "IDEMPOTENCY_KEY_IN_USE",
                "only the dead instance's claim stands in the way: {status} {body}"
            );
            assert!(killed.elapsed() < Duration::from_secs(5), "key {key} still in use 5 s after the kill");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!("{} keys served by another instance {:?} after the kill", keys.len(), killed.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn charges_of_a_batch_killed_mid_transaction_are_made_once_by_their_retries() {
    let cluster = Cluster::start(2, &[("POINTS_STRATEGY", "batch"), ("POINTS_DAILY_CHARGE_LIMIT", "0")], |i| {
        if i == 0 { vec![("FAILPOINTS".into(), "points::batch::written=pause".into())] } else { Vec::new() }
    })
    .await;
    let users = bulk_users(&cluster.db, 8).await;
    let requests: Vec<_> =
        users.iter().map(|user| (format!("/api/users/{}/points", user.id), user, json!({"amount": 1000}))).collect();
    retried_after_a_kill_mid_batch(&cluster, &requests).await;
    for user in &users {
        let (balance, rows): (i64, i64) = sqlx::query_as(
            "SELECT balance, (SELECT count(*) FROM point_ledger WHERE user_id = $1) FROM point_wallets WHERE user_id = $1",
        )
        .bind(user.id)
        .fetch_one(&cluster.db)
        .await
        .unwrap();
        assert_eq!((balance, rows), (1000, 1), "user {}: charged once", user.id);
    }
    invariants::all(&cluster.db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_of_a_batch_killed_mid_transaction_are_placed_once_by_their_retries() {
    let cluster = Cluster::start(2, &[("STOCK_STRATEGY", "batch")], |i| {
        if i == 0 { vec![("FAILPOINTS".into(), "orders::batch::taken=pause".into())] } else { Vec::new() }
    })
    .await;
    let product = cluster.create_product(1, 100).await;
    let users = bulk_users(&cluster.db, 8).await;
    let order = json!({"items": [{"productId": product, "quantity": 2}]});
    let requests: Vec<_> = users.iter().map(|user| ("/api/orders".to_owned(), user, order.clone())).collect();
    retried_after_a_kill_mid_batch(&cluster, &requests).await;
    for user in &users {
        let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE user_id = $1")
            .bind(user.id)
            .fetch_one(&cluster.db)
            .await
            .unwrap();
        assert_eq!(orders, 1, "user {}: placed once", user.id);
    }
    assert_eq!(cluster.stock(product).await, 100 - 2 * users.len() as i64);
    invariants::all(&cluster.db).await;
}

/// An order whose instance died holding the stock gate's units: a retry
/// of its key elsewhere waits until the gate has its units back, and is
/// then placed — it is never refused for stock the dead request held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_retried_after_its_instance_died_holding_gate_units_is_placed_not_refused() {
    let cluster = Cluster::start(2, &[("STOCK_STRATEGY", "redis-gate"), ("GATE_RECONCILE_AFTER_MS", "6000")], |i| {
        if i == 0 { vec![("FAILPOINTS".into(), "stock::gate::reserved=pause".into())] } else { Vec::new() }
    })
    .await;
    let product = cluster.create_product(1, 5).await;
    let user = bulk_users(&cluster.db, 1).await.remove(0);
    let order = json!({"items": [{"productId": product, "quantity": 5}]});
    let send = |instance: usize| {
        let request = cluster.client.post(cluster.url(instance, "/api/orders")).bearer_auth(&user.token);
        request.header("Idempotency-Key", "held").json(&order).send()
    };
    let doomed = tokio::spawn(send(0));
    let mut redis = test_redis().await;
    let pending = cluster.keys().key(format_args!("product:{product}"), "gate:pending");
    let mut held = false;
    for _ in 0..300 {
        if redis::cmd("ZCARD").arg(&pending).query_async::<i64>(&mut redis).await.unwrap() > 0 {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held, "instance 0 holds the gate's units");
    cluster.kill(0);
    let killed = Instant::now();
    assert!(doomed.await.unwrap().is_err(), "the killed instance never answered");
    loop {
        let answer = send(1).await.unwrap();
        let status = answer.status();
        let body: Value = answer.json().await.unwrap();
        if status == StatusCode::CREATED {
            break;
        }
        assert!(
            status == StatusCode::SERVICE_UNAVAILABLE || body["code"] == "IDEMPOTENCY_KEY_IN_USE",
            "only a wait, never a refusal: {status} {body}"
        );
        assert!(killed.elapsed() < Duration::from_secs(20), "still waiting {:?} after the kill", killed.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("the order was placed by its retry {:?} after the kill", killed.elapsed());
    assert_eq!(cluster.stock(product).await, 0, "all five units sold to the one order");
    invariants::all(&cluster.db).await;
}
