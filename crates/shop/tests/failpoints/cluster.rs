//! A lease holder killed mid-operation.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use shop::config::{PointsStrategyKind, value_names};

use crate::support::cluster::Cluster;
use crate::support::{REDIS, bulk_users};

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
    let redis = redis::Client::open(REDIS).unwrap();
    let mut redis = redis.get_multiplexed_async_connection().await.unwrap();
    let lock = format!("{}lock:points:{}", cluster.redis_key_prefix, user.id);
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
