use std::sync::Arc;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Barrier;

use crate::support::{assert_problem, spawn_app, spawn_app_with, user_from};

#[tokio::test]
async fn register_answers_201_with_tokens_and_stores_the_normalized_email() {
    let app = spawn_app().await;
    let response = app.register("  Kim@Example.COM ", "password123", "  김철수 ").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["email"], "kim@example.com");
    assert_eq!(body["name"], "김철수");
    assert_eq!(body["role"], "user");
    assert!(body["expiresAt"].as_str().unwrap().ends_with('Z'));
    let user = user_from(body);

    let me: Value = app.get("/api/users/me", Some(&user.token)).await.json().await.unwrap();
    assert_eq!(me["userId"], user.id);
    assert_eq!(me["email"], "kim@example.com");
    assert!(me["createdAt"].is_string());
    let (balance, _) = app.balance_and_ledger_sum(user.id).await;
    assert_eq!(balance, 0, "a wallet is created with the account");
}

#[tokio::test]
async fn register_rejects_each_bad_field_and_stores_nothing() {
    let app = spawn_app().await;
    let long_email = format!("{}@{}.com", "a".repeat(64), "b".repeat(190));
    let cases = [
        (json!({"email": "not-an-email", "password": "password123", "name": "Kim"}), "email"),
        (json!({"email": long_email, "password": "password123", "name": "Kim"}), "email"),
        (json!({"email": "a@example.com", "password": "short", "name": "Kim"}), "password"),
        (json!({"email": "a@example.com", "password": "p".repeat(65), "name": "Kim"}), "password"),
        (json!({"email": "a@example.com", "password": "password123", "name": "   "}), "name"),
        (json!({"email": "a@example.com", "password": "password123", "name": "가".repeat(51)}), "name"),
        (json!({"email": "a@example.com", "password": "password123"}), "name"),
        (json!({"email": 42, "password": "password123", "name": "Kim"}), "email"),
    ];
    for (body, field) in cases {
        let problem = assert_problem(
            app.post("/api/auth/register", None, body).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        )
        .await;
        assert!(problem["detail"].as_str().unwrap().starts_with(field), "{problem}");
    }
    let users: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE role = 'user'").fetch_one(&app.db).await.unwrap();
    assert_eq!(users, 0);
}

#[tokio::test]
async fn a_taken_email_is_409_whatever_its_case() {
    let app = spawn_app().await;
    assert_eq!(app.register("kim@example.com", "password123", "Kim").await.status(), StatusCode::CREATED);
    assert_problem(app.register("KIM@example.com ", "password456", "Other").await, StatusCode::CONFLICT, "EMAIL_TAKEN")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_simultaneous_signups_of_one_email_give_exactly_one_account() {
    // A high hash cost widens the window between the existence check and the insert.
    let app = spawn_app_with(|config| config.argon2_memory_kib = 4096).await;
    let gate = Arc::new(Barrier::new(30));
    let attempts = (0..30).map(|i| {
        let (app, gate) = (&app, gate.clone());
        async move {
            gate.wait().await;
            let email = if i % 2 == 0 { "race@example.com" } else { "RACE@example.com" };
            app.register(email, "password123", "Racer").await
        }
    });
    let responses = join_all(attempts).await;
    let created = responses.iter().filter(|r| r.status() == StatusCode::CREATED).count();
    assert_eq!(created, 1);
    for response in responses.into_iter().filter(|r| r.status() != StatusCode::CREATED) {
        assert_problem(response, StatusCode::CONFLICT, "EMAIL_TAKEN").await;
    }
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = 'race@example.com'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(accounts, 1);
}

#[tokio::test]
async fn login_succeeds_with_the_password_and_fails_alike_for_unknown_email_and_wrong_password() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let ok =
        app.post("/api/auth/login", None, json!({"email": user.email.to_uppercase(), "password": "password123"})).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(user_from(ok.json().await.unwrap()).id, user.id);

    let wrong_password =
        app.post("/api/auth/login", None, json!({"email": user.email, "password": "password124"})).await;
    let unknown =
        app.post("/api/auth/login", None, json!({"email": "nobody@example.com", "password": "password123"})).await;
    let a = assert_problem(wrong_password, StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS").await;
    let b = assert_problem(unknown, StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS").await;
    assert_eq!(a, b, "the answers do not tell which part was wrong");
    assert_problem(
        app.post("/api/auth/login", None, json!({"email": "x@example.com"})).await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
}

#[tokio::test]
async fn refresh_takes_only_refresh_tokens_and_access_takes_only_access_tokens() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let refreshed = app.post("/api/auth/refresh", None, json!({"refreshToken": user.refresh_token})).await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    let renewed = user_from(refreshed.json().await.unwrap());
    assert_eq!(app.get("/api/users/me", Some(&renewed.token)).await.status(), StatusCode::OK);

    let with_access = app.post("/api/auth/refresh", None, json!({"refreshToken": user.token})).await;
    assert_problem(with_access, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    let garbage = app.post("/api/auth/refresh", None, json!({"refreshToken": "x.y.z"})).await;
    assert_problem(garbage, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    let as_access = app.get("/api/users/me", Some(&user.refresh_token)).await;
    assert_problem(as_access, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    assert_problem(app.post("/api/auth/refresh", None, json!({})).await, StatusCode::BAD_REQUEST, "VALIDATION_FAILED")
        .await;
}

#[tokio::test]
async fn tokens_of_another_secret_or_expired_are_refused() {
    let app = spawn_app_with(|config| config.jwt_access_ttl_secs = 1).await;
    let user = app.new_user().await;
    let other =
        spawn_app_with(|config| config.jwt_secret = Some("another secret of at least thirty-two bytes".into())).await;
    assert_problem(other.get("/api/users/me", Some(&user.token)).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_problem(app.get("/api/users/me", Some(&user.token)).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
        .await;
}
