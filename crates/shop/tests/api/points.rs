use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{assert_problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn charge_adds_to_the_balance_and_writes_the_ledger() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let first: Value = app.charge(&user, 10_000).await.json().await.unwrap();
    assert_eq!(first, json!({"userId": user.id, "balance": 10_000}));
    let second: Value = app.charge(&user, 1_000_000).await.json().await.unwrap();
    assert_eq!(second["balance"], 1_010_000);
    let read: Value = app.get(&format!("/api/users/{}/points", user.id), Some(&user.token)).await.json().await.unwrap();
    assert_eq!(read, json!({"userId": user.id, "balance": 1_010_000}));
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (1_010_000, 1_010_000));
}

#[tokio::test]
async fn amounts_outside_the_rule_are_400_and_change_nothing() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let path = format!("/api/users/{}/points", user.id);
    for amount in [
        json!(0),
        json!(999),
        json!(1500),
        json!(-1000),
        json!(1_001_000),
        json!(1000.5),
        json!(1000.0),
        json!("1000"),
        json!(null),
        json!(1e30),
    ] {
        let response = app.post(&path, Some(&user.token), json!({"amount": amount})).await;
        let problem = assert_problem(response, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert!(problem["detail"].as_str().unwrap().starts_with("amount"), "{amount}: {problem}");
    }
    assert_problem(app.post(&path, Some(&user.token), json!({})).await, StatusCode::BAD_REQUEST, "VALIDATION_FAILED")
        .await;
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (0, 0));
}

#[tokio::test]
async fn the_daily_limit_refuses_the_fourth_charge() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    for _ in 0..3 {
        assert_eq!(app.charge(&user, 1000).await.status(), StatusCode::OK);
    }
    assert_problem(app.charge(&user, 1000).await, StatusCode::CONFLICT, "CHARGE_LIMIT_EXCEEDED").await;
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (3000, 3000));
}

#[tokio::test]
async fn the_monthly_limit_counts_across_days() {
    let app = spawn_app_with(|config| {
        config.points_daily_charge_limit = 0;
        config.points_monthly_charge_limit = 2;
    })
    .await;
    let user = app.new_user().await;
    // One charge recorded earlier this month, on another day.
    sqlx::query(
        "UPDATE point_wallets SET charge_month = date_trunc('month', now() AT TIME ZONE 'Asia/Seoul')::date,
         charges_in_month = 1, charge_day = '2000-01-01', charges_on_day = 1 WHERE user_id = $1",
    )
    .bind(user.id)
    .execute(&app.db)
    .await
    .unwrap();
    assert_eq!(app.charge(&user, 1000).await.status(), StatusCode::OK);
    let problem = assert_problem(app.charge(&user, 1000).await, StatusCode::CONFLICT, "CHARGE_LIMIT_EXCEEDED").await;
    assert!(problem["detail"].as_str().unwrap().contains("monthly"), "{problem}");
}

#[tokio::test]
async fn a_zero_limit_means_unlimited() {
    let app = spawn_app_with(|config| config.points_daily_charge_limit = 0).await;
    let user = app.new_user().await;
    for _ in 0..5 {
        assert_eq!(app.charge(&user, 1000).await.status(), StatusCode::OK);
    }
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (5000, 5000));
}

#[tokio::test]
async fn history_pages_newest_first() {
    let app = spawn_app_with(|config| config.points_daily_charge_limit = 0).await;
    let user = app.new_user().await;
    for amount in [1000, 2000, 3000] {
        app.charge(&user, amount).await;
    }
    let path = format!("/api/users/{}/points/history", user.id);
    let first: Value = app.get(&format!("{path}?limit=2"), Some(&user.token)).await.json().await.unwrap();
    let items = first["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(
        (items[0]["type"].as_str(), items[0]["amount"].as_i64(), items[0]["balanceAfter"].as_i64()),
        (Some("CHARGE"), Some(3000), Some(6000))
    );
    assert_eq!(items[1]["amount"], 2000);
    assert!(items[0]["orderId"].is_null());
    let cursor = first["nextCursor"].as_str().expect("a next page");
    let second: Value =
        app.get(&format!("{path}?limit=2&cursor={cursor}"), Some(&user.token)).await.json().await.unwrap();
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["items"][0]["amount"], 1000);
    assert!(second["nextCursor"].is_null());
}

#[tokio::test]
async fn history_rejects_bad_paging() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let path = format!("/api/users/{}/points/history", user.id);
    for query in ["limit=0", "limit=101", "limit=abc", "limit=1.5", "cursor=forged"] {
        let response = app.get(&format!("{path}?{query}"), Some(&user.token)).await;
        let problem = assert_problem(response, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        let field = query.split('=').next().unwrap();
        assert!(problem["detail"].as_str().unwrap().starts_with(field), "{query}: {problem}");
    }
}
