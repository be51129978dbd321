//! Logins: refresh tokens that rotate, a reused one that ends its login on
//! every instance, logout, and tokens forged every way a client could.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Sha256, Sha512};

use crate::support::{TEST_SECRET, TestApp, User, assert_problem, spawn_app, test_config};

async fn login(app: &TestApp, user: &User) -> (String, String) {
    let response = app.post("/api/auth/login", None, json!({"email": user.email, "password": "password123"})).await;
    assert_eq!(response.status(), StatusCode::OK);
    tokens_of(response).await
}

async fn tokens_of(response: reqwest::Response) -> (String, String) {
    let body: Value = response.json().await.unwrap();
    (body["accessToken"].as_str().unwrap().to_owned(), body["refreshToken"].as_str().unwrap().to_owned())
}

async fn refresh(app: &TestApp, refresh_token: &str) -> reqwest::Response {
    app.post("/api/auth/refresh", None, json!({"refreshToken": refresh_token})).await
}

async fn assert_refused(response: reqwest::Response) {
    assert_problem(response, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED").await;
}

#[tokio::test]
async fn a_refresh_token_is_good_once_and_its_reuse_ends_the_login_on_every_instance() {
    let one = spawn_app().await;
    let two = one.another_instance().await;
    let user = one.new_user().await;
    let (_, first) = login(&one, &user).await;
    let (_, other_login) = login(&one, &user).await;

    let rotated = refresh(&one, &first).await;
    assert_eq!(rotated.status(), StatusCode::OK);
    let (_, second) = tokens_of(rotated).await;
    // The first token again, at the other instance: a replay.
    assert_refused(refresh(&two, &first).await).await;
    // Which ends the login: its newest token is refused too, everywhere.
    assert_refused(refresh(&one, &second).await).await;
    assert_refused(refresh(&two, &second).await).await;
    let because: Vec<String> = sqlx::query_scalar(
        "SELECT coalesce(revoked_because, 'LIVE') FROM sessions WHERE user_id = $1 ORDER BY created_at",
    )
    .bind(user.id)
    .fetch_all(&one.db)
    .await
    .unwrap();
    assert_eq!(because, ["LIVE", "REUSED", "LIVE"], "sign-up, the replayed login, the other login");
    // Another login of the same user goes on.
    assert_eq!(refresh(&two, &other_login).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn simultaneous_refreshes_with_one_token_never_give_two_live_tokens() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let answers = futures::future::join_all((0..10).map(|_| refresh(&app, &user.refresh_token))).await;
    let mut fresh = Vec::new();
    for answer in answers {
        if answer.status() == StatusCode::OK {
            fresh.push(tokens_of(answer).await.1);
        } else {
            assert_refused(answer).await;
        }
    }
    assert!(fresh.len() <= 1, "one winner at most: {}", fresh.len());
    // Nine replays of a used token: whoever won, the login is over.
    for token in fresh {
        assert_refused(refresh(&app, &token).await).await;
    }
}

#[tokio::test]
async fn logout_ends_one_login_and_logout_all_every_login() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let other = app.new_user().await;
    let (access_a, refresh_a) = login(&app, &user).await;
    let (_, refresh_b) = login(&app, &user).await;
    let (_, refresh_c) = login(&app, &user).await;

    assert_refused(app.post("/api/auth/logout", None, json!({})).await).await;
    // Without a body: the access token's own login.
    let out = app.client.post(app.url("/api/auth/logout")).bearer_auth(&access_a).send().await.unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert_refused(refresh(&app, &refresh_a).await).await;
    // Another login, named by its refresh token; someone else's is refused.
    let theirs = app.post("/api/auth/logout", Some(&access_a), json!({"refreshToken": other.refresh_token})).await;
    assert_refused(theirs).await;
    assert_eq!(refresh(&app, &other.refresh_token).await.status(), StatusCode::OK, "theirs still works");
    let out = app.post("/api/auth/logout", Some(&access_a), json!({"refreshToken": refresh_b})).await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert_refused(refresh(&app, &refresh_b).await).await;
    assert_eq!(refresh(&app, &refresh_c).await.status(), StatusCode::OK);
    // A JSON `null` is no body: the access token's own login (already ended).
    let null = app.client.post(app.url("/api/auth/logout")).bearer_auth(&access_a).json(&Value::Null).send();
    assert_eq!(null.await.unwrap().status(), StatusCode::NO_CONTENT);

    let out = app.post("/api/auth/logout-all", Some(&user.token), json!({})).await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL")
        .bind(user.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(live, 0);
    assert_refused(refresh(&app, &user.refresh_token).await).await;
    // Access tokens live until they expire, as the contract says.
    assert_eq!(app.get("/api/users/me", Some(&access_a)).await.status(), StatusCode::OK);
}

/// A token signed with a key derived from the test secret as the server
/// derives its own (`info` names the kind), or with another algorithm.
fn forge(header: Value, claims: Value, info: &[u8], sha512: bool) -> String {
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(None, TEST_SECRET.as_bytes()).expand(info, &mut key).unwrap();
    let message = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
    let tag = if sha512 {
        Hmac::<Sha512>::new_from_slice(&key).unwrap().chain_update(&message).finalize().into_bytes().to_vec()
    } else {
        Hmac::<Sha256>::new_from_slice(&key).unwrap().chain_update(&message).finalize().into_bytes().to_vec()
    };
    format!("{message}.{}", B64.encode(tag))
}

#[tokio::test]
async fn forged_expired_early_and_orphaned_tokens_are_refused() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let now = chrono::Utc::now().timestamp();
    let claims = |typ: &str| {
        json!({"sub": user.id.to_string(), "role": "user", "typ": typ, "sid": uuid::Uuid::new_v4(),
               "jti": uuid::Uuid::new_v4(), "iat": now, "exp": now + 600})
    };
    let hs256 = json!({"alg": "HS256", "typ": "JWT"});
    let access = b"shop access token";
    let refresh_key = b"shop refresh token";
    // The forger gets the derivation right: this one is accepted.
    let genuine = forge(hs256.clone(), claims("access"), access, false);
    assert_eq!(app.get("/api/users/me", Some(&genuine)).await.status(), StatusCode::OK);

    let with = |change: Value| {
        let mut claims = claims("access");
        claims.as_object_mut().unwrap().extend(change.as_object().unwrap().clone());
        claims
    };
    let unsigned = format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        B64.encode(claims("access").to_string())
    );
    let mut tampered: Vec<String> = genuine.split('.').map(str::to_owned).collect();
    tampered[1] = B64.encode(with(json!({"sub": "1", "role": "admin"})).to_string());
    let forged = [
        ("alg none", unsigned),
        ("HS512", forge(json!({"alg": "HS512", "typ": "JWT"}), claims("access"), access, true)),
        ("signed with the refresh key", forge(hs256.clone(), claims("access"), refresh_key, false)),
        ("a refresh token", forge(hs256.clone(), claims("refresh"), refresh_key, false)),
        ("expired", forge(hs256.clone(), with(json!({"exp": now - 1})), access, false)),
        ("not yet valid", forge(hs256.clone(), with(json!({"nbf": now + 600})), access, false)),
        ("no iat", forge(hs256.clone(), with(json!({"iat": null})), access, false)),
        (
            "unknown crit header",
            forge(json!({"alg": "HS256", "crit": ["exp-policy"]}), claims("access"), access, false),
        ),
        ("tampered payload", tampered.join(".")),
    ];
    for (what, token) in forged {
        let refused = app.get("/api/users/me", Some(&token)).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{what}");
    }
    // The other way round: an access token, or one signed with the access key, at refresh.
    assert_refused(refresh(&app, &user.token).await).await;
    assert_refused(refresh(&app, &forge(hs256.clone(), claims("refresh"), access, false)).await).await;

    // A deleted account's tokens are nobody's, whatever they ask.
    let product = app.create_product("lamp", 5000, 10).await;
    let coupon = app.create_coupon_type("GONE", 10, json!({})).await;
    sqlx::query("DELETE FROM users WHERE id = $1").bind(user.id).execute(&app.db).await.unwrap();
    assert_refused(app.get("/api/users/me", Some(&user.token)).await).await;
    assert_refused(refresh(&app, &user.refresh_token).await).await;
    let order = json!({"items": [{"productId": product, "quantity": 1}]});
    assert_refused(app.post("/api/orders", Some(&user.token), order).await).await;
    assert_refused(app.post("/api/coupons/issue", Some(&user.token), json!({"couponType": coupon})).await).await;
    assert_refused(app.post("/api/coupons/issue-async", Some(&user.token), json!({"couponType": coupon})).await).await;
}

#[tokio::test]
async fn a_short_token_secret_is_refused_at_start() {
    let mut config = test_config();
    config.jwt_secret = Some("thirty-one bytes, one too short".into());
    assert_eq!(config.jwt_secret.as_ref().unwrap().len(), 31);
    let error = shop::startup::Server::build(&config).await.err().expect("refused");
    assert!(format!("{error:#}").contains("JWT_SECRET must be at least 32 bytes"), "{error:#}");
}
