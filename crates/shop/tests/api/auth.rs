use std::sync::Arc;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Barrier;

use crate::support::{assert_problem, eventually, spawn_app, spawn_app_with, user_from};

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
    let app = spawn_app_with(|config| config.password_cost.argon2_memory_kib = 4096).await;
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

async fn login_as(app: &crate::support::TestApp, email: &str, password: &str) -> reqwest::Response {
    app.post("/api/auth/login", None, json!({"email": email, "password": password})).await
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account_on_every_instance_until_the_window_moves_on() {
    let one = spawn_app_with(|config| {
        config.login_max_failures = 3;
        config.login_window_secs = 3;
    })
    .await;
    let two = one.another_instance().await;
    let user = one.new_user().await;
    for app in [&one, &two, &one] {
        assert_problem(
            login_as(app, &user.email, "wrong password").await,
            StatusCode::UNAUTHORIZED,
            "INVALID_CREDENTIALS",
        )
        .await;
    }
    // Past the limit: refused on both instances, even with the right password.
    for app in [&two, &one] {
        let refused = login_as(app, &user.email, "password123").await;
        let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=3).contains(&retry_after), "{retry_after}");
        assert_problem(refused, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    }
    // Another account is not held back.
    let other = one.new_user().await;
    assert_eq!(login_as(&one, &other.email, "password123").await.status(), StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    assert_eq!(login_as(&two, &user.email, "password123").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn thirty_simultaneous_guesses_get_no_more_tries_than_the_limit() {
    let app = spawn_app_with(|config| config.login_max_failures = 3).await;
    let user = app.new_user().await;
    let barrier = Arc::new(Barrier::new(30));
    let answers = join_all((0..30).map(|i| {
        let (barrier, app, email) = (barrier.clone(), &app, user.email.clone());
        async move {
            barrier.wait().await;
            login_as(app, &email, &format!("guess number {i}")).await.status()
        }
    }))
    .await;
    let tried = answers.iter().filter(|status| **status == StatusCode::UNAUTHORIZED).count();
    let throttled = answers.iter().filter(|status| **status == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((tried, throttled), (3, 27), "{answers:?}");
}

#[tokio::test]
async fn one_address_failing_across_many_emails_is_throttled() {
    let app = spawn_app_with(|config| config.login_max_failures = 2).await;
    let user = app.new_user().await;
    // Twenty failures, each for another unknown email: the address's limit (ten times two).
    for i in 0..20 {
        let email = format!("nobody-{i}@example.com");
        assert_eq!(login_as(&app, &email, "password123").await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_problem(login_as(&app, &user.email, "password123").await, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED")
        .await;
}

#[tokio::test]
async fn a_login_for_an_unknown_email_costs_what_a_wrong_password_costs() {
    // A hash that takes tens of milliseconds, so that skipping it would show.
    let app = spawn_app_with(|config| {
        config.password_cost.argon2_memory_kib = 16 * 1024;
        config.password_cost.argon2_iterations = 2;
        config.login_max_failures = 100;
    })
    .await;
    let user = app.new_user().await;
    let median = |mut times: Vec<std::time::Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..9 {
        let started = std::time::Instant::now();
        login_as(&app, &user.email, "wrong password").await;
        known.push(started.elapsed());
        let started = std::time::Instant::now();
        login_as(&app, &format!("nobody-{i}@example.com"), "wrong password").await;
        unknown.push(started.elapsed());
    }
    let (known, unknown) = (median(known), median(unknown));
    // Alike within a factor of two either way; without the decoy hash an
    // unknown email answers many times faster.
    assert!(unknown * 2 > known && known * 2 > unknown, "known {known:?}, unknown {unknown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_logins_waits_for_a_bounded_number_of_hashes_and_is_then_refused_with_503() {
    // Costly hashes, a handful at a time (two per core): a flood of logins,
    // each for another email, cannot all be hashed within the wait.
    let app = spawn_app_with(|config| {
        config.password_cost.argon2_memory_kib = 96 * 1024;
        config.password_cost.argon2_iterations = 4;
        config.login_max_failures = 1000;
    })
    .await;
    let barrier = Arc::new(Barrier::new(60));
    let answers = join_all((0..60).map(|i| {
        let (barrier, app) = (barrier.clone(), &app);
        async move {
            barrier.wait().await;
            login_as(app, &format!("flood-{i}@example.com"), "password123").await
        }
    }))
    .await;
    let mut refused = 0;
    for answer in answers {
        if answer.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(answer.headers().contains_key("retry-after"));
            assert_problem(answer, StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE").await;
            refused += 1;
        } else {
            assert_problem(answer, StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS").await;
        }
    }
    assert!(refused > 0, "some were refused rather than queued");
}

#[tokio::test]
async fn attempts_refused_by_an_address_past_its_limit_write_nothing() {
    let app = spawn_app_with(|config| config.login_max_failures = 1).await;
    for i in 0..10 {
        let failed = login_as(&app, &format!("nobody-{i}@example.com"), "password123").await;
        assert_eq!(failed.status(), StatusCode::UNAUTHORIZED);
    }
    for i in 10..40 {
        let refused = login_as(&app, &format!("nobody-{i}@example.com"), "password123").await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let pattern = format!("{}{{login-account:*", app.config.redis_key_prefix);
    let keys = crate::support::redis_keys_matching(&pattern).await;
    assert_eq!(keys.len(), 10, "one per email that was tried, none for those refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_the_shop_could_not_check_does_not_count_as_a_failure() {
    let app = spawn_app_with(|config| {
        // Seconds a hash (four at a time on two cores): well past the two
        // a login waits for its turn, even on an idle machine (at ten
        // passes, about two).
        config.password_cost.argon2_memory_kib = 96 * 1024;
        config.password_cost.argon2_iterations = 30;
        config.login_max_failures = 1;
        // A hash of this cost alone outlasts the default 10 s deadline on
        // a loaded machine, and the user's sign-up needs one; the waits
        // this test is about are the hashing pool's own, of two seconds.
        config.request_timeout_ms = 45_000;
    })
    .await;
    let user = app.new_user().await;
    // Sign-ups hold every hash while the user logs in, rightly, twice. The
    // first login waits behind them and gives up; sign-ups still waiting
    // give up before it does, so only hashes in flight can make it wait
    // long enough, and they last longer than its wait.
    let barrier = Arc::new(Barrier::new(8));
    let flood = join_all((0..8).map(|i| {
        let (barrier, app) = (barrier.clone(), &app);
        async move {
            barrier.wait().await;
            app.register(&format!("flood-{i}@example.com"), "password123", "Flood").await.status()
        }
    }));
    let logins = async {
        // Once every hash is taken and a sign-up waits.
        eventually("the hashing saturated", async || {
            let metrics = app.get("/metrics", None).await.text().await.unwrap();
            gauge(&metrics, "shop_password_hashes_waiting") > 0.0
        })
        .await;
        let first = login_as(&app, &user.email, "password123").await.status();
        (first, login_as(&app, &user.email, "password123").await.status())
    };
    let (_, (first, second)) = tokio::join!(flood, logins);
    assert_eq!(first, StatusCode::SERVICE_UNAVAILABLE, "the hashing was saturated");
    // Had the 503 counted, the limit of one failure would refuse this one.
    assert_ne!(second, StatusCode::TOO_MANY_REQUESTS);
    // Once every attempt has ended (on a slow machine the sign-ups' and the
    // second login's hashes run on after their requests answered 503), the
    // account's count of failures is back to none: a 503 that counted would
    // hold it at one for the whole 15-minute window. Read from Redis, since
    // a login at this hashing cost can outlast its deadline on a busy machine.
    use base64::Engine as _;
    use sha2::Digest as _;
    let account = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(user.email.as_bytes()));
    let failures = app.redis_key(format_args!("login-account:{account}"), "failures");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let counted: Option<i64> = redis::cmd("GET").arg(&failures).query_async(&mut app.redis().await).await.unwrap();
        if counted.unwrap_or(0) == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a login the shop could not check still counts: {counted:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_login_renews_a_hash_made_at_an_older_cost() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let hash = async || -> String {
        sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
            .bind(user.id)
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    assert!(hash().await.contains("m=256,t=1,"));
    // The operator raised the cost: the next login renews the hash.
    let dearer = app.another_instance_with(|config| config.password_cost.argon2_memory_kib = 512).await;
    assert_eq!(login_as(&dearer, &user.email, "password123").await.status(), StatusCode::OK);
    assert!(hash().await.contains("m=512,t=1,"), "renewed at the new cost");
    assert_eq!(login_as(&dearer, &user.email, "password123").await.status(), StatusCode::OK);
    assert_eq!(login_as(&dearer, &user.email, "wrong password").await.status(), StatusCode::UNAUTHORIZED);
}

/// The value of an unlabelled gauge in a Prometheus text exposition.
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}
