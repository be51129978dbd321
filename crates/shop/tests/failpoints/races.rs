//! The six races the shop guards against, each forced on every run: request
//! A is held at the point where it has read what it acts on but not yet
//! written, B runs meanwhile, then A goes on. Under the test-only `naive`
//! strategy (unlocked reads, unconditional writes) the anomaly happens every
//! time; under every real strategy, the same interleaving leaves the data
//! right. Where the last line of defence is a constraint, the naive run drops
//! it from its own database, to show what it catches.

use std::future::Future;
use std::time::Duration;

use clap::ValueEnum;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use shop::config::{Config, CouponStrategyKind, PointsStrategyKind, StockStrategyKind};

use crate::Hold;
use crate::support::{TestApp, spawn_app_with};

/// Runs `a` until it is held at `point`, then `b`, then lets `a` go on.
/// Under a strategy where `b` may wait for `a`'s lock, `b` is given a moment
/// and `a` is released whether or not `b` finished: the outcome asserted is
/// the same either way. Under `naive`, `b` cannot wait, and finishes first.
async fn interleave<A, B>(point: &str, b_may_wait: bool, a: A, b: B) -> (Response, Response)
where
    A: Future<Output = Response> + Send + 'static,
    B: Future<Output = Response> + Send + 'static,
{
    let mut hold = Hold::first_at(point);
    let a = tokio::spawn(a);
    hold.reached().await;
    let mut b = tokio::spawn(b);
    let b_done = if b_may_wait {
        tokio::time::timeout(Duration::from_millis(300), &mut b).await.ok()
    } else {
        Some((&mut b).await)
    };
    hold.release();
    let a = a.await.unwrap();
    let b = match b_done {
        Some(done) => done.unwrap(),
        None => b.await.unwrap(),
    };
    fail::remove(point);
    (a, b)
}

async fn app(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with(|config| {
        config.points_daily_charge_limit = 0;
        configure(config);
    })
    .await
}

fn charge(app: &TestApp, user_id: i64, token: &str, amount: i64) -> impl Future<Output = Response> + Send + use<> {
    let request = app
        .client
        .post(app.url(&format!("/api/users/{user_id}/points")))
        .bearer_auth(token)
        .json(&json!({"amount": amount}));
    async move { request.send().await.unwrap() }
}

fn post(app: &TestApp, path: &str, token: &str, body: Value) -> impl Future<Output = Response> + Send + use<> {
    let request = app.client.post(app.url(path)).bearer_auth(token).json(&body);
    async move { request.send().await.unwrap() }
}

async fn drop_constraint(app: &TestApp, sql: &'static str) {
    sqlx::query(sql).execute(&app.db).await.unwrap();
}

// ---- lost update on a balance

