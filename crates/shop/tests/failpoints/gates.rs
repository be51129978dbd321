//! A crash between a Redis gate (coupons, stock) and the database write.

use reqwest::StatusCode;
use serde_json::json;
use shop::config::CouponStrategyKind;

use crate::Hold;
use crate::support::{assert_problem, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_unit_lost_to_a_crash_after_the_gate_is_reconciled() {
    let scenario = fail::FailScenario::setup();
    let app = spawn_app_with(|config| {
        config.coupon_strategy = CouponStrategyKind::RedisGate;
        config.locks.gate_reconcile_after_ms = 300;
    })
    .await;
    let code = app.create_coupon_type("CRASH", 1, json!({})).await;
    let (crashed, waiting) = (app.new_user().await, app.new_user().await);

    fail::cfg("coupons::gate::granted", "1*return").unwrap();
    // The gate hands the only unit out, and the request dies before writing;
    // and the reconciler's list of campaigns is lost, as a failover of its
    // master could lose it: asking for the campaign puts it back.
    assert_problem(app.issue_coupon(&crashed, &code).await, StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL").await;
    let active = app.redis_key("coupon-gate", "active");
    redis::cmd("DEL").arg(&active).query_async::<i64>(&mut app.redis().await).await.unwrap();
    // The other user is not told it is sold out while the unit is pending:
    // the request waits, the reconciler finds the grant without a coupon and
    // returns the unit, and the waiting request gets it.
    let waited = app.issue_coupon(&waiting, &code).await;
    assert_eq!(waited.status(), StatusCode::CREATED, "{}", waited.text().await.unwrap());
    let holders: Vec<i64> = sqlx::query_scalar("SELECT user_id FROM coupons").fetch_all(&app.db).await.unwrap();
    assert_eq!(holders, vec![waiting.id]);
    app.assert_invariants().await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_lost_to_a_crash_after_the_gate_is_reconciled() {
    let scenario = fail::FailScenario::setup();
    let app = spawn_app_with(|config| {
        config.stock_strategy = shop::config::StockStrategyKind::RedisGate;
        config.locks.gate_reconcile_after_ms = 300;
    })
    .await;
    let product = app.create_product("last", 5000, 1).await;
    let (crashed, waiting) = (app.new_user().await, app.new_user().await);
    fail::cfg("stock::gate::reserved", "1*return").unwrap();
    assert_problem(
        app.place_order(&crashed, &[(product, 1)], None).await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL",
    )
    .await;
    // The reconciler's list of products is lost, as a failover of its master
    // could lose it: ordering the product puts it back.
    let active = app.redis_key("stock-gate", "active");
    redis::cmd("DEL").arg(&active).query_async::<i64>(&mut app.redis().await).await.unwrap();
    assert_problem(app.place_order(&waiting, &[(product, 1)], None).await, StatusCode::CONFLICT, "OUT_OF_STOCK").await;
    let mut placed = false;
    for _ in 0..100 {
        let response = app.place_order(&waiting, &[(product, 1)], None).await;
        if response.status() == StatusCode::CREATED {
            placed = true;
            break;
        }
        assert_problem(response, StatusCode::CONFLICT, "OUT_OF_STOCK").await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(placed, "the reconciler returned the unit within 5 s");
    assert_eq!(app.stock(product).await, 0);
    app.assert_invariants().await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coupon_gate_load_that_outlived_its_lease_does_not_overwrite_a_newer_gate() {
    let scenario = fail::FailScenario::setup();
    let app = spawn_app_with(|config| config.coupon_strategy = CouponStrategyKind::RedisGate).await;
    let code = app.create_coupon_type("RELOADED", 3, json!({})).await;
    let type_id: i64 =
        sqlx::query_scalar("SELECT id FROM coupon_types WHERE code = $1").bind(&code).fetch_one(&app.db).await.unwrap();
    let (slow, quick) = (app.new_user().await, app.new_user().await);
    // The first load reads PostgreSQL (3 left, no holders) and stalls.
    let mut read = Hold::first_at("coupons::gate::read");
    let stalled = {
        let request = app.client.post(app.url("/api/coupons/issue")).bearer_auth(&slow.token);
        let request = request.json(&json!({"couponType": code}));
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    read.reached().await;
    // Its loading lease runs out; another request loads the gate and is issued one.
    let lease = app.coupon_gate_key(type_id, "loading");
    redis::cmd("DEL").arg(&lease).query_async::<i64>(&mut app.redis().await).await.unwrap();
    assert_eq!(app.issue_coupon(&quick, &code).await.status(), StatusCode::CREATED);
    // The stalled load must not put its older snapshot back.
    read.release();
    assert_eq!(stalled.await.unwrap().status(), StatusCode::CREATED);
    let left = app.redis_hash_field(&app.coupon_gate_key(type_id, "state"), "left").await;
    assert_eq!(left, Some(1), "the gate counts both coupons issued");
    assert_problem(app.issue_coupon(&quick, &code).await, StatusCode::CONFLICT, "COUPON_ALREADY_ISSUED").await;
    app.assert_invariants().await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_grant_to_a_user_who_already_held_a_coupon_comes_back() {
    let scenario = fail::FailScenario::setup();
    let app = spawn_app_with(|config| {
        config.coupon_strategy = CouponStrategyKind::RedisGate;
        config.locks.gate_reconcile_after_ms = 300;
    })
    .await;
    let code = app.create_coupon_type("REGRANTED", 2, json!({})).await;
    let type_id: i64 =
        sqlx::query_scalar("SELECT id FROM coupon_types WHERE code = $1").bind(&code).fetch_one(&app.db).await.unwrap();
    let (holder, other) = (app.new_user().await, app.new_user().await);
    assert_eq!(app.issue_coupon(&holder, &code).await.status(), StatusCode::CREATED);
    // The gate loses track of the holder, grants it again, and the request
    // dies before writing: the reconciler finds a coupon, but an older one.
    let holders = app.coupon_gate_key(type_id, "holders");
    redis::cmd("SREM").arg(&holders).arg(holder.id).query_async::<i64>(&mut app.redis().await).await.unwrap();
    fail::cfg("coupons::gate::granted", "1*return").unwrap();
    assert_problem(app.issue_coupon(&holder, &code).await, StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL").await;
    // The unit that grant took comes back, and the other user gets it.
    let served = app.issue_coupon(&other, &code).await;
    assert_eq!(served.status(), StatusCode::CREATED, "{}", served.text().await.unwrap());
    let issued: i64 = sqlx::query_scalar("SELECT count(*) FROM coupons").fetch_one(&app.db).await.unwrap();
    assert_eq!(issued, 2);
    app.assert_invariants().await;
    scenario.teardown();
}
