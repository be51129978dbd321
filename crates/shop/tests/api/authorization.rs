use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{assert_problem, spawn_app};

/// Every route that needs a token, with a valid body, for user 1.
fn protected_routes() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/api/users/me", None),
        (Method::GET, "/api/users/1/points", None),
        (Method::POST, "/api/users/1/points", Some(json!({"amount": 1000}))),
        (Method::GET, "/api/users/1/points/history", None),
        (Method::POST, "/api/admin/products", Some(json!({"name": "n", "price": 1, "stock": 1, "category": "c"}))),
        (Method::PATCH, "/api/admin/products/1", Some(json!({"price": 2}))),
    ]
}

#[tokio::test]
async fn every_protected_route_answers_401_without_a_valid_access_token() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let bad_tokens = [None, Some("garbage"), Some(user.refresh_token.as_str())];
    for (method, path, body) in protected_routes() {
        for token in bad_tokens {
            let response = app.request(method.clone(), path, token, body.clone()).await;
            assert_problem(response, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
        }
        let basic = app
            .client
            .request(method.clone(), app.url(path))
            .header("authorization", "Basic dXNlcjpwYXNz")
            .send()
            .await
            .unwrap();
        assert_problem(basic, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    }
}

#[tokio::test]
async fn a_user_may_not_act_on_another_users_points() {
    let app = spawn_app().await;
    let (alice, bob) = (app.new_user().await, app.new_user().await);
    let bobs = format!("/api/users/{}/points", bob.id);
    assert_problem(app.get(&bobs, Some(&alice.token)).await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    assert_problem(
        app.post(&bobs, Some(&alice.token), json!({"amount": 1000})).await,
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    )
    .await;
    assert_problem(app.get(&format!("{bobs}/history"), Some(&alice.token)).await, StatusCode::FORBIDDEN, "FORBIDDEN")
        .await;
    // A stranger's id that does not exist is 403 too: ids reveal nothing.
    assert_problem(app.get("/api/users/999999/points", Some(&alice.token)).await, StatusCode::FORBIDDEN, "FORBIDDEN")
        .await;
    assert_eq!(app.balance_and_ledger_sum(bob.id).await, (0, 0));
}

#[tokio::test]
async fn an_admin_may_act_on_any_user_and_gets_404_for_none() {
    let app = spawn_app().await;
    let (admin, bob) = (app.admin().await, app.new_user().await);
    let bobs = format!("/api/users/{}/points", bob.id);
    let charged: Value = app.post(&bobs, Some(&admin.token), json!({"amount": 5000})).await.json().await.unwrap();
    assert_eq!(charged, json!({"userId": bob.id, "balance": 5000}));
    assert_eq!(app.get(&bobs, Some(&admin.token)).await.status(), StatusCode::OK);
    assert_problem(app.get("/api/users/999999/points", Some(&admin.token)).await, StatusCode::NOT_FOUND, "NOT_FOUND")
        .await;
    assert_problem(
        app.post("/api/users/999999/points", Some(&admin.token), json!({"amount": 1000})).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    assert_problem(
        app.get("/api/users/999999/points/history", Some(&admin.token)).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
}

#[tokio::test]
async fn admin_routes_refuse_users() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    for (method, path, body) in protected_routes().into_iter().filter(|(_, path, _)| path.starts_with("/api/admin")) {
        assert_problem(app.request(method, path, Some(&user.token), body).await, StatusCode::FORBIDDEN, "FORBIDDEN")
            .await;
    }
    let products: i64 = sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(&app.db).await.unwrap();
    assert_eq!(products, 0);
}

#[tokio::test]
async fn checks_run_401_then_400_then_403() {
    let app = spawn_app().await;
    let (alice, bob) = (app.new_user().await, app.new_user().await);
    let bobs = format!("/api/users/{}/points", bob.id);
    // Bad body and no token: 401 first.
    assert_problem(app.post(&bobs, None, json!({"amount": 1})).await, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
        .await;
    // Bad body on someone else's wallet: 400 before 403.
    assert_problem(
        app.post(&bobs, Some(&alice.token), json!({"amount": 1})).await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    assert_problem(
        app.get("/api/users/abc/points", Some(&alice.token)).await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
}

#[tokio::test]
async fn admin_rights_are_the_accounts_now_not_the_tokens() {
    let app = spawn_app().await;
    let customer = app.new_user().await;
    let order = app.order_id(&customer, &[(app.create_product("lamp", 5000, 10).await, 1)], None).await;
    // A second admin, signed in while an admin.
    let second = app.new_user().await;
    sqlx::query("UPDATE users SET role = 'admin' WHERE id = $1").bind(second.id).execute(&app.db).await.unwrap();
    let login = app.post("/api/auth/login", None, json!({"email": second.email, "password": "password123"})).await;
    let token = login.json::<Value>().await.unwrap()["accessToken"].as_str().unwrap().to_owned();
    let product = json!({"name": "desk", "price": 1000, "stock": 1, "category": "home"});
    let created = app.post("/api/admin/products", Some(&token), product.clone()).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(app.get(&format!("/api/orders/{order}"), Some(&token)).await.status(), StatusCode::OK);

    // Demoted: the same token is a customer's at once.
    sqlx::query("UPDATE users SET role = 'user' WHERE id = $1").bind(second.id).execute(&app.db).await.unwrap();
    let refused = app.post("/api/admin/products", Some(&token), product.clone()).await;
    assert_problem(refused, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    assert_problem(app.get(&format!("/api/orders/{order}"), Some(&token)).await, StatusCode::NOT_FOUND, "NOT_FOUND")
        .await;
    assert_eq!(app.get("/api/users/me", Some(&token)).await.status(), StatusCode::OK, "still a customer");

    // Promoted again and then deleted: the token is nobody's.
    sqlx::query("UPDATE users SET role = 'admin' WHERE id = $1").bind(second.id).execute(&app.db).await.unwrap();
    assert_eq!(app.post("/api/admin/products", Some(&token), product.clone()).await.status(), StatusCode::CREATED);
    sqlx::query("DELETE FROM users WHERE id = $1").bind(second.id).execute(&app.db).await.unwrap();
    let refused = app.post("/api/admin/products", Some(&token), product).await;
    assert_problem(refused, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
    let products: i64 = sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(&app.db).await.unwrap();
    assert_eq!(products, 3, "the lamp and two desks");
}
