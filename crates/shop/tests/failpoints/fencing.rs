//! The lease lock's guarantees where they end: when a lease runs out under a
//! live holder, the fencing token keeps the stale holder from writing.

use reqwest::StatusCode;
use serde_json::Value;
use shop::config::PointsStrategyKind;

use crate::support::{assert_problem, spawn_app_with};
use crate::{Hold, charge_in_background};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_whose_lease_ran_out_is_refused_by_the_fencing_token() {
    let scenario = fail::FailScenario::setup();
    let app = spawn_app_with(|config| {
        config.points_strategy = PointsStrategyKind::RedisLock;
        // Shorter than the time the first holder is kept waiting below.
        config.locks.redis_lock_lease_ms = 300;
        config.locks.redis_lock_wait_ms = 5000;
    })
    .await;
    let user = app.new_user().await;
    // The holder is cut off from Redis: its lease is never renewed.
    fail::cfg("lock::renew", "return").unwrap();
    let mut hold = Hold::first_at("points::redis_lock::leased");

    let stale = charge_in_background(&app, &user, 1000, None);
    hold.reached().await;
    // The first holder has the lock but has not written. The second waits out
    // the lease, takes the lock with a newer token and commits.
    let newer = app.charge(&user, 2000).await;
    assert_eq!(newer.status(), StatusCode::OK);
    assert_eq!(newer.json::<Value>().await.unwrap()["balance"], 2000);

    hold.release();
    let stale = stale.await.unwrap();
    assert_problem(stale, StatusCode::CONFLICT, "CONCURRENCY_CONFLICT").await;
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (2000, 2000), "the stale holder wrote nothing");
    let fence: i64 = sqlx::query_scalar("SELECT fence FROM point_wallets WHERE user_id = $1")
        .bind(user.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(fence, 2, "the newer holder's token is recorded");
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fencing_counter_lost_by_redis_is_lifted_above_the_database() {
    let scenario = fail::FailScenario::setup();
    let app = spawn_app_with(|config| {
        config.points_strategy = PointsStrategyKind::RedisLock;
        config.points_daily_charge_limit = 0;
    })
    .await;
    let user = app.new_user().await;
    assert_eq!(app.charge(&user, 1000).await.status(), StatusCode::OK);
    // Redis restarted without persistence: the counter starts again below
    // the token the wallet already carries.
    sqlx::query("UPDATE point_wallets SET fence = 50 WHERE user_id = $1").bind(user.id).execute(&app.db).await.unwrap();
    let refused = app.charge(&user, 1000).await;
    assert_problem(refused, StatusCode::CONFLICT, "CONCURRENCY_CONFLICT").await;
    // The refusal lifted the counter; the next charge goes through.
    assert_eq!(app.charge(&user, 1000).await.status(), StatusCode::OK);
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (2000, 2000));
    scenario.teardown();
}
