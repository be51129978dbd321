//! Orders and payments racing: stock never oversold, no partial
//! reservation, no deadlock, an order paid once, a coupon held once.

use reqwest::StatusCode;
use serde_json::{Value, json};
use shop::config::{PointsStrategyKind, StockStrategyKind};

use super::{after_retries, codes, count, together, together_with_bodies};
use crate::support::{TestApp, spawn_app_with};

async fn app_with(stock: StockStrategyKind) -> TestApp {
    spawn_app_with(|config| {
        config.stock_strategy = stock;
        // A rush queues every buyer on one lease under `redis-lock`: on a
        // busy machine the last waits past the default 3 s, and these tests
        // are about the stock, not the wait.
        config.locks.redis_lock_wait_ms = 30_000;
    })
    .await
}

async fn four_hundred_buyers_of_fifty(strategy: StockStrategyKind) {
    let app = app_with(strategy).await;
    let hot = app.create_product("hot", 1000, 50).await;
    let buyers = app.bulk_users(400).await;
    let order = json!({"items": [{"productId": hot, "quantity": 1}]});
    let ask = |i: usize| app.post_keyed("/api/orders", &buyers[i].token, "rush", order.clone());
    let answers = together_with_bodies((0..buyers.len()).map(ask).collect()).await;
    let outcomes = codes(after_retries(answers, ask).await);
    assert_eq!(count(&outcomes, StatusCode::CREATED), 50, "{strategy:?}");
    for (status, code) in outcomes.iter().filter(|(status, _)| *status != StatusCode::CREATED) {
        assert_eq!((*status, code.as_deref()), (StatusCode::CONFLICT, Some("OUT_OF_STOCK")), "{strategy:?}");
    }
    assert_eq!(app.stock(hot).await, 0);
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&app.db).await.unwrap();
    assert_eq!(orders, 50);
    app.assert_invariants().await;
}

async fn opposite_multi_item_orders_neither_deadlock_nor_split(strategy: StockStrategyKind) {
    let app = app_with(strategy).await;
    let (a, b) = (app.create_product("a", 1000, 60).await, app.create_product("b", 1000, 60).await);
    let buyers = app.bulk_users(80).await;
    // Half order a then b, half b then a; 80 orders of one each want 80 of 60.
    let outcomes = together(
        buyers
            .iter()
            .enumerate()
            .map(|(i, buyer)| {
                let lines = if i % 2 == 0 { [(a, 1), (b, 1)] } else { [(b, 1), (a, 1)] };
                app.place_order(buyer, &lines, None)
            })
            .collect(),
    )
    .await;
    assert_eq!(count(&outcomes, StatusCode::CREATED), 60, "{strategy:?}");
    for (status, code) in outcomes.iter().filter(|(status, _)| *status != StatusCode::CREATED) {
        assert_eq!((*status, code.as_deref()), (StatusCode::CONFLICT, Some("OUT_OF_STOCK")), "{strategy:?}");
    }
    assert_eq!((app.stock(a).await, app.stock(b).await), (0, 0), "no order took one line without the other");
    app.assert_invariants().await;
}

