//! The binary itself: demo data, clear start-up failures, graceful shutdown.

use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{TestApp, spawn_app_with};

fn shop() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shop"));
    command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

#[test]
fn unreachable_postgres_is_named_without_a_panic() {
    let output = shop().args(["serve", "--database-url", "postgres://postgres@127.0.0.1:1/shop"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach PostgreSQL at 127.0.0.1:1 (database shop)"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unreachable_redis_is_named_without_a_panic() {
    let database = format!("postgres://postgres@127.0.0.1:5432/shop_test_{}", uuid::Uuid::new_v4().simple());
    let output =
        shop().args(["serve", "--database-url", &database, "--redis-url", "redis://127.0.0.1:1"]).output().unwrap();
    drop_database(&database);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach Redis at redis://127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn migrate_creates_the_database_and_exits() {
    let database = format!("postgres://postgres@127.0.0.1:5432/shop_test_{}", uuid::Uuid::new_v4().simple());
    let status = shop().args(["migrate", "--database-url", &database]).stdout(Stdio::null()).status().unwrap();
    let tables = psql("SELECT count(*) FROM pg_tables WHERE tablename = 'point_wallets'", &database);
    drop_database(&database);
    assert!(status.success());
    assert_eq!(tables.trim(), "1");
}

#[tokio::test]
async fn demo_data_is_seeded_into_an_empty_database_once() {
    let app = spawn_app_with(|config| config.seed_demo_data = true).await;
    let products: Value = app.get("/api/products", None).await.json().await.unwrap();
    let names: Vec<_> = products["items"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["아메리카노", "카페라떼", "치킨샌드위치", "에스프레소", "티셔츠"]);
    assert_eq!(products["items"][0]["price"], 3000);
    assert_eq!(products["items"][4]["stock"], 30);
    let codes: Vec<String> =
        sqlx::query_scalar("SELECT code FROM coupon_types ORDER BY id").fetch_all(&app.db).await.unwrap();
    assert_eq!(codes, ["DISCOUNT_10PERCENT", "DISCOUNT_20PERCENT", "FIXED_1000", "FIXED_2000"]);

    // A second instance on the same database seeds nothing more.
    let second = shop::startup::Server::build(&app.config).await.unwrap();
    drop(second);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(&app.db).await.unwrap();
    assert_eq!(count, 5);
}

#[tokio::test]
async fn the_admin_account_is_ensured_with_the_configured_password() {
    let app = spawn_app_with(|config| config.admin_password = Some("first-password".into())).await;
    let before: serde_json::Value = app
        .post("/api/auth/login", None, serde_json::json!({"email": "admin@shop.local", "password": "first-password"}))
        .await
        .json()
        .await
        .unwrap();
    let mut config = app.config.clone();
    config.admin_password = Some("second-password".into());
    drop(shop::startup::Server::build(&config).await.unwrap());
    // The new password ended the logins made with the old one.
    let refreshed =
        app.post("/api/auth/refresh", None, serde_json::json!({"refreshToken": before["refreshToken"]})).await;
    assert_eq!(refreshed.status(), StatusCode::UNAUTHORIZED);
    let login = |password: &'static str| {
        let app: &TestApp = &app;
        async move {
            app.post("/api/auth/login", None, serde_json::json!({"email": "admin@shop.local", "password": password}))
                .await
                .status()
        }
    };
    assert_eq!(login("second-password").await, StatusCode::OK);
    assert_eq!(login("first-password").await, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_the_server_cleanly() {
    let database = format!("postgres://postgres@127.0.0.1:5432/shop_test_{}", uuid::Uuid::new_v4().simple());
    let mut child = shop()
        .args(["serve", "--database-url", &database, "--bind-addr", "127.0.0.1:0", "--log-format", "json"])
        .args(["--redis-key-prefix", &format!("test:{}:", uuid::Uuid::new_v4().simple())])
        .args(["--argon2-memory-kib", "256", "--argon2-iterations", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (address, logged) = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let address = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| line.split("listening on ").nth(1).map(|rest| rest.split('"').next().unwrap().to_owned()))
            .expect("the server prints its address");
        // The rest of the log, read to its end (which keeps the pipe drained).
        (address, std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<String>>()))
    })
    .await
    .unwrap();
    let client = crate::support::http_client().build().unwrap();
    // A caller's W3C trace context reaches the request's log line.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let ready = client.get(format!("{address}/health/ready")).header("traceparent", traceparent).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exited = tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().ok();
        None
    })
    .await
    .unwrap();
    drop_database(&database);
    assert!(exited.expect("the server exits after SIGTERM").success());
    let logged = logged.join().unwrap();
    let line = logged.iter().find(|line| line.contains(r#""route":"/health/ready""#)).expect("the request is logged");
    let line: Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{line}");
    assert_eq!(line["span"]["parent_id"], "00f067aa0ba902b7", "{line}");
}

fn psql(sql: &str, database_url: &str) -> String {
    let output = Command::new("psql").args([database_url, "-tAc", sql]).output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn drop_database(database_url: &str) {
    let name = database_url.rsplit('/').next().unwrap();
    psql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"), "postgres://postgres@127.0.0.1:5432/postgres");
}

#[tokio::test]
async fn connections_the_database_dropped_are_replaced_without_an_error() {
    let app = spawn_app_with(|_| {}).await;
    assert_eq!(app.get("/api/products", None).await.status(), StatusCode::OK);
    // What a PostgreSQL restart does to a pool: every connection is gone.
    let dropped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()) AS terminated",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(dropped > 0);
    // The pool tests connections that sat idle, and replaces dead ones.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..5 {
        assert_eq!(app.get("/api/products", None).await.status(), StatusCode::OK);
    }
}

