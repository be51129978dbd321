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
    // Every metric has its help text; the pool and the process are there too.
    for metric in
        text.lines().filter_map(|line| line.strip_prefix("# TYPE ")).map(|rest| rest.split(' ').next().unwrap())
    {
        assert!(text.contains(&format!("# HELP {metric} ")), "{metric} has no # HELP");
    }
    for gauge in
        [r#"shop_db_pool_connections{state="idle"}"#, "shop_db_pool_max_connections", "process_resident_memory_bytes"]
    {
        assert!(text.contains(gauge), "{gauge}");
    }
}

#[tokio::test]
async fn openapi_document_and_swagger_ui_are_served() {
    let app = spawn_app().await;
    let spec: Value = app.get("/api/openapi.json", None).await.json().await.unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    for path in ["/api/auth/register", "/api/users/{userId}/points", "/api/admin/products/{id}"] {
        assert!(spec["paths"][path].is_object(), "{path} is documented");
    }
    // A body is required where the server requires one, and not for logout.
    assert_eq!(spec["paths"]["/api/auth/register"]["post"]["requestBody"]["required"], true);
    assert_ne!(spec["paths"]["/api/auth/logout"]["post"]["requestBody"]["required"], true);
    // Client generators name methods by operationId: each must be unique.
    let mut ids = std::collections::HashSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has an operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
        }
    }
    // The problem `code` is an enum of every code, and every code an error
    // response names is one of them.
    let codes: Vec<String> = spec["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
        .as_array()
        .expect("the problem code is an enum")
        .iter()
        .map(|code| code.as_str().unwrap().to_owned())
        .collect();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if operation["security"].as_array().is_some_and(|security| !security.is_empty()) {
                assert!(operation["responses"]["401"].is_object(), "{method} {path} documents 401");
            }
            for (status, response) in operation["responses"].as_object().unwrap() {
                assert!(response["headers"]["X-Request-Id"].is_object(), "{method} {path} {status}: X-Request-Id");
                if status.starts_with('4') || status.starts_with('5') {
                    let description = response["description"].as_str().unwrap_or("");
                    let named = description.split(|c: char| !(c.is_ascii_uppercase() || c == '_'));
                    for code in named.filter(|word| word.len() > 3 && word.contains('_') || *word == "CONFLICT") {
                        assert!(codes.iter().any(|known| known == code), "{method} {path} {status} names {code}");
                    }
                }
                if status == "409" || status == "503" {
                    assert!(response["headers"]["Retry-After"].is_object(), "{method} {path} {status}: Retry-After");
                }
            }
        }
    }
    let replayed = &spec["paths"]["/api/payments"]["post"]["responses"]["201"]["headers"]["Idempotent-Replayed"];
    assert!(replayed.is_object(), "a replay is marked");
    // The older paths are documented, and served.
    for older in ["/api/payments/process", "/api/coupons/user/{userId}"] {
        assert!(spec["paths"][older].is_object(), "{older} is documented");
    }
    let user = app.new_user().await;
    let held = app.get(&format!("/api/coupons/user/{}", user.id), Some(&user.token)).await;
    assert_eq!(held.status(), StatusCode::OK);
    let paid = app.post("/api/payments/process", Some(&user.token), serde_json::json!({"orderId": 0})).await;
    assert_eq!(paid.status(), StatusCode::BAD_REQUEST);
    let ui = app.get("/swagger-ui/", None).await;
    assert_eq!(ui.status(), StatusCode::OK);
    assert!(ui.text().await.unwrap().contains("swagger"));
}

/// The router serves what the document says and nothing else on its paths:
/// every documented operation reaches a handler, and every other method on
/// a documented path is 405. (Routes come from the handlers' attributes,
/// so a route outside the document could only be added by hand, as the
/// older paths are — and those are documented too.)
#[tokio::test]
async fn every_documented_path_serves_exactly_its_documented_methods() {
    let app = spawn_app().await;
    let spec: Value = app.get("/api/openapi.json", None).await.json().await.unwrap();
    for (path, item) in spec["paths"].as_object().unwrap() {
        let concrete: String = path
            .split('/')
            .map(|segment| if segment.starts_with('{') { "1" } else { segment })
            .collect::<Vec<_>>()
            .join("/");
        for method in ["get", "post", "put", "patch", "delete"] {
            let request = app.client.request(method.to_uppercase().parse().unwrap(), app.url(&concrete));
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if item.get(method).is_some() {
                let unrouted = status == StatusCode::METHOD_NOT_ALLOWED
                    || (status == StatusCode::NOT_FOUND && body["detail"] == "no such route");
                assert!(!unrouted, "{method} {path} is documented but answers {status} {body}");
            } else {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is served but not documented");
            }
        }
    }
}