/// Orders that differ, sent together (under `batch` they share batches):
/// each gets its own answer, and the refused ones change nothing.
async fn a_rush_of_differing_orders_gets_each_its_own_answer(strategy: StockStrategyKind) {
    let app = app_with(strategy).await;
    let plenty = app.create_product("plenty", 2000, 1000).await;
    let scarce = app.create_product("scarce", 1000, 5).await;
    let cheap = app.create_product("cheap", 500, 100).await;
    let code = app.create_coupon_type("RUSH", 10, json!({})).await;
    let buyers = app.bulk_users(50).await;
    let mut coupons = Vec::new();
    for holder in &buyers[..10] {
        let coupon: Value = app.issue_coupon(holder, &code).await.json().await.unwrap();
        coupons.push(coupon["couponId"].as_i64());
    }
    // Coupon holders order twice with their coupon (one order may hold
    // it); others use a holder's coupon, want the scarce product along with
    // a plentiful one, total under 1,000, or name an unknown product.
    let mut orders = Vec::new();
    for _ in 0..2 {
        orders.extend(
            buyers[..10].iter().zip(&coupons).map(|(holder, coupon)| app.place_order(holder, &[(plenty, 1)], *coupon)),
        );
    }
    orders.extend(
        buyers[10..15].iter().zip(&coupons).map(|(buyer, coupon)| app.place_order(buyer, &[(plenty, 1)], *coupon)),
    );
    orders.extend(buyers[15..35].iter().map(|buyer| app.place_order(buyer, &[(plenty, 1), (scarce, 1)], None)));
    orders.extend(buyers[35..40].iter().map(|buyer| app.place_order(buyer, &[(cheap, 1)], None)));
    let unknown = cheap + 1000;
    orders.extend(buyers[40..45].iter().map(|buyer| app.place_order(buyer, &[(plenty, 1), (unknown, 1)], None)));
    let outcomes = together(orders).await;
    let answers: Vec<(StatusCode, Option<&str>)> =
        outcomes.iter().map(|(status, code)| (*status, code.as_deref())).collect();
    let created = (StatusCode::CREATED, None);
    let not_usable = (StatusCode::CONFLICT, Some("COUPON_NOT_USABLE"));
    for i in 0..10 {
        let pair = [answers[i], answers[10 + i]];
        assert!(pair.contains(&created) && pair.contains(&not_usable), "{strategy:?}: holder {i}: {pair:?}");
    }
    assert!(answers[20..25].iter().all(|answer| *answer == not_usable), "{strategy:?}: {answers:?}");
    let out_of_stock = (StatusCode::CONFLICT, Some("OUT_OF_STOCK"));
    assert_eq!(answers[25..45].iter().filter(|answer| **answer == created).count(), 5, "{strategy:?}");
    assert_eq!(answers[25..45].iter().filter(|answer| **answer == out_of_stock).count(), 15, "{strategy:?}");
    let too_small = (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED"));
    assert!(answers[45..50].iter().all(|answer| *answer == too_small), "{strategy:?}: {answers:?}");
    let not_found = (StatusCode::NOT_FOUND, Some("NOT_FOUND"));
    assert!(answers[50..55].iter().all(|answer| *answer == not_found), "{strategy:?}: {answers:?}");

    let stocks = (app.stock(plenty).await, app.stock(scarce).await, app.stock(cheap).await);
    assert_eq!(stocks, (1000 - 10 - 5, 0, 100), "{strategy:?}: only the placed orders took stock");
    let (orders, held): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(coupon_id) FROM orders").fetch_one(&app.db).await.unwrap();
    assert_eq!((orders, held), (15, 10), "{strategy:?}");
    let reserved: i64 =
        sqlx::query_scalar("SELECT count(*) FROM coupons WHERE status = 'RESERVED'").fetch_one(&app.db).await.unwrap();
    assert_eq!(reserved, 10, "{strategy:?}");
    app.assert_invariants().await;
}

macro_rules! for_each_stock_strategy {
    ($($module:ident => $strategy:ident),* $(,)?) => {
        $(
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn four_hundred_buyers_of_a_stock_of_fifty_get_exactly_fifty() {
                four_hundred_buyers_of_fifty(StockStrategyKind::$strategy).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn opposite_multi_item_orders_neither_deadlock_nor_reserve_partly() {
                opposite_multi_item_orders_neither_deadlock_nor_split(StockStrategyKind::$strategy).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn a_rush_of_differing_orders_gets_each_its_own_answer() {
                super::a_rush_of_differing_orders_gets_each_its_own_answer(StockStrategyKind::$strategy).await;
            }
        }
        )*

        // A strategy config offers but this list lacks fails to compile.
        const _: fn(StockStrategyKind) = |kind| match kind {
            $(StockStrategyKind::$strategy => {})*
            #[cfg(feature = "naive")]
            StockStrategyKind::Naive => {}
        };
    };
}

for_each_stock_strategy! {
    optimistic => Optimistic,
    pessimistic => Pessimistic,
    atomic => Atomic,
    redis_lock => RedisLock,
    redis_gate => RedisGate,
    batch => Batch,
    adaptive => Adaptive,
}

async fn thirty_payments_of_one_order(strategy: PointsStrategyKind) {
    let app = spawn_app_with(|config| config.points_strategy = strategy).await;
    let product = app.create_product("once", 7000, 10).await;
    let user = app.new_user().await;
    app.charge(&user, 100000).await;
    let order = app.order_id(&user, &[(product, 1)], None).await;
    let outcomes = together((0..30).map(|_| app.pay(&user, order)).collect()).await;
    assert_eq!(count(&outcomes, StatusCode::CREATED), 1, "{strategy:?}: {outcomes:?}");
    for (status, code) in outcomes.iter().filter(|(status, _)| *status != StatusCode::CREATED) {
        assert_eq!((*status, code.as_deref()), (StatusCode::CONFLICT, Some("ORDER_NOT_PAYABLE")), "{strategy:?}");
    }
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (93000, 93000), "points taken once");
    app.assert_invariants().await;
}

async fn payments_racing_charges_keep_the_ledger(strategy: PointsStrategyKind) {
    let app = spawn_app_with(|config| {
        config.points_strategy = strategy;
        config.points_daily_charge_limit = 0;
        config.points_monthly_charge_limit = 0;
    })
    .await;
    let product = app.create_product("snack", 3000, 1000).await;
    let user = app.new_user().await;
    app.charge(&user, 30000).await;
    let mut orders = Vec::new();
    for _ in 0..20 {
        orders.push(app.order_id(&user, &[(product, 1)], None).await);
    }
    // 20 payments of 3,000 against 30,000 and 20 charges of 1,000, at once.
    let payments =
        orders.iter().map(|order| Box::pin(app.pay(&user, *order)) as std::pin::Pin<Box<dyn Future<Output = _>>>);
    let charges = (0..20).map(|_| Box::pin(app.charge(&user, 1000)) as std::pin::Pin<Box<dyn Future<Output = _>>>);
    let outcomes = together(payments.chain(charges).collect()).await;
    for (status, code) in &outcomes {
        let expected = *status == StatusCode::OK
            || *status == StatusCode::CREATED
            || matches!(code.as_deref(), Some("INSUFFICIENT_POINTS" | "CONCURRENCY_CONFLICT"));
        assert!(expected, "{strategy:?}: {status} {code:?}");
    }
    let (balance, ledger_sum) = app.balance_and_ledger_sum(user.id).await;
    assert_eq!(balance, ledger_sum);
    assert!(balance >= 0);
    app.assert_invariants().await;
}

macro_rules! for_each_points_strategy {
    ($($module:ident => $strategy:ident),* $(,)?) => {$(
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn thirty_payments_of_one_order_pay_it_once() {
                thirty_payments_of_one_order(PointsStrategyKind::$strategy).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn payments_racing_charges_keep_balance_equal_to_the_ledger() {
                payments_racing_charges_keep_the_ledger(PointsStrategyKind::$strategy).await;
            }
        }
    )*};
}

mod payments {
    use super::*;

    for_each_points_strategy! {
        optimistic => Optimistic,
        pessimistic => Pessimistic,
        atomic => Atomic,
        redis_lock => RedisLock,
        batch => Batch,
        adaptive => Adaptive,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_coupon_on_ten_simultaneous_orders_is_held_by_one() {
    let app = app_with(StockStrategyKind::Atomic).await;
    let product = app.create_product("gift", 10000, 100).await;
    app.create_coupon_type("ONCE_ONLY", 5, json!({})).await;
    let user = app.new_user().await;
    let coupon: Value = app.issue_coupon(&user, "ONCE_ONLY").await.json().await.unwrap();
    let coupon = coupon["couponId"].as_i64();
    let outcomes = together((0..10).map(|_| app.place_order(&user, &[(product, 1)], coupon)).collect()).await;
    assert_eq!(count(&outcomes, StatusCode::CREATED), 1, "{outcomes:?}");
    for (status, code) in outcomes.iter().filter(|(status, _)| *status != StatusCode::CREATED) {
        assert_eq!((*status, code.as_deref()), (StatusCode::CONFLICT, Some("COUPON_NOT_USABLE")));
    }
    assert_eq!(app.stock(product).await, 99, "the refused orders took no stock");
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stock_gate_never_oversells_when_redis_loses_its_keys_mid_rush() {
    let app = app_with(StockStrategyKind::RedisGate).await;
    let hot = app.create_product("hot", 1000, 100).await;
    let buyers = app.bulk_users(600).await;
    let rush = together(buyers.iter().map(|buyer| app.place_order(buyer, &[(hot, 1)], None)).collect());
    let loss = async {
        loop {
            if app.stock(hot).await <= 80 {
                app.lose_redis_keys().await;
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    let (outcomes, ()) = tokio::join!(rush, loss);
    assert_eq!(count(&outcomes, StatusCode::CREATED), 100);
    assert_eq!(app.stock(hot).await, 0);
    app.assert_invariants().await;
}
