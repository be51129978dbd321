use std::sync::Arc;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shop::config::{PointsStrategyKind, StockStrategyKind};
use tokio::sync::Barrier;

use crate::support::{TestApp, User, assert_problem, spawn_app, spawn_app_with};

async fn charge_with_key(app: &TestApp, user: &User, key: &str, body: Value) -> reqwest::Response {
    let path = format!("/api/users/{}/points", user.id);
    app.post_with_key(&path, &user.token, key, &body).send().await.unwrap()
}

#[tokio::test]
async fn a_replay_answers_the_first_response_and_changes_nothing() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let first = charge_with_key(&app, &user, "charge-1", json!({"amount": 5000})).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    // Same key and a JSON-equal body (another key order, extra whitespace).
    let replay = app
        .client
        .post(app.url(&format!("/api/users/{}/points", user.id)))
        .bearer_auth(&user.token)
        .header("Idempotency-Key", "charge-1")
        .header("content-type", "application/json")
        .body(r#"{ "amount" : 5000 }"#)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), first);
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (5000, 5000));
}

#[tokio::test]
async fn a_replay_does_not_count_toward_the_charge_limit() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    for _ in 0..5 {
        assert_eq!(charge_with_key(&app, &user, "same", json!({"amount": 1000})).await.status(), StatusCode::OK);
    }
    assert_eq!(app.charge(&user, 1000).await.status(), StatusCode::OK);
    assert_eq!(app.charge(&user, 1000).await.status(), StatusCode::OK);
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (3000, 3000));
}

#[tokio::test]
async fn a_key_reused_with_another_body_or_path_is_422() {
    let app = spawn_app().await;
    let (user, admin) = (app.new_user().await, app.admin().await);
    charge_with_key(&app, &user, "k", json!({"amount": 1000})).await;
    let other_body = charge_with_key(&app, &user, "k", json!({"amount": 2000})).await;
    assert_problem(other_body, StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED").await;
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (1000, 1000));

    // Keys are per caller: the admin's "k" is another key.
    let body = json!({"amount": 1000});
    let users_wallet = format!("/api/users/{}/points", user.id);
    let by_admin = app.post_with_key(&users_wallet, &admin.token, "k", &body).send().await.unwrap();
    assert_eq!(by_admin.status(), StatusCode::OK);
    let admins_wallet = format!("/api/users/{}/points", admin.id);
    let other_path = app.post_with_key(&admins_wallet, &admin.token, "k", &body).send().await.unwrap();
    assert_problem(other_path, StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED").await;
}

#[tokio::test]
async fn a_final_refusal_is_replayed_and_a_bad_key_is_400() {
    let app = spawn_app_with(|config| config.points_daily_charge_limit = 1).await;
    let user = app.new_user().await;
    app.charge(&user, 1000).await;
    let refused = charge_with_key(&app, &user, "late", json!({"amount": 1000})).await;
    let first = assert_problem(refused, StatusCode::CONFLICT, "CHARGE_LIMIT_EXCEEDED").await;
    let again = charge_with_key(&app, &user, "late", json!({"amount": 1000})).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(assert_problem(again, StatusCode::CONFLICT, "CHARGE_LIMIT_EXCEEDED").await, first);

    for bad in ["", &"k".repeat(256), "tab\tinside"] {
        let response = charge_with_key(&app, &user, bad, json!({"amount": 1000})).await;
        let problem = assert_problem(response, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert!(problem["detail"].as_str().unwrap().starts_with("Idempotency-Key"), "{problem}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_take_effect_once() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let gate = Arc::new(Barrier::new(20));
    let attempts = (0..20).map(|_| {
        let (app, user, gate) = (&app, &user, gate.clone());
        async move {
            gate.wait().await;
            charge_with_key(app, user, "once", json!({"amount": 7000})).await
        }
    });
    let responses = join_all(attempts).await;
    let mut ok = 0;
    for response in responses {
        match response.status() {
            StatusCode::OK => ok += 1,
            _ => drop(assert_problem(response, StatusCode::CONFLICT, "IDEMPOTENCY_KEY_IN_USE").await),
        }
    }
    assert!(ok >= 1);
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (7000, 7000));
}

/// Under the `batch` strategies, keyed requests written in one batch store
/// their answers in its transaction: each replays its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_charges_and_orders_replay_their_own_answers() {
    let app = spawn_app_with(|config| {
        config.points_strategy = PointsStrategyKind::Batch;
        config.stock_strategy = StockStrategyKind::Batch;
        config.points_daily_charge_limit = 0;
    })
    .await;
    let product = app.create_product("keyed", 1000, 100).await;
    let users = app.bulk_users(30).await;
    let order = json!({"items": [{"productId": product, "quantity": 2}]});
    let send_all = || async {
        let charges = join_all(
            users
                .iter()
                .enumerate()
                .map(|(i, user)| charge_with_key(&app, user, "charge", json!({"amount": 1000 * (i as i64 + 1)}))),
        );
        let orders =
            join_all(users.iter().map(|user| app.post_with_key("/api/orders", &user.token, "order", &order).send()));
        let (charges, orders) = tokio::join!(charges, orders);
        let mut answers = Vec::new();
        for response in charges.into_iter().chain(orders.into_iter().map(Result::unwrap)) {
            let replayed = response.headers().contains_key("idempotent-replayed");
            answers.push((response.status(), replayed, response.json::<Value>().await.unwrap()));
        }
        answers
    };
    let first = send_all().await;
    assert!(first.iter().all(|(status, replayed, _)| status.is_success() && !replayed), "{first:?}");
    let again = send_all().await;
    for ((status, _, body), (replay_status, replayed, replay_body)) in first.iter().zip(&again) {
        assert_eq!((status, body), (replay_status, replay_body));
        assert!(replayed);
    }
    for (i, user) in users.iter().enumerate() {
        let charged = 1000 * (i as i64 + 1);
        assert_eq!(app.balance_and_ledger_sum(user.id).await, (charged, charged));
    }
    assert_eq!(app.stock(product).await, 100 - 2 * 30);
    app.assert_invariants().await;
}
