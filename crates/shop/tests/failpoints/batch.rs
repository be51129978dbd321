//! The `batch` strategies: a batch whose transaction fails after writing
//! leaves nothing behind, and its requests are made one by one.

use reqwest::StatusCode;
use shop::config::{PointsStrategyKind, StockStrategyKind};

use crate::support::spawn_app_with;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_of_a_failed_batch_are_placed_one_by_one() {
    let scenario = fail::FailScenario::setup();
    let app = spawn_app_with(|config| config.stock_strategy = StockStrategyKind::Batch).await;
    let product = app.create_product("hot", 1000, 10).await;
    let buyers = app.bulk_users(30).await;
    // Every batch fails once it has taken its stock: only the fallback places orders.
    fail::cfg("orders::batch::taken", "return").unwrap();
    let outcomes =
        futures::future::join_all(buyers.iter().map(|buyer| app.place_order(buyer, &[(product, 1)], None))).await;
    fail::remove("orders::batch::taken");
    let statuses: Vec<StatusCode> = outcomes.iter().map(reqwest::Response::status).collect();
    assert_eq!(statuses.iter().filter(|status| **status == StatusCode::CREATED).count(), 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|status| **status == StatusCode::CONFLICT).count(), 20, "{statuses:?}");
    assert_eq!(app.stock(product).await, 0);
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&app.db).await.unwrap();
    assert_eq!(orders, 10);
    app.assert_invariants().await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn charges_of_a_failed_batch_are_made_one_by_one() {
    let scenario = fail::FailScenario::setup();
    let app = spawn_app_with(|config| {
        config.points_strategy = PointsStrategyKind::Batch;
        config.points_daily_charge_limit = 5;
    })
    .await;
    let user = app.new_user().await;
    // Every batch fails once it has written the wallets: only the fallback
    // (and a charge alone, made as by `atomic`) charges. Each charge pauses
    // after its read, so the others queue and batches form.
    fail::cfg("points::batch::written", "return").unwrap();
    fail::cfg("points::charge::read", "sleep(50)").unwrap();
    let outcomes = futures::future::join_all((0..12).map(|_| app.charge(&user, 1000))).await;
    fail::remove("points::batch::written");
    fail::remove("points::charge::read");
    let statuses: Vec<StatusCode> = outcomes.iter().map(reqwest::Response::status).collect();
    assert_eq!(statuses.iter().filter(|status| **status == StatusCode::OK).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|status| **status == StatusCode::CONFLICT).count(), 7, "{statuses:?}");
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (5000, 5000));
    app.assert_invariants().await;
    scenario.teardown();
}
