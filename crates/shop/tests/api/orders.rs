use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestApp, User, assert_problem, spawn_app, spawn_app_with};

/// A user with points and a coupon of `kind` `value` (minimum `min`).
async fn shopper_with_coupon(app: &TestApp, kind: &str, value: i64, min: i64) -> (User, i64) {
    let code = format!("C_{}", uuid::Uuid::new_v4().simple()).to_uppercase();
    app.create_coupon_type(&code, 10, json!({"kind": kind, "value": value, "minOrderAmount": min})).await;
    let user = app.new_user().await;
    let coupon: Value = app.issue_coupon(&user, &code).await.json().await.unwrap();
    (user, coupon["couponId"].as_i64().unwrap())
}

#[tokio::test]
async fn an_order_reserves_its_stock_and_answers_its_lines_and_amounts() {
    let app = spawn_app().await;
    let (americano, latte) =
        (app.create_product("아메리카노", 3000, 100).await, app.create_product("카페라떼", 4000, 80).await);
    let user = app.new_user().await;
    let response = app.place_order(&user, &[(latte, 1), (americano, 2)], None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["userId"], user.id);
    assert_eq!(order["status"], "PENDING");
    assert_eq!(
        (order["totalAmount"].as_i64(), order["discountAmount"].as_i64(), order["finalAmount"].as_i64()),
        (Some(10000), Some(0), Some(10000))
    );
    assert_eq!(
        order["items"],
        json!([
            {"productId": americano, "name": "아메리카노", "quantity": 2, "price": 3000},
            {"productId": latte, "name": "카페라떼", "quantity": 1, "price": 4000},
        ])
    );
    assert!(order["couponId"].is_null());
    assert_eq!(order["couponUsed"], false);
    assert!(order["paidAt"].is_null());
    let created = chrono::DateTime::parse_from_rfc3339(order["createdAt"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(order["expiresAt"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_seconds(), 600);
    assert_eq!((app.stock(americano).await, app.stock(latte).await), (98, 79));

    let id = order["orderId"].as_i64().unwrap();
    let read: Value = app.get(&format!("/api/orders/{id}"), Some(&user.token)).await.json().await.unwrap();
    assert_eq!(read, order);
    app.assert_invariants().await;
}

#[tokio::test]
async fn bad_orders_are_refused_in_the_documented_order_and_take_nothing() {
    let app = spawn_app().await;
    let (cheap, scarce, plenty) = (
        app.create_product("gum", 500, 100).await,
        app.create_product("scarce", 2000, 1).await,
        app.create_product("plenty", 2000, 100).await,
    );
    let user = app.new_user().await;
    let lines_of = |n: i64| (1..=n).map(|i| json!({"productId": i, "quantity": 1})).collect::<Vec<_>>();
    for body in [
        json!({"items": []}),
        json!({"items": lines_of(21)}),
        json!({"items": [{"productId": plenty, "quantity": 0}]}),
        json!({"items": [{"productId": plenty, "quantity": 11}]}),
        json!({"items": [{"productId": plenty, "quantity": 1}, {"productId": plenty, "quantity": 2}]}),
        json!({"items": [{"productId": plenty, "quantity": 1.5}]}),
        json!({"items": [{"productId": 0, "quantity": 1}]}),
        json!({"items": [{"productId": plenty}]}),
        json!({}),
    ] {
        let problem = assert_problem(
            app.post("/api/orders", Some(&user.token), body.clone()).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        )
        .await;
        assert!(problem["detail"].as_str().unwrap().starts_with("items"), "{body}: {problem}");
    }
    // 400 (shape) before 403 (userId) before 404 (product) before 400 (total) before 409 (stock).
    let not_mine = app
        .post(
            "/api/orders",
            Some(&user.token),
            json!({"items": [{"productId": 999, "quantity": 1}], "userId": user.id + 1}),
        )
        .await;
    assert_problem(not_mine, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    assert_problem(app.place_order(&user, &[(999, 1), (cheap, 1)], None).await, StatusCode::NOT_FOUND, "NOT_FOUND")
        .await;
    let small =
        assert_problem(app.place_order(&user, &[(cheap, 1)], None).await, StatusCode::BAD_REQUEST, "VALIDATION_FAILED")
            .await;
    assert!(small["detail"].as_str().unwrap().starts_with("totalAmount"));
    assert_problem(
        app.place_order(&user, &[(plenty, 3), (scarce, 2)], None).await,
        StatusCode::CONFLICT,
        "OUT_OF_STOCK",
    )
    .await;
    assert_eq!((app.stock(plenty).await, app.stock(scarce).await), (100, 1), "no line's stock was taken");
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&app.db).await.unwrap();
    assert_eq!(orders, 0);
    assert_problem(
        app.place_order(&user, &[(plenty, 1)], Some(-1)).await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;
    assert_problem(
        app.post("/api/orders", None, json!({"items": [{"productId": plenty, "quantity": 1}]})).await,
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
    )
    .await;
}

#[tokio::test]
async fn a_coupon_discounts_capped_at_half_and_is_held_then_used() {
    let app = spawn_app().await;
    let tee = app.create_product("티셔츠", 15000, 30).await;
    let (user, coupon) = shopper_with_coupon(&app, "PERCENT", 10, 10000).await;
    let order: Value = app.place_order(&user, &[(tee, 1)], Some(coupon)).await.json().await.unwrap();
    assert_eq!((order["discountAmount"].as_i64(), order["finalAmount"].as_i64()), (Some(1500), Some(13500)));
    assert_eq!((order["couponId"].as_i64(), order["couponUsed"].as_bool()), (Some(coupon), Some(true)));
    let held: Value =
        app.get(&format!("/api/users/{}/coupons", user.id), Some(&user.token)).await.json().await.unwrap();
    assert_eq!(held[0]["status"], "RESERVED");
    assert_problem(app.place_order(&user, &[(tee, 1)], Some(coupon)).await, StatusCode::CONFLICT, "COUPON_NOT_USABLE")
        .await;

    app.charge(&user, 20000).await;
    assert_eq!(app.pay(&user, order["orderId"].as_i64().unwrap()).await.status(), StatusCode::CREATED);
    let held: Value =
        app.get(&format!("/api/users/{}/coupons", user.id), Some(&user.token)).await.json().await.unwrap();
    assert_eq!((held[0]["status"].as_str(), held[0]["isUsed"].as_bool()), (Some("USED"), Some(true)));

    let (other, big_fixed) = shopper_with_coupon(&app, "FIXED", 1_000_000, 0).await;
    let capped: Value = app.place_order(&other, &[(tee, 1)], Some(big_fixed)).await.json().await.unwrap();
    assert_eq!((capped["discountAmount"].as_i64(), capped["finalAmount"].as_i64()), (Some(7500), Some(7500)));
    app.assert_invariants().await;
}

#[tokio::test]
async fn coupons_that_are_not_usable_are_refused() {
    let app = spawn_app().await;
    let tee = app.create_product("티셔츠", 15000, 30).await;
    let (owner, coupon) = shopper_with_coupon(&app, "FIXED", 1000, 20000).await;
    let stranger = app.new_user().await;
    assert_problem(app.place_order(&owner, &[(tee, 1)], Some(coupon)).await, StatusCode::CONFLICT, "COUPON_NOT_USABLE")
        .await;
    assert_problem(
        app.place_order(&stranger, &[(tee, 2)], Some(coupon)).await,
        StatusCode::CONFLICT,
        "COUPON_NOT_USABLE",
    )
    .await;
    assert_problem(
        app.place_order(&owner, &[(tee, 2)], Some(999_999)).await,
        StatusCode::CONFLICT,
        "COUPON_NOT_USABLE",
    )
    .await;
    sqlx::query("UPDATE coupons SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(coupon)
        .execute(&app.db)
        .await
        .unwrap();
    assert_problem(app.place_order(&owner, &[(tee, 2)], Some(coupon)).await, StatusCode::CONFLICT, "COUPON_NOT_USABLE")
        .await;
    assert_eq!(app.stock(tee).await, 30);
}

#[tokio::test]
async fn orders_are_private_and_listed_newest_first() {
    let app = spawn_app().await;
    let product = app.create_product("bread", 1000, 100).await;
    let (user, other) = (app.new_user().await, app.new_user().await);
    let mut ids = Vec::new();
    for quantity in 1..=3 {
        ids.push(app.order_id(&user, &[(product, quantity)], None).await);
    }
    let path = format!("/api/users/{}/orders", user.id);
    let first: Value = app.get(&format!("{path}?limit=2"), Some(&user.token)).await.json().await.unwrap();
    let listed: Vec<i64> = first["items"].as_array().unwrap().iter().map(|o| o["orderId"].as_i64().unwrap()).collect();
    assert_eq!(listed, vec![ids[2], ids[1]]);
    assert_eq!(first["items"][0]["items"][0]["quantity"], 3);
    let cursor = first["nextCursor"].as_str().unwrap();
    let second: Value =
        app.get(&format!("{path}?limit=2&cursor={cursor}"), Some(&user.token)).await.json().await.unwrap();
    assert_eq!(second["items"][0]["orderId"], ids[0]);
    assert!(second["nextCursor"].is_null());

    assert_problem(
        app.get(&format!("/api/orders/{}", ids[0]), Some(&other.token)).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    assert_problem(app.get("/api/orders/999999", Some(&user.token)).await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    assert_problem(app.get(&path, Some(&other.token)).await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let admin = app.admin().await;
    assert_eq!(app.get(&format!("/api/orders/{}", ids[0]), Some(&admin.token)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn admins_move_paid_orders_through_fulfilment_only() {
    let app = spawn_app().await;
    let product = app.create_product("lamp", 5000, 10).await;
    let (user, admin) = (app.new_user().await, app.admin().await);
    app.charge(&user, 10000).await;
    let order = app.order_id(&user, &[(product, 1)], None).await;
    let path = format!("/api/admin/orders/{order}/status");
    let advance = |status: &str| app.request(Method::POST, &path, Some(&admin.token), Some(json!({"status": status})));
    assert_problem(advance("SHIPPED").await, StatusCode::CONFLICT, "INVALID_STATE_TRANSITION").await;
    app.pay(&user, order).await;
    assert_problem(advance("DELIVERED").await, StatusCode::CONFLICT, "INVALID_STATE_TRANSITION").await;
    for status in ["SHIPPED", "DELIVERED", "COMPLETED"] {
        let moved: Value = advance(status).await.json().await.unwrap();
        assert_eq!(moved["status"], status);
    }
    assert_problem(advance("PAID").await, StatusCode::CONFLICT, "INVALID_STATE_TRANSITION").await;
    assert_problem(advance("LOST").await, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    let as_user = app.request(Method::POST, &path, Some(&user.token), Some(json!({"status": "SHIPPED"}))).await;
    assert_problem(as_user, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let missing = app
        .request(
            Method::POST,
            "/api/admin/orders/999999/status",
            Some(&admin.token),
            Some(json!({"status": "SHIPPED"})),
        )
        .await;
    assert_problem(missing, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    app.assert_invariants().await;
}

#[tokio::test]
async fn an_order_replays_under_its_idempotency_key() {
    let app = spawn_app_with(|_| {}).await;
    let product = app.create_product("cup", 2000, 10).await;
    let user = app.new_user().await;
    let body = json!({"items": [{"productId": product, "quantity": 2}]});
    let first: Value =
        app.post_with_key("/api/orders", &user.token, "order-1", &body).send().await.unwrap().json().await.unwrap();
    let again = app.post_with_key("/api/orders", &user.token, "order-1", &body).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(app.stock(product).await, 8, "taken once");
}