async fn lost_update(strategy: PointsStrategyKind) -> (i64, i64) {
    let scenario = fail::FailScenario::setup();
    let app = app(|config| config.points_strategy = strategy).await;
    let user = app.new_user().await;
    let naive = strategy == PointsStrategyKind::Naive;
    let (a, b) = interleave(
        "points::charge::read",
        !naive,
        charge(&app, user.id, &user.token, 1000),
        charge(&app, user.id, &user.token, 2000),
    )
    .await;
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    let outcome = app.balance_and_ledger_sum(user.id).await;
    scenario.teardown();
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn naive_charges_lose_an_update() {
    // A read 0 and wrote 1,000 over B's 2,000: both charges are in the
    // ledger, one is missing from the balance.
    assert_eq!(lost_update(PointsStrategyKind::Naive).await, (1000, 3000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_points_strategy_loses_an_update() {
    for &strategy in PointsStrategyKind::value_variants() {
        assert_eq!(lost_update(strategy).await, (3000, 3000), "{strategy:?}");
    }
}

// ---- oversold stock

async fn oversell(strategy: StockStrategyKind) -> (i64, i64) {
    let scenario = fail::FailScenario::setup();
    let app = app(|config| config.stock_strategy = strategy).await;
    let product = app.create_product("last one", 5000, 1).await;
    let (first, second) = (app.new_user().await, app.new_user().await);
    let order = |user: &crate::support::User| {
        post(&app, "/api/orders", &user.token, json!({"items": [{"productId": product, "quantity": 1}]}))
    };
    let (a, b) =
        interleave("stock::take::read", strategy != StockStrategyKind::Naive, order(&first), order(&second)).await;
    let placed = [a.status(), b.status()].iter().filter(|s| **s == StatusCode::CREATED).count() as i64;
    let outcome = (placed, app.stock(product).await);
    if strategy != StockStrategyKind::Naive {
        app.assert_invariants().await;
    }
    scenario.teardown();
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn naive_orders_oversell_the_last_unit() {
    assert_eq!(oversell(StockStrategyKind::Naive).await, (2, 0), "two orders of one unit, and stock still reads 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stock_strategy_oversells() {
    for &strategy in StockStrategyKind::value_variants() {
        assert_eq!(oversell(strategy).await, (1, 0), "{strategy:?}");
    }
}

// ---- over-issued coupons

async fn over_issue(strategy: CouponStrategyKind) -> (i64, i64) {
    let scenario = fail::FailScenario::setup();
    let app = app(|config| config.coupon_strategy = strategy).await;
    let code = app.create_coupon_type("LAST_UNIT", 1, json!({})).await;
    let (first, second) = (app.new_user().await, app.new_user().await);
    let issue =
        |user: &crate::support::User| post(&app, "/api/coupons/issue", &user.token, json!({"couponType": code}));
    interleave("coupons::issue::read", strategy != CouponStrategyKind::Naive, issue(&first), issue(&second)).await;
    let outcome: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM coupons), (SELECT issued_quantity FROM coupon_types WHERE code = 'LAST_UNIT')",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    scenario.teardown();
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn naive_issue_hands_out_the_last_coupon_twice() {
    assert_eq!(over_issue(CouponStrategyKind::Naive).await, (2, 1), "two coupons of a total of one, counted as one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_coupon_strategy_over_issues() {
    for &strategy in CouponStrategyKind::value_variants() {
        assert_eq!(over_issue(strategy).await, (1, 1), "{strategy:?}");
    }
}

// ---- one email signed up twice

async fn double_signup(keep_constraint: bool) -> (Vec<StatusCode>, i64) {
    let scenario = fail::FailScenario::setup();
    let app = app(|_| {}).await;
    if !keep_constraint {
        drop_constraint(&app, "ALTER TABLE users DROP CONSTRAINT users_email_key").await;
    }
    let body = json!({"email": "twice@example.com", "password": "password123", "name": "Twice"});
    let signup = || {
        let request = app.client.post(app.url("/api/auth/register")).json(&body);
        async move { request.send().await.unwrap() }
    };
    let (a, b) = interleave("auth::signup::read", false, signup(), signup()).await;
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = 'twice@example.com'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    scenario.teardown();
    (vec![a.status(), b.status()], accounts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_its_unique_constraint_an_email_signs_up_twice() {
    // Check-then-insert: both checked before either inserted.
    assert_eq!(double_signup(false).await, (vec![StatusCode::CREATED, StatusCode::CREATED], 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_unique_constraint_signs_an_email_up_once() {
    assert_eq!(double_signup(true).await, (vec![StatusCode::CONFLICT, StatusCode::CREATED], 1));
}

// ---- an order paid twice

async fn double_payment(strategy: PointsStrategyKind, keep_constraint: bool) -> (i64, i64) {
    let scenario = fail::FailScenario::setup();
    let app = app(|config| config.points_strategy = strategy).await;
    if !keep_constraint {
        drop_constraint(&app, "ALTER TABLE payments DROP CONSTRAINT payments_order_key").await;
    }
    let product = app.create_product("once", 4000, 10).await;
    let user = app.new_user().await;
    app.charge(&user, 20000).await;
    let order = app.order_id(&user, &[(product, 1)], None).await;
    let pay = || post(&app, "/api/payments", &user.token, json!({"orderId": order}));
    interleave("payments::pay::read", strategy != PointsStrategyKind::Naive, pay(), pay()).await;
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments").fetch_one(&app.db).await.unwrap();
    let (balance, _) = app.balance_and_ledger_sum(user.id).await;
    scenario.teardown();
    (payments, balance)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn naive_payment_pays_an_order_twice() {
    // Neither request locked the order; both saw it PENDING and both paid.
    assert_eq!(double_payment(PointsStrategyKind::Naive, false).await, (2, 12000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_payment_constraint_alone_stops_the_second_naive_payment() {
    assert_eq!(double_payment(PointsStrategyKind::Naive, true).await, (1, 16000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_points_strategy_pays_an_order_twice() {
    for &strategy in PointsStrategyKind::value_variants() {
        assert_eq!(double_payment(strategy, true).await, (1, 16000), "{strategy:?}");
    }
}

// ---- one coupon used by two orders

async fn shared_coupon(strategy: StockStrategyKind, keep_constraint: bool) -> i64 {
    let scenario = fail::FailScenario::setup();
    let app = app(|config| config.stock_strategy = strategy).await;
    if !keep_constraint {
        drop_constraint(&app, "DROP INDEX orders_coupon_live_key").await;
    }
    let product = app.create_product("gift", 10000, 10).await;
    app.create_coupon_type("SHARED", 5, json!({})).await;
    let user = app.new_user().await;
    let coupon: Value = app.issue_coupon(&user, "SHARED").await.json().await.unwrap();
    let body = json!({"items": [{"productId": product, "quantity": 1}], "couponId": coupon["couponId"]});
    let place = || post(&app, "/api/orders", &user.token, body.clone());
    interleave("orders::coupon::read", strategy != StockStrategyKind::Naive, place(), place()).await;
    let holders: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE coupon_id IS NOT NULL AND status = 'PENDING'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    scenario.teardown();
    holders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn naive_orders_use_one_coupon_twice() {
    assert_eq!(shared_coupon(StockStrategyKind::Naive, false).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_stock_strategy_lets_two_orders_hold_one_coupon() {
    for &strategy in StockStrategyKind::value_variants() {
        assert_eq!(shared_coupon(strategy, true).await, 1, "{strategy:?}");
    }
}
