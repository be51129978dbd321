//! A consumer of the issue queue killed with entries read and not
//! acknowledged.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::cluster::Cluster;
use shop::redis_conn::{RedisConn, campaign_slot};

use crate::support::{admin_of, await_issue_requests, bulk_users, test_redis};

/// Entries read by a consumer and not yet acknowledged.
async fn unacknowledged(redis: &mut RedisConn, stream: &str) -> i64 {
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
            // acknowledged: the moment to die. Instance 1's, woken at once
            // by the requests it queues, pauses after each batch, so that
            // instance 0's poll finds the next request first.
            |i| {
                let at_batch = if i == 0 { "pause" } else { "sleep(300)" };
                vec![("FAILPOINTS".into(), format!("issuance::batch::read={at_batch}"))]
            },
        )
        .await;
        let admin = admin_of(&cluster.db).await;
        let campaign = json!({"code": "ORPHANED", "kind": "FIXED", "value": 1000, "totalQuantity": 50, "validDays": 7});
        let created = cluster.client.post(cluster.url(0, "/api/admin/coupon-types")).bearer_auth(&admin.token);
        assert_eq!(created.json(&campaign).send().await.unwrap().status(), StatusCode::CREATED);
        let users = bulk_users(&cluster.db, 40).await;
        let mut redis = test_redis().await;
        let type_id: i64 = sqlx::query_scalar("SELECT id FROM coupon_types WHERE code = 'ORPHANED'")
            .fetch_one(&cluster.db)
            .await
            .unwrap();
        let stream = cluster.keys().campaign_key(campaign_slot(type_id), "issue-requests");

        let mut accepted = Vec::new();
        let mut stuck = false;
        for user in &users {
            let request = cluster.client.post(cluster.url(1, "/api/coupons/issue-async")).bearer_auth(&user.token);
            let answer = request.json(&json!({"couponType": "ORPHANED"})).send().await.unwrap();
            assert_eq!(answer.status(), StatusCode::ACCEPTED, "{strategy}");
            let body: Value = answer.json().await.unwrap();
            accepted.push((body["requestId"].as_str().unwrap().to_owned(), user.token.clone()));
            // Until instance 0 holds an entry: instance 1 acknowledges its
            // own within milliseconds of its 300 ms pause.
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
