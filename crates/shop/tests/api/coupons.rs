use chrono::{Duration, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{assert_problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn issue_answers_the_coupon_and_lists_show_it() {
    let app = spawn_app().await;
    let code =
        app.create_coupon_type("TEN_OFF", 5, json!({"kind": "PERCENT", "value": 10, "minOrderAmount": 10000})).await;
    let user = app.new_user().await;
    let response = app.issue_coupon(&user, &code).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let coupon: Value = response.json().await.unwrap();
    assert_eq!(coupon["userId"], user.id);
    assert_eq!(coupon["couponType"], "TEN_OFF");
    assert_eq!(
        (coupon["kind"].as_str(), coupon["discountRate"].as_i64(), coupon["discountAmount"].as_i64()),
        (Some("PERCENT"), Some(10), Some(0))
    );
    assert_eq!(coupon["minOrderAmount"], 10000);
    assert_eq!((coupon["status"].as_str(), coupon["isUsed"].as_bool()), (Some("AVAILABLE"), Some(false)));
    let issued = chrono::DateTime::parse_from_rfc3339(coupon["issuedAt"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(coupon["expiresAt"].as_str().unwrap()).unwrap();
    assert_eq!((expires - issued).num_days(), 30);

    for path in [format!("/api/users/{}/coupons", user.id), format!("/api/coupons/user/{}", user.id)] {
        let held: Value = app.get(&path, Some(&user.token)).await.json().await.unwrap();
        assert_eq!(held, json!([coupon.clone()]));
    }
    let status: Value = app.get("/api/coupons/status/TEN_OFF", None).await.json().await.unwrap();
    assert_eq!(
        status,
        json!({"couponType": "TEN_OFF", "totalQuantity": 5, "issued": 1, "remaining": 4, "soldOut": false})
    );
    let types: Value = app.get("/api/coupon-types", None).await.json().await.unwrap();
    assert_eq!(types[0]["issuedQuantity"], 1);
    assert_eq!(types[0]["remainingQuantity"], 4);
    assert!(types[0]["issueStartsAt"].is_null());
}

#[tokio::test]
async fn issue_refuses_with_each_code_and_changes_nothing() {
    let app = spawn_app().await;
    let later = (Utc::now() + Duration::hours(1)).to_rfc3339();
    let earlier = (Utc::now() - Duration::hours(1)).to_rfc3339();
    let not_yet = app.create_coupon_type("NOT_YET", 5, json!({"issueStartsAt": later})).await;
    let ended = app.create_coupon_type("ENDED", 5, json!({"issueEndsAt": earlier})).await;
    let single = app.create_coupon_type("SINGLE", 1, json!({})).await;
    let (user, other) = (app.new_user().await, app.new_user().await);

    assert_problem(app.issue_coupon(&user, &not_yet).await, StatusCode::CONFLICT, "COUPON_NOT_OPEN").await;
    assert_problem(app.issue_coupon(&user, &ended).await, StatusCode::CONFLICT, "COUPON_NOT_OPEN").await;
    assert_problem(app.issue_coupon(&user, "NO_SUCH").await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    assert_problem(app.issue_coupon(&user, "lower-case").await, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_eq!(app.issue_coupon(&user, &single).await.status(), StatusCode::CREATED);
    assert_problem(app.issue_coupon(&user, &single).await, StatusCode::CONFLICT, "COUPON_ALREADY_ISSUED").await;
    assert_problem(app.issue_coupon(&other, &single).await, StatusCode::CONFLICT, "COUPON_SOLD_OUT").await;

    let as_someone_else =
        app.post("/api/coupons/issue", Some(&other.token), json!({"couponType": "NOT_YET", "userId": user.id})).await;
    assert_problem(as_someone_else, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    let as_self =
        app.post("/api/coupons/issue", Some(&other.token), json!({"couponType": "ENDED", "userId": other.id})).await;
    assert_problem(as_self, StatusCode::CONFLICT, "COUPON_NOT_OPEN").await;
    let id_as_text = app
        .post("/api/coupons/issue", Some(&other.token), json!({"couponType": "ENDED", "userId": other.id.to_string()}))
        .await;
    assert_problem(id_as_text, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;
    assert_problem(
        app.post("/api/coupons/issue", None, json!({"couponType": "SINGLE"})).await,
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
    )
    .await;
    app.assert_invariants().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM coupons").fetch_one(&app.db).await.unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn an_issue_replays_under_its_idempotency_key() {
    let app = spawn_app().await;
    let code = app.create_coupon_type("ONCE", 5, json!({})).await;
    let user = app.new_user().await;
    let body = json!({"couponType": code});
    let first = app.post_with_key("/api/coupons/issue", &user.token, "issue-1", &body).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = app.post_with_key("/api/coupons/issue", &user.token, "issue-1", &body).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
}

#[tokio::test]
async fn admins_create_campaigns_with_valid_terms_and_unique_codes() {
    let app = spawn_app().await;
    let (admin, user) = (app.admin().await, app.new_user().await);
    let valid = json!({"code": "WELCOME", "kind": "FIXED", "value": 3000, "minOrderAmount": 10000, "totalQuantity": 10, "validDays": 7});
    let created = app.post("/api/admin/coupon-types", Some(&admin.token), valid.clone()).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    assert_eq!((created["code"].as_str(), created["remainingQuantity"].as_i64()), (Some("WELCOME"), Some(10)));
    assert_problem(
        app.post("/api/admin/coupon-types", Some(&admin.token), valid.clone()).await,
        StatusCode::CONFLICT,
        "CONFLICT",
    )
    .await;
    assert_problem(
        app.post("/api/admin/coupon-types", Some(&user.token), valid.clone()).await,
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    )
    .await;

    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body["code"] = json!("OTHER");
        body[field] = value;
        body
    };
    for (body, field) in [
        (with("code", json!("bad code")), "code"),
        (with("kind", json!("HALF")), "kind"),
        (with("value", json!(0)), "value"),
        (json!({"code": "P", "kind": "PERCENT", "value": 101, "totalQuantity": 1, "validDays": 1}), "value"),
        (with("totalQuantity", json!(0)), "totalQuantity"),
        (with("validDays", json!(366)), "validDays"),
        (with("issueStartsAt", json!("yesterday")), "issueStartsAt"),
        (with("issueEndsAt", json!("2000-01-01T00:00:00Z")), "issueEndsAt"),
    ] {
        let body = if field == "issueEndsAt" {
            let mut body = body;
            body["issueStartsAt"] = json!("2001-01-01T00:00:00Z");
            body
        } else {
            body
        };
        let problem = assert_problem(
            app.post("/api/admin/coupon-types", Some(&admin.token), body).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
        )
        .await;
        assert!(problem["detail"].as_str().unwrap().starts_with(field), "{problem}");
    }
    let types: Value = app.get("/api/coupon-types", None).await.json().await.unwrap();
    assert_eq!(types.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn coupon_reads_check_their_input() {
    let app = spawn_app_with(|config| config.seed_demo_data = true).await;
    let (alice, bob) = (app.new_user().await, app.new_user().await);
    assert_problem(app.get("/api/coupons/status/NOPE", None).await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    assert_problem(app.get("/api/coupons/status/nope!", None).await, StatusCode::BAD_REQUEST, "VALIDATION_FAILED")
        .await;
    let status: Value = app.get("/api/coupons/status/FIXED_2000", None).await.json().await.unwrap();
    assert_eq!(status["remaining"], 100);
    assert_problem(
        app.get(&format!("/api/users/{}/coupons", bob.id), Some(&alice.token)).await,
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    )
    .await;
    assert_problem(
        app.get(&format!("/api/coupons/user/{}", bob.id), None).await,
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
    )
    .await;
    let admin = app.admin().await;
    assert_problem(app.get("/api/users/999999/coupons", Some(&admin.token)).await, StatusCode::NOT_FOUND, "NOT_FOUND")
        .await;
}

#[tokio::test]
async fn an_asynchronous_issue_is_accepted_then_issued_and_only_its_requester_sees_it() {
    let app = spawn_app().await;
    let code = app.create_coupon_type("LATER", 1, json!({})).await;
    let (user, other) = (app.new_user().await, app.new_user().await);
    let accepted = app.issue_coupon_async(&user, &code).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let accepted: Value = accepted.json().await.unwrap();
    assert_eq!((accepted["couponType"].as_str(), accepted["status"].as_str()), (Some("LATER"), Some("PENDING")));
    let id = accepted["requestId"].as_str().unwrap().to_owned();

    let views = app.await_issue_requests(&[(id.clone(), user.token.clone())], std::time::Duration::from_secs(5)).await;
    let view = &views[0];
    assert_eq!((view["status"].as_str(), view["userId"].as_i64()), (Some("ISSUED"), Some(user.id)), "{view}");
    assert!(view["reason"].is_null() && view["processedAt"].is_string(), "{view}");
    let held: Value =
        app.get(&format!("/api/users/{}/coupons", user.id), Some(&user.token)).await.json().await.unwrap();
    assert_eq!(held[0]["couponId"], view["couponId"]);

    let path = format!("/api/coupons/issue-requests/{id}");
    assert_problem(app.get(&path, Some(&other.token)).await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    assert_eq!(app.get(&path, Some(&app.admin().await.token)).await.status(), StatusCode::OK);
    let bad = app.get("/api/coupons/issue-requests/not-a-uuid", Some(&user.token)).await;
    assert_problem(bad, StatusCode::BAD_REQUEST, "VALIDATION_FAILED").await;

    // Final answers come at once, and write nothing.
    assert_problem(app.issue_coupon_async(&user, &code).await, StatusCode::CONFLICT, "COUPON_ALREADY_ISSUED").await;
    assert_problem(app.issue_coupon_async(&other, &code).await, StatusCode::CONFLICT, "COUPON_SOLD_OUT").await;
    assert_problem(app.issue_coupon_async(&other, "NO_SUCH").await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    let later = (Utc::now() + Duration::hours(1)).to_rfc3339();
    let not_yet = app.create_coupon_type("NOT_YET", 5, json!({"issueStartsAt": later})).await;
    assert_problem(app.issue_coupon_async(&other, &not_yet).await, StatusCode::CONFLICT, "COUPON_NOT_OPEN").await;
    let requests: i64 =
        sqlx::query_scalar("SELECT count(*) FROM coupon_issue_requests").fetch_one(&app.db).await.unwrap();
    assert_eq!(requests, 1, "only the accepted request is written down");
}

#[tokio::test]
async fn a_second_asynchronous_request_while_the_first_is_pending_is_refused_at_once() {
    // A sweep that never comes, and no consumer to finish the first request:
    // it stays pending.
    let app = spawn_app_with(|config| config.locks.async_issue_requeue_after_ms = 3_600_000).await;
    let code = app.create_coupon_type("PATIENT", 5, json!({})).await;
    let user = app.new_user().await;
    let type_id: i64 =
        sqlx::query_scalar("SELECT id FROM coupon_types WHERE code = $1").bind(&code).fetch_one(&app.db).await.unwrap();
    sqlx::query("INSERT INTO coupon_issue_requests (id, user_id, coupon_type_id) VALUES (gen_random_uuid(), $1, $2)")
        .bind(user.id)
        .bind(type_id)
        .execute(&app.db)
        .await
        .unwrap();
    assert_problem(app.issue_coupon_async(&user, &code).await, StatusCode::CONFLICT, "COUPON_ALREADY_ISSUED").await;
}

#[tokio::test]
async fn an_asynchronous_issue_replays_under_its_idempotency_key() {
    let app = spawn_app().await;
    let code = app.create_coupon_type("KEYED_LATER", 5, json!({})).await;
    let user = app.new_user().await;
    let body = json!({"couponType": code});
    let first = app.post_with_key("/api/coupons/issue-async", &user.token, "async-1", &body).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let again = app.post_with_key("/api/coupons/issue-async", &user.token, "async-1", &body).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers()["Idempotent-Replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["requestId"], first["requestId"]);
}