/// A login as the default admin: its status.
async fn admin_login(app: &TestApp, password: &str) -> StatusCode {
    app.post("/api/auth/login", None, serde_json::json!({"email": "admin@shop.local", "password": password}))
        .await
        .status()
}

#[tokio::test]
async fn without_admin_password_there_is_no_admin_and_the_demo_alone_falls_back_without_resetting() {
    let app = spawn_app_with(|config| config.admin_password = None).await;
    let admins: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE role = 'admin'").fetch_one(&app.db).await.unwrap();
    assert_eq!(admins, 0, "no admin outside the demo");
    assert_eq!(admin_login(&app, "admin-password").await, StatusCode::UNAUTHORIZED);

    // The demo creates the missing admin with the published password…
    let mut demo = app.config.clone();
    demo.seed_demo_data = true;
    drop(shop::startup::Server::build(&demo).await.unwrap());
    assert_eq!(admin_login(&app, "admin-password").await, StatusCode::OK);
    // …but never puts it back on an admin that has another.
    let mut configured = app.config.clone();
    configured.admin_password = Some("a password of our own".into());
    drop(shop::startup::Server::build(&configured).await.unwrap());
    drop(shop::startup::Server::build(&demo).await.unwrap());
    assert_eq!(admin_login(&app, "admin-password").await, StatusCode::UNAUTHORIZED);
    assert_eq!(admin_login(&app, "a password of our own").await, StatusCode::OK);
}

#[tokio::test]
async fn shop_admin_create_reads_the_password_from_standard_input() {
    use std::io::Write;

    let app = spawn_app_with(|config| config.admin_password = None).await;
    let user = app.new_user().await;
    let create = |email: &str, password: &str| {
        let mut child = shop()
            .args(["admin", "create", "--email", email])
            .env("DATABASE_URL", &app.config.database.database_url)
            .env("DATABASE_MAX_CONNECTIONS", "1")
            .env("ARGON2_MEMORY_KIB", "512")
            .env("ARGON2_ITERATIONS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let made = create("boss@example.com", "a long admin password");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert_eq!(String::from_utf8_lossy(&made.stdout).trim(), "boss@example.com is an admin");
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE email = 'boss@example.com'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(hash.contains("m=512,t=1,"), "hashed at the configured cost: {hash}");
    let login = app
        .post(
            "/api/auth/login",
            None,
            serde_json::json!({"email": "boss@example.com", "password": "a long admin password"}),
        )
        .await;
    assert_eq!(login.json::<serde_json::Value>().await.unwrap()["role"], "admin");
    // An existing account is promoted; a short password is refused.
    assert!(create(&user.email, "another long password").status.success());
    let role: String =
        sqlx::query_scalar("SELECT role FROM users WHERE id = $1").bind(user.id).fetch_one(&app.db).await.unwrap();
    assert_eq!(role, "admin");
    let refused = create("short@example.com", "short");
    assert!(!refused.status.success());
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE email = 'short@example.com')")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(!exists);
}
