//! A top-sellers rebuild racing the payments that commit while it reads:
//! each sale counts once.

use reqwest::StatusCode;
use serde_json::Value;

use crate::Hold;
use crate::support::{TestApp, User, spawn_app};

async fn sales_count(app: &TestApp) -> i64 {
    let top: Value = app.get("/api/products/top-sellers?days=1", None).await.json().await.unwrap();
    top.as_array().unwrap().iter().map(|seller| seller["salesCount"].as_i64().unwrap()).sum()
}

fn pay_in_background(app: &TestApp, user: &User, order_id: i64) -> tokio::task::JoinHandle<reqwest::Response> {
    let request = app.client.post(app.url("/api/payments")).bearer_auth(&user.token);
    let request = request.json(&serde_json::json!({"orderId": order_id}));
    tokio::spawn(async move { request.send().await.unwrap() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_racing_a_rebuild_counts_once() {
    let scenario = fail::FailScenario::setup();
    let app = spawn_app().await;
    let product = app.create_product("seller", 2000, 100).await;
    let buyer = app.new_user().await;
    assert_eq!(app.charge(&buyer, 100_000).await.status(), StatusCode::OK);
    let (first, second) =
        (app.order_id(&buyer, &[(product, 3)], None).await, app.order_id(&buyer, &[(product, 4)], None).await);

    // Committed before the rebuild reads, recorded after it is installed.
    let mut committed = Hold::first_at("payments::pay::committed");
    let paying = pay_in_background(&app, &buyer, first);
    committed.reached().await;
    assert_eq!(sales_count(&app).await, 3, "the rebuild read the committed payment");
    committed.release();
    assert_eq!(paying.await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(sales_count(&app).await, 3, "its late record did not count it again");
    fail::remove("payments::pay::committed");

    // Committed and recorded after the rebuild read, before it is installed.
    app.lose_redis_keys().await;
    let mut read = Hold::first_at("top_sellers::rebuild::read");
    let rebuilding = {
        let (client, url) = (app.client.clone(), app.url("/api/products/top-sellers?days=1"));
        tokio::spawn(async move { client.get(url).send().await.unwrap().json::<Value>().await.unwrap() })
    };
    read.reached().await;
    assert_eq!(pay_in_background(&app, &buyer, second).await.unwrap().status(), StatusCode::CREATED);
    read.release();
    let rebuilt: i64 =
        rebuilding.await.unwrap().as_array().unwrap().iter().map(|seller| seller["salesCount"].as_i64().unwrap()).sum();
    assert_eq!(rebuilt, 7, "the payment the rebuild did not see was added to it");
    assert_eq!(sales_count(&app).await, 7);
    fail::remove("top_sellers::rebuild::read");
    scenario.teardown();
}
