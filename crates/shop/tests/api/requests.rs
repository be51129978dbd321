//! Answers to malformed requests: every one a problem document, none a 500.

use reqwest::{Method, StatusCode};

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
