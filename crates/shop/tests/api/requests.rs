//! Answers to malformed requests: every one a problem document, none a 500.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{assert_problem, spawn_app};

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let app = spawn_app().await;
    assert_problem(app.get("/api/nothing-here", None).await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    assert_problem(
        app.request(Method::DELETE, "/api/products", None, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
    )
    .await;
    assert_problem(
        app.request(Method::PUT, "/api/auth/login", None, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
    )
    .await;
}

#[tokio::test]
async fn bodies_that_are_not_json_are_415_malformed_400_and_large_413() {
    let app = spawn_app().await;
    let post = |content_type: Option<&'static str>, body: Vec<u8>| {
        let mut request = app.client.post(app.url("/api/auth/register")).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send()
    };
    assert_problem(
        post(None, b"{}".to_vec()).await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    .await;
    assert_problem(
        post(Some("text/plain"), b"{}".to_vec()).await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    .await;
    for malformed in [&b"{"[..], b"", b"[1,2]", b"null", b"{\"email\": }"] {
        assert_problem(
            post(Some("application/json"), malformed.to_vec()).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        )
        .await;
    }
    let large = format!(r#"{{"email": "{}"}}"#, "a".repeat(70 * 1024));
    assert_problem(
        post(Some("application/json"), large.into_bytes()).await.unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
    )
    .await;
    let accounts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE role = 'user'").fetch_one(&app.db).await.unwrap();
    assert_eq!(accounts, 0, "no refused body created an account");
}

#[tokio::test]
async fn a_body_that_is_not_an_object_is_400_on_every_endpoint_that_takes_one() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let charge = format!("/api/users/{}/points", user.id);
    // Serde would read a struct from a sequence whose items line up: `[1000]` is an `{amount}`.
    for body in [json!([1000]), json!(1000), json!("1000"), json!(null), json!(true)] {
        let refused = app.post(&charge, Some(&user.token), body).await;
        let problem = assert_problem(refused, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        assert_eq!(problem["detail"], "body: must be a JSON object");
    }
    let sequences = [
        ("/api/auth/register", json!(["someone@example.com", "correct horse", "Someone"])),
        ("/api/auth/login", json!([user.email, "correct horse"])),
        ("/api/auth/refresh", json!([user.refresh_token])),
        ("/api/coupons/issue", json!(["DISCOUNT_10PERCENT"])),
        ("/api/coupons/issue-async", json!(["DISCOUNT_10PERCENT"])),
        ("/api/orders", json!([[{"productId": 1, "quantity": 1}]])),
        ("/api/payments", json!([1])),
    ];
    for (path, body) in sequences {
        let refused = app.post(path, Some(&user.token), body).await;
        assert_problem(refused, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    }
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (0, 0), "nothing was charged");
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&app.db).await.unwrap();
    assert_eq!(accounts, 2, "the admin and the one user: nobody registered");
}

#[tokio::test]
async fn control_characters_in_text_are_400_and_change_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let nul = |text: &str| format!("{text}\u{0}");
    let refusals = [
        app.post("/api/auth/login", None, json!({"email": nul("a@example.com"), "password": "correct horse"})).await,
        app.post(
            "/api/auth/register",
            None,
            json!({"email": "b@example.com", "password": "correct horse", "name": nul("B")}),
        )
        .await,
        app.post(
            "/api/auth/register",
            None,
            json!({"email": "c@example.com", "password": "correct\u{7}horse", "name": "C"}),
        )
        .await,
        app.post(
            "/api/admin/products",
            Some(&admin.token),
            json!({"name": nul("lamp"), "price": 1000, "stock": 1, "category": "home"}),
        )
        .await,
        app.post(
            "/api/admin/products",
            Some(&admin.token),
            json!({"name": "lamp", "price": 1000, "stock": 1, "category": "home\n"}),
        )
        .await,
        app.get("/api/products?category=%00", None).await,
        app.get("/api/products?category=home%1b", None).await,
        app.get("/api/coupons/status/WELCOME%00", None).await,
    ];
    for refused in refusals {
        let problem = assert_problem(refused, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.ends_with("must not contain control characters"), "{detail}");
    }
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&app.db).await.unwrap();
    let products: i64 = sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(&app.db).await.unwrap();
    assert_eq!((users, products), (1, 0), "only the admin; no product");
}

#[tokio::test]
async fn every_answer_is_nosniff_and_those_with_tokens_or_personal_data_are_not_stored() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let cache_control = |response: &reqwest::Response| {
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        response.headers().get("cache-control").map(|value| value.to_str().unwrap().to_owned())
    };
    let public =
        [app.get("/api/products", None).await, app.get("/health/live", None).await, app.get("/nowhere", None).await];
    for response in &public {
        assert_eq!(cache_control(response), None);
    }
    let login = app.post("/api/auth/login", None, json!({"email": user.email, "password": "password123"})).await;
    let refresh = app.post("/api/auth/refresh", None, json!({"refreshToken": user.refresh_token})).await;
    let refused = app.post("/api/auth/login", None, json!({"email": user.email, "password": "wrong password"})).await;
    let me = app.get("/api/users/me", Some(&user.token)).await;
    let points = app.get(&format!("/api/users/{}/points", user.id), Some(&user.token)).await;
    for response in [&login, &refresh, &refused, &me, &points] {
        assert_eq!(cache_control(response).as_deref(), Some("no-store"), "{}", response.url());
    }
    assert_eq!(login.status(), StatusCode::OK);
    assert_eq!(me.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_client_request_id_is_kept_only_if_short_and_printable() {
    let app = spawn_app().await;
    let echoed = |sent: String| {
        let request = app.client.get(app.url("/health/live")).header("x-request-id", sent);
        async move { request.send().await.unwrap().headers()["x-request-id"].to_str().unwrap().to_owned() }
    };
    assert_eq!(echoed("checkout-7f3a 42".into()).await, "checkout-7f3a 42");
    assert_eq!(echoed("a".repeat(64)).await, "a".repeat(64));
    for refused in ["a".repeat(65), "a".repeat(60_000), "tab\there".into()] {
        let made = echoed(refused.clone()).await;
        assert_ne!(made, refused);
        assert!(uuid::Uuid::parse_str(&made).is_ok(), "a new id: {made}");
    }
}

#[tokio::test]
async fn made_up_methods_share_one_metrics_label() {
    let app = spawn_app().await;
    for i in 0..50 {
        let method = Method::from_bytes(format!("MADEUP{i}{}", "X".repeat(200)).as_bytes()).unwrap();
        let response = app.request(method, "/api/products", None, None).await;
        assert_problem(response, StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED").await;
    }
    let text = app.get("/metrics", None).await.text().await.unwrap();
    assert!(!text.contains("MADEUP"), "no made-up method is a label");
    let other = text.lines().find(|line| line.starts_with("http_requests_total") && line.contains(r#"method="OTHER""#));
    assert!(other.is_some_and(|line| line.ends_with(" 50")), "{other:?}");
}
