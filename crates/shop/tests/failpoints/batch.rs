//! `STOCK_STRATEGY=batch`: a batch whose transaction fails after taking
//! stock leaves nothing behind, and its orders are placed one by one.

use reqwest::StatusCode;
use shop::config::StockStrategyKind;

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
