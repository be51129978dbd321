//! A coupon drop on a Redis Cluster of its own whose master for the
//! campaign fails over mid-drop: the replica takes over (forced, or once
//! the killed master is missed), possibly without the grants it had not yet
//! received. PostgreSQL has the last word, so the campaign never issues
//! more than it holds; every user who retries until a final answer gets
//! one, and the shop serves again once the cluster has settled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shop::config::CouponStrategyKind;
use tokio::sync::Barrier;

use crate::support::own_redis_cluster::OwnRedisCluster;
use crate::support::spawn_app_with;

const TOTAL: i64 = 100;
const USERS: usize = 300;
/// Between two users' first requests: the drop lasts about 1.5 s, and the
/// failover comes 300 ms in.
const STAGGER: Duration = Duration::from_millis(5);
const DEADLINE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
enum Failover {
    /// `CLUSTER FAILOVER FORCE` on the replica.
    Forced,
    /// The master killed; its replica is elected.
    MasterKilled,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coupon_drop_through_a_forced_failover_never_issues_more_than_the_campaign_holds() {
    drop_through(Failover::Forced).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coupon_drop_through_a_killed_master_never_issues_more_than_the_campaign_holds() {
    drop_through(Failover::MasterKilled).await;
}

async fn drop_through(failover: Failover) {
    let mut cluster = OwnRedisCluster::start().await;
    let app = spawn_app_with(|config| {
        config.redis_cluster_nodes = cluster.seeds();
        config.coupon_strategy = CouponStrategyKind::RedisGate;
        config.locks.gate_reconcile_after_ms = 1_000;
        config.request_timeout_ms = DEADLINE.as_millis() as u64;
    })
    .await;
    let code = app.create_coupon_type("FAILOVER", TOTAL, json!({})).await;
    let type_id: i64 =
        sqlx::query_scalar("SELECT id FROM coupon_types WHERE code = $1").bind(&code).fetch_one(&app.db).await.unwrap();
    let users = app.bulk_users(USERS).await;
    let gate = app.coupon_gate_key(type_id, "state");

    let barrier = Arc::new(Barrier::new(USERS + 1));
    let started = Instant::now();
    let drop = join_all(users.iter().enumerate().map(|(i, user)| {
        let (barrier, app, code) = (barrier.clone(), &app, &code);
        async move {
            barrier.wait().await;
            tokio::time::sleep(STAGGER * i as u32).await;
            // Retried on 503 (or no answer) until final, as a client would.
            let mut retries = 0;
            loop {
                let sent = Instant::now();
                let answer = tokio::time::timeout(DEADLINE * 2, app.issue_coupon(user, code)).await;
                let status = answer.as_ref().map_or(None, |answer| Some(answer.status()));
                assert!(
                    sent.elapsed() < DEADLINE + Duration::from_secs(1),
                    "{failover:?}: an answer took {:?}",
                    sent.elapsed()
                );
                match status {
                    Some(StatusCode::CREATED) => return (user.id, true, retries),
                    Some(StatusCode::CONFLICT) => {
                        let body: Value = answer.unwrap().json().await.unwrap();
                        match body["code"].as_str() {
                            Some("COUPON_SOLD_OUT") => return (user.id, false, retries),
                            // An earlier attempt, answered 503, was written.
                            Some("COUPON_ALREADY_ISSUED") if retries > 0 => return (user.id, true, retries),
                            other => panic!("{failover:?}: {other:?}"),
                        }
                    }
                    Some(StatusCode::SERVICE_UNAVAILABLE) | None => {}
                    Some(other) => panic!("{failover:?}: {other} is not an answer to a coupon drop"),
                }
                retries += 1;
                assert!(started.elapsed() < Duration::from_secs(60), "{failover:?}: never served again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }));
    let fault = async {
        barrier.wait().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let promoted = match failover {
            Failover::Forced => cluster.force_failover_of(&gate).await,
            Failover::MasterKilled => {
                let (_, replica) = cluster.master_and_replica_of(&gate).await;
                cluster.kill_master_of(&gate).await;
                replica
            }
        };
        let failed_at = Instant::now();
        while !cluster.is_master(promoted).await {
            assert!(failed_at.elapsed() < Duration::from_secs(20), "{failover:?}: the replica never took over");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster.settled(Duration::from_secs(20)).await;
        failed_at.elapsed()
    };
    let (answers, took_over) = tokio::join!(drop, fault);

    let told_held: Vec<i64> = answers.iter().filter(|(_, held, _)| *held).map(|(id, _, _)| *id).collect();
    let retried = answers.iter().filter(|(_, _, retries)| *retries > 0).count();
    let (coupons, holders): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT user_id) FROM coupons WHERE coupon_type_id = $1")
            .bind(type_id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    eprintln!(
        "{failover:?}: the replica served {took_over:?} after the fault; {retried} users retried; {} told they hold one",
        told_held.len()
    );
    assert_eq!((coupons, holders), (TOTAL, TOTAL), "{failover:?}: exactly the campaign, one each");
    let mut holding: Vec<i64> = sqlx::query_scalar("SELECT user_id FROM coupons WHERE coupon_type_id = $1")
        .bind(type_id)
        .fetch_all(&app.db)
        .await
        .unwrap();
    let mut told = told_held.clone();
    holding.sort_unstable();
    told.sort_unstable();
    assert_eq!(holding, told, "{failover:?}: those told they hold one, and no one else");
    // Served again: a late user is told at once that the drop is over.
    let late = app.new_user().await;
    let answer = app.issue_coupon(&late, &code).await;
    assert_eq!(answer.status(), StatusCode::CONFLICT, "{failover:?}");
    app.assert_invariants().await;
}
