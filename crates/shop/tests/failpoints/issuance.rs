//! A consumer of the issue queue killed with entries read and not
//! acknowledged.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::cluster::Cluster;
use crate::support::{REDIS, admin_of, await_issue_requests, bulk_users};

/// Entries read by a consumer and not yet acknowledged.
async fn unacknowledged(redis: &mut redis::aio::MultiplexedConnection, stream: &str) -> i64 {
    let summary: Vec<redis::Value> =
        redis::cmd("XPENDING").arg(stream).arg("issuers").query_async(redis).await.unwrap_or_default();
    match summary.first() {
        Some(redis::Value::Int(count)) => *count,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entries_a_killed_consumer_read_are_finished_by_another() {
    for strategy in ["redis-gate", "atomic"] {
        let cluster = Cluster::start(
            2,
            &[("COUPON_STRATEGY", strategy), ("ASYNC_ISSUE_CLAIM_AFTER_MS", "500")],
            // Instance 0's consumer stops at its first batch, read and not
            // acknowledged: the moment to die.
            |i| if i == 0 { vec![("FAILPOINTS".into(), "issuance::batch::read=pause".into())] } else { Vec::new() },
        )
        .await;
        let admin = admin_of(&cluster.db).await;
        let campaign = json!({"code": "ORPHANED", "kind": "FIXED", "value": 1000, "totalQuantity": 50, "validDays": 7});
        let created = cluster.client.post(cluster.url(0, "/api/admin/coupon-types")).bearer_auth(&admin.token);
        assert_eq!(created.json(&campaign).send().await.unwrap().status(), StatusCode::CREATED);
        let users = bulk_users(&cluster.db, 40).await;
        let redis = redis::Client::open(REDIS).unwrap();
        let mut redis = redis.get_multiplexed_async_connection().await.unwrap();
        let stream = format!("{}coupon-issue:requests", cluster.redis_key_prefix);

        let mut accepted = Vec::new();
        let mut stuck = false;
        for user in &users {
            let request = cluster.client.post(cluster.url(1, "/api/coupons/issue-async")).bearer_auth(&user.token);
            let answer = request.json(&json!({"couponType": "ORPHANED"})).send().await.unwrap();
            assert_eq!(answer.status(), StatusCode::ACCEPTED, "{strategy}");
            let body: Value = answer.json().await.unwrap();
            accepted.push((body["requestId"].as_str().unwrap().to_owned(), user.token.clone()));
            // Until instance 0 holds an entry: instance 1 acknowledges its
            // own within milliseconds.
            if !stuck {
                tokio::time::sleep(Duration::from_millis(150)).await;
                stuck = unacknowledged(&mut redis, &stream).await > 0;
            }
        }
        assert!(stuck, "{strategy}: instance 0 read entries and stopped");
        cluster.kill(0);

        let views =
            await_issue_requests(&cluster.client, |path| cluster.url(1, path), &accepted, Duration::from_secs(10))
                .await;
        let issued = views.iter().filter(|view| view["status"] == "ISSUED").count();
        let sold_out = views.iter().filter(|view| view["reason"] == "SOLD_OUT").count();
        assert_eq!((issued, sold_out), (40, 0), "{strategy}: every request finished, by instance 1");
        assert_eq!(unacknowledged(&mut redis, &stream).await, 0, "{strategy}");
        let (rows, holders): (i64, i64) = sqlx::query_as("SELECT count(*), count(DISTINCT user_id) FROM coupons")
            .fetch_one(&cluster.db)
            .await
            .unwrap();
        assert_eq!((rows, holders), (40, 40), "{strategy}: nothing issued twice");
    }
}
