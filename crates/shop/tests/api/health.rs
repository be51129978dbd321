use reqwest::StatusCode;
use serde_json::Value;

use crate::support::spawn_app;

#[tokio::test]
async fn live_and_ready_answer_200_when_dependencies_are_up() {
    let app = spawn_app().await;
    assert_eq!(app.get("/health/live", None).await.status(), StatusCode::OK);
    let ready = app.get("/health/ready", None).await;
    assert_eq!(ready.status(), StatusCode::OK);
    let body: Value = ready.json().await.unwrap();
    assert_eq!((body["postgres"].as_str(), body["redis"].as_str()), (Some("up"), Some("up")));
}

#[tokio::test]
async fn metrics_count_requests_per_route_and_status() {
    let app = spawn_app().await;
    app.get("/api/products", None).await;
    app.get("/api/products/0", None).await;
    let text = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total")
            && l.contains(r#"route="/api/products""#)
            && l.contains(r#"status="200""#)),
        "{text}"
    );
    assert!(text.contains("http_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains("shop_outbox_backlog 0"), "{text}");
}

#[tokio::test]
async fn openapi_document_and_swagger_ui_are_served() {
    let app = spawn_app().await;
    let spec: Value = app.get("/api/openapi.json", None).await.json().await.unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    for path in ["/api/auth/register", "/api/users/{userId}/points", "/api/admin/products/{id}"] {
        assert!(spec["paths"][path].is_object(), "{path} is documented");
    }
    // Client generators name methods by operationId: each must be unique.
    let mut ids = std::collections::HashSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has an operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
        }
    }
    let ui = app.get("/swagger-ui/", None).await;
    assert_eq!(ui.status(), StatusCode::OK);
    assert!(ui.text().await.unwrap().contains("swagger"));
}
