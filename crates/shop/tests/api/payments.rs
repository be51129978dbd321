use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, assert_problem, spawn_app, spawn_app_with};

async fn ledger(app: &TestApp, user_id: i64) -> Vec<(String, i64, Option<i64>)> {
    sqlx::query_as("SELECT kind, amount, order_id FROM point_ledger WHERE user_id = $1 ORDER BY id")
        .bind(user_id)
        .fetch_all(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_payment_takes_the_points_once_and_marks_the_order_paid() {
    let app = spawn_app().await;
    let product = app.create_product("mug", 4000, 10).await;
    let user = app.new_user().await;
    app.charge(&user, 10000).await;
    let order = app.order_id(&user, &[(product, 2)], None).await;
    let response = app.pay(&user, order).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let payment: Value = response.json().await.unwrap();
    assert_eq!(payment["orderId"], order);
    assert_eq!((payment["finalAmount"].as_i64(), payment["status"].as_str()), (Some(8000), Some("SUCCESS")));
    assert_eq!(payment["couponUsed"], false);
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (2000, 2000));
    assert_eq!(ledger(&app, user.id).await.last().unwrap(), &("USE".to_owned(), -8000, Some(order)));
    let read: Value = app.get(&format!("/api/orders/{order}"), Some(&user.token)).await.json().await.unwrap();
    assert_eq!(read["status"], "PAID");
    assert!(read["paidAt"].is_string());

    let id = payment["paymentId"].as_i64().unwrap();
    let fetched: Value = app.get(&format!("/api/payments/{id}"), Some(&user.token)).await.json().await.unwrap();
    assert_eq!(fetched, payment);
    assert_problem(app.pay(&user, order).await, StatusCode::CONFLICT, "ORDER_NOT_PAYABLE").await;
    let stranger = app.new_user().await;
    assert_problem(
        app.get(&format!("/api/payments/{id}"), Some(&stranger.token)).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE order_id = $1 AND event_type = 'ORDER_PAID'")
            .bind(order)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(events, 1, "the event is written with the payment");
    app.assert_invariants().await;
}

#[tokio::test]
async fn refusals_leave_the_order_pending_and_the_points_untouched() {
    let app = spawn_app().await;
    let product = app.create_product("chair", 30000, 10).await;
    let (user, stranger) = (app.new_user().await, app.new_user().await);
    app.charge(&user, 20000).await;
    let order = app.order_id(&user, &[(product, 1)], None).await;
    assert_problem(app.pay(&user, order).await, StatusCode::CONFLICT, "INSUFFICIENT_POINTS").await;
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (20000, 20000));
    let read: Value = app.get(&format!("/api/orders/{order}"), Some(&user.token)).await.json().await.unwrap();
    assert_eq!(read["status"], "PENDING");

    assert_problem(app.pay(&stranger, order).await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    assert_problem(app.pay(&user, 999_999).await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let not_mine = app.post("/api/payments", Some(&user.token), json!({"orderId": order, "userId": stranger.id})).await;
    assert_problem(not_mine, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    assert_problem(
        app.post("/api/payments", Some(&user.token), json!({"orderId": "1"})).await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
    )
    .await;

    sqlx::query("UPDATE orders SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(order)
        .execute(&app.db)
        .await
        .unwrap();
    app.charge(&user, 20000).await;
    assert_problem(app.pay(&user, order).await, StatusCode::CONFLICT, "ORDER_EXPIRED").await;
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (40000, 40000));
    app.assert_invariants().await;
}

#[tokio::test]
async fn the_older_payment_path_pays_too() {
    let app = spawn_app().await;
    let product = app.create_product("pen", 1000, 10).await;
    let user = app.new_user().await;
    app.charge(&user, 5000).await;
    let order = app.order_id(&user, &[(product, 1)], None).await;
    let paid = app.post("/api/payments/process", Some(&user.token), json!({"orderId": order, "userId": user.id})).await;
    assert_eq!(paid.status(), StatusCode::CREATED);
    assert_eq!(paid.json::<Value>().await.unwrap()["orderId"], order);
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (4000, 4000));
    app.assert_invariants().await;
}

#[tokio::test]
async fn cancelling_a_pending_order_releases_its_stock_and_coupon() {
    let app = spawn_app().await;
    let product = app.create_product("bag", 20000, 5).await;
    app.create_coupon_type("BAG_OFF", 5, json!({})).await;
    let user = app.new_user().await;
    let coupon: Value = app.issue_coupon(&user, "BAG_OFF").await.json().await.unwrap();
    let coupon = coupon["couponId"].as_i64().unwrap();
    let order = app.order_id(&user, &[(product, 2)], Some(coupon)).await;
    assert_eq!(app.stock(product).await, 3);
    let cancelled = app.post(&format!("/api/orders/{order}/cancel"), Some(&user.token), json!({})).await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    assert_eq!(cancelled.json::<Value>().await.unwrap()["status"], "CANCELLED");
    assert_eq!(app.stock(product).await, 5);
    let held: Value =
        app.get(&format!("/api/users/{}/coupons", user.id), Some(&user.token)).await.json().await.unwrap();
    assert_eq!(held[0]["status"], "AVAILABLE");
    assert_problem(
        app.post(&format!("/api/orders/{order}/cancel"), Some(&user.token), json!({})).await,
        StatusCode::CONFLICT,
        "ORDER_NOT_CANCELLABLE",
    )
    .await;
    assert_problem(app.pay(&user, order).await, StatusCode::CONFLICT, "ORDER_NOT_PAYABLE").await;
    let again = app.order_id(&user, &[(product, 1)], Some(coupon)).await;
    assert!(again > order, "the released coupon is usable again");
    app.assert_invariants().await;
}

#[tokio::test]
async fn a_paid_order_is_refunded_within_the_hour_unless_it_used_a_coupon() {
    let app = spawn_app().await;
    let product = app.create_product("shoe", 10000, 10).await;
    let (user, stranger) = (app.new_user().await, app.new_user().await);
    app.charge(&user, 100000).await;
    let order = app.order_id(&user, &[(product, 3)], None).await;
    app.pay(&user, order).await;
    let path = format!("/api/orders/{order}/cancel");
    assert_problem(app.post(&path, Some(&stranger.token), json!({})).await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    assert_eq!(app.post(&path, Some(&user.token), json!({})).await.status(), StatusCode::OK);
    assert_eq!(app.stock(product).await, 10);
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (100000, 100000));
    assert_eq!(ledger(&app, user.id).await.last().unwrap(), &("REFUND".to_owned(), 30000, Some(order)));

    let late = app.order_id(&user, &[(product, 1)], None).await;
    app.pay(&user, late).await;
    sqlx::query("UPDATE orders SET paid_at = now() - interval '61 minutes' WHERE id = $1")
        .bind(late)
        .execute(&app.db)
        .await
        .unwrap();
    assert_problem(
        app.post(&format!("/api/orders/{late}/cancel"), Some(&user.token), json!({})).await,
        StatusCode::CONFLICT,
        "ORDER_NOT_CANCELLABLE",
    )
    .await;

    app.create_coupon_type("SHOE_OFF", 5, json!({})).await;
    let coupon: Value = app.issue_coupon(&user, "SHOE_OFF").await.json().await.unwrap();
    let with_coupon = app.order_id(&user, &[(product, 1)], coupon["couponId"].as_i64()).await;
    app.pay(&user, with_coupon).await;
    assert_problem(
        app.post(&format!("/api/orders/{with_coupon}/cancel"), Some(&user.token), json!({})).await,
        StatusCode::CONFLICT,
        "ORDER_NOT_CANCELLABLE",
    )
    .await;
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unpaid_orders_expire_and_give_back_their_stock_and_coupon() {
    let app = spawn_app_with(|config| config.order_payment_timeout_secs = 1).await;
    let product = app.create_product("ticket", 5000, 2).await;
    app.create_coupon_type("TICKET_OFF", 5, json!({})).await;
    let user = app.new_user().await;
    let coupon: Value = app.issue_coupon(&user, "TICKET_OFF").await.json().await.unwrap();
    let order = app.order_id(&user, &[(product, 2)], coupon["couponId"].as_i64()).await;
    assert_eq!(app.stock(product).await, 0);
    let mut status = String::new();
    for _ in 0..50 {
        let read: Value = app.get(&format!("/api/orders/{order}"), Some(&user.token)).await.json().await.unwrap();
        status = read["status"].as_str().unwrap().to_owned();
        if status == "EXPIRED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "EXPIRED", "the sweeper expired the order within 5 s");
    assert_eq!(app.stock(product).await, 2);
    let held: Value =
        app.get(&format!("/api/users/{}/coupons", user.id), Some(&user.token)).await.json().await.unwrap();
    assert_eq!(held[0]["status"], "AVAILABLE");
    app.assert_invariants().await;
}

#[tokio::test]
async fn top_sellers_rank_by_quantity_within_the_days_minus_cancellations() {
    let app = spawn_app().await;
    let (a, b, c) = (
        app.create_product("a", 1000, 100).await,
        app.create_product("b", 2000, 100).await,
        app.create_product("c", 3000, 100).await,
    );
    let user = app.new_user().await;
    app.charge(&user, 1_000_000).await;
    let top = |query: &'static str| {
        let app = &app;
        async move { app.get(&format!("/api/products/top-sellers{query}"), None).await.json::<Value>().await.unwrap() }
    };
    assert_eq!(top("").await, json!([]));
    for (product, quantity) in [(c, 2), (b, 2), (a, 5)] {
        let order = app.order_id(&user, &[(product, quantity)], None).await;
        assert_eq!(app.pay(&user, order).await.status(), StatusCode::CREATED);
    }
    // Shown at once after payment; b and c tie, the lower id first.
    let ranked = top("").await;
    let ids: Vec<i64> = ranked.as_array().unwrap().iter().map(|r| r["productId"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![a, b, c]);
    assert_eq!(
        ranked[0],
        json!({"rank": 1, "productId": a, "name": "a", "price": 1000, "salesCount": 5, "totalRevenue": 5000})
    );
    assert_eq!(top("?limit=1").await.as_array().unwrap().len(), 1);

    let cancelled = app.order_id(&user, &[(c, 4)], None).await;
    app.pay(&user, cancelled).await;
    assert_eq!(top("").await[0]["productId"], c);
    app.post(&format!("/api/orders/{cancelled}/cancel"), Some(&user.token), json!({})).await;
    assert_eq!(top("").await[0]["productId"], a, "a cancelled payment no longer counts");

    // An old payment counts only in a window that reaches its day, and the
    // ranking comes back from PostgreSQL when Redis has lost it.
    let old = app.order_id(&user, &[(b, 10)], None).await;
    app.pay(&user, old).await;
    sqlx::query("UPDATE orders SET paid_at = now() - interval '4 days' WHERE id = $1")
        .bind(old)
        .execute(&app.db)
        .await
        .unwrap();
    app.lose_redis_keys().await;
    assert_eq!(top("?days=3").await[0]["productId"], a);
    let week = top("?days=7").await;
    assert_eq!((week[0]["productId"].as_i64(), week[0]["salesCount"].as_i64()), (Some(b), Some(12)));
    for bad in ["?days=0", "?days=31", "?limit=0", "?limit=101", "?days=x"] {
        assert_problem(
            app.get(&format!("/api/products/top-sellers{bad}"), None).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        )
        .await;
    }
}

#[tokio::test]
async fn payment_and_cancel_replay_under_their_idempotency_keys() {
    let app = spawn_app().await;
    let product = app.create_product("kettle", 6000, 10).await;
    let user = app.new_user().await;
    app.charge(&user, 20000).await;
    let order = app.order_id(&user, &[(product, 1)], None).await;
    let body = json!({"orderId": order});
    let first: Value =
        app.post_with_key("/api/payments", &user.token, "pay-1", &body).send().await.unwrap().json().await.unwrap();
    let again = app.post_with_key("/api/payments", &user.token, "pay-1", &body).send().await.unwrap();
    assert_eq!(
        (again.status(), again.headers()["idempotent-replayed"].to_str().unwrap()),
        (StatusCode::CREATED, "true")
    );
    assert_eq!(again.json::<Value>().await.unwrap(), first);

    let path = format!("/api/orders/{order}/cancel");
    let cancelled: Value =
        app.post_with_key(&path, &user.token, "cancel-1", &json!(null)).send().await.unwrap().json().await.unwrap();
    assert_eq!(cancelled["status"], "CANCELLED");
    let replayed = app.post_with_key(&path, &user.token, "cancel-1", &json!(null)).send().await.unwrap();
    assert_eq!(
        (replayed.status(), replayed.headers()["idempotent-replayed"].to_str().unwrap()),
        (StatusCode::OK, "true")
    );
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (20000, 20000), "paid once, refunded once");
    app.assert_invariants().await;
}

/// A payment and the cancellation of the paid order each record an event
/// in their transaction: the envelope its receivers will get, numbered per
/// order, with the order's lines.
#[tokio::test]
async fn paying_and_cancelling_record_numbered_events_with_the_orders_lines() {
    let app = spawn_app().await;
    let product = app.create_product("kettle", 12000, 10).await;
    let user = app.new_user().await;
    app.charge(&user, 100000).await;
    let order = app.order_id(&user, &[(product, 2)], None).await;
    let payment: Value = app.pay(&user, order).await.json().await.unwrap();
    assert_eq!(
        app.post(&format!("/api/orders/{order}/cancel"), Some(&user.token), json!({})).await.status(),
        StatusCode::OK
    );

    let events: Vec<(String, i32, String)> =
        sqlx::query_as("SELECT event_type, sequence, body FROM outbox_events WHERE order_id = $1 ORDER BY sequence")
            .bind(order)
            .fetch_all(&app.db)
            .await
            .unwrap();
    let kinds: Vec<(&str, i32)> = events.iter().map(|(kind, sequence, _)| (kind.as_str(), *sequence)).collect();
    assert_eq!(kinds, [("ORDER_PAID", 1), ("ORDER_CANCELLED", 2)]);
    let paid: Value = serde_json::from_str(&events[0].2).unwrap();
    assert_eq!(
        (paid["type"].as_str(), paid["orderId"].as_i64(), paid["sequence"].as_i64()),
        (Some("ORDER_PAID"), Some(order), Some(1))
    );
    assert!(paid["eventId"].is_string() && paid["occurredAt"].is_string(), "{paid}");
    let data = &paid["data"];
    assert_eq!((data["userId"].as_i64(), data["paymentId"].as_i64()), (Some(user.id), payment["paymentId"].as_i64()));
    assert_eq!(
        (data["totalAmount"].as_i64(), data["discountAmount"].as_i64(), data["finalAmount"].as_i64()),
        (Some(24000), Some(0), Some(24000))
    );
    assert!(data["couponId"].is_null() && data["paidAt"].is_string(), "{data}");
    assert_eq!(data["items"], json!([{"productId": product, "name": "kettle", "quantity": 2, "unitPrice": 12000}]));
    let cancelled: Value = serde_json::from_str(&events[1].2).unwrap();
    assert_eq!((cancelled["type"].as_str(), cancelled["sequence"].as_i64()), (Some("ORDER_CANCELLED"), Some(2)));
    assert_eq!(
        (cancelled["data"]["refundAmount"].as_i64(), cancelled["data"]["userId"].as_i64()),
        (Some(24000), Some(user.id))
    );
    assert_eq!(cancelled["data"]["items"], data["items"]);
    assert!(cancelled["data"]["cancelledAt"].is_string());
}
