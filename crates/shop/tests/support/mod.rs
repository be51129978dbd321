//! Shared by the test binaries: a real `shop` server on a free port, on its
//! own fresh database and Redis key prefix, driven over HTTP.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use shop::Role;
use shop::config::{
    Config, CouponStrategyKind, DatabaseConfig, EventsConfig, LockConfig, LogFormat, PasswordCost, PointsStrategyKind,
    StockStrategyKind,
};
use shop::redis_conn::{Keyspace, RedisConn, RedisTarget, campaign_slot};
use shop::startup::Server;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::oneshot;
use uuid::Uuid;

pub mod cluster;
pub mod front_door;
pub mod invariants;
pub mod nats;
pub mod own_pg;
pub mod own_redis;
pub mod own_redis_cluster;
pub mod pg_proxy;
pub mod pgbouncer;
pub mod receiver;
pub mod redis_proxy;

pub const PG: &str = "postgres://postgres@127.0.0.1:5432";
pub const REDIS: &str = "redis://127.0.0.1:6379";
/// When set (comma-separated seed nodes), test servers use this Redis
/// Cluster instead of [`REDIS`]: `scripts/test` runs the Redis-dependent
/// tests once more this way.
pub const REDIS_CLUSTER_ENV: &str = "SHOP_TEST_REDIS_CLUSTER";

/// When set (a PgBouncer in transaction pooling mode, `postgres://…:6432`),
/// test servers reach their database through it: `scripts/test` runs the
/// tests of the database paths once more this way.
pub const PGBOUNCER_ENV: &str = "SHOP_TEST_PGBOUNCER";

/// Polls `condition` for up to ten seconds.
pub async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within ten seconds");
}

/// A connection to the test Redis, or to the test cluster.
pub async fn test_redis() -> RedisConn {
    let nodes = redis_cluster_nodes();
    let target = if nodes.is_empty() { RedisTarget::Single(REDIS) } else { RedisTarget::Cluster(&nodes) };
    RedisConn::connect(target, Duration::from_secs(5)).await.unwrap()
}

/// The cluster the tests run against, if any.
pub fn redis_cluster_nodes() -> Vec<String> {
    std::env::var(REDIS_CLUSTER_ENV)
        .map(|nodes| nodes.split(',').filter(|node| !node.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}
pub const ADMIN_EMAIL: &str = "admin@shop.local";
pub const ADMIN_PASSWORD: &str = "admin-password";
/// The token secret of every test server, so tests can sign tokens too.
pub const TEST_SECRET: &str = "the test servers' token secret, 32+ bytes";

/// The configuration of a test server: its own database and Redis prefix,
/// and a cheap password hash.
pub fn test_config() -> Config {
    let id = Uuid::new_v4().simple().to_string();
    let pooler = std::env::var(PGBOUNCER_ENV).ok();
    Config {
        database: DatabaseConfig {
            database_url: format!("{PG}/shop_test_{id}"),
            database_pooler_url: pooler.as_ref().map(|pooler| format!("{pooler}/shop_test_{id}")),
            // Several tests run at once against PostgreSQL's 100 connections.
            database_max_connections: 12,
        },
        redis_url: REDIS.into(),
        redis_cluster_nodes: redis_cluster_nodes(),
        redis_key_prefix: format!("test:{id}:"),
        bind_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: None,
        cors_allowed_origins: Vec::new(),
        http_max_connections: 10_000,
        // Through a pooler a statement takes twice the round trips: a race
        // of a thousand requests on one locked row outlasts ten seconds
        // when tests run side by side. The pass checks answers, not speed.
        request_timeout_ms: if pooler.is_some() { 30_000 } else { 10_000 },
        shutdown_grace_secs: 20,
        jwt_secret: Some(TEST_SECRET.into()),
        jwt_access_ttl_secs: 3600,
        admin_email: ADMIN_EMAIL.into(),
        admin_password: Some(ADMIN_PASSWORD.into()),
        points_strategy: PointsStrategyKind::Atomic,
        coupon_strategy: CouponStrategyKind::Atomic,
        stock_strategy: StockStrategyKind::Atomic,
        order_payment_timeout_secs: 600,
        points_daily_charge_limit: 3,
        points_monthly_charge_limit: 10,
        seed_demo_data: false,
        login_max_failures: 5,
        login_window_secs: 900,
        password_cost: PasswordCost { argon2_memory_kib: 256, argon2_iterations: 1 },
        shop_timezone: chrono_tz::Asia::Seoul,
        locks: LockConfig {
            db_lock_timeout_ms: 3000,
            optimistic_max_retries: 12,
            redis_lock_lease_ms: 5000,
            redis_lock_wait_ms: 5000,
            gate_reconcile_after_ms: 30_000,
            async_issue_claim_after_ms: 5_000,
            async_issue_requeue_after_ms: 15_000,
        },
        events: EventsConfig {
            data_platform_url: None,
            data_platform_secret: None,
            data_platform_timeout_ms: 5000,
            events_nats_url: None,
            event_max_attempts: 20,
            event_retention_days: 7,
            event_retry_base_ms: 50,
            event_retry_max_ms: 500,
        },
        log_format: LogFormat::Text,
        log_filter: "warn".into(),
    }
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// For checking invariants from the database.
    pub db: PgPool,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Whether dropping this app drops its database and Redis keys: true for
    /// the first instance of a test, false for the others sharing them.
    owns_data: bool,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub token: String,
    pub refresh_token: String,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    init_tracing();
    let mut config = test_config();
    configure(&mut config);
    start(config, true).await
}

/// A test server whose database connections pass through `proxy`, so a
/// test can break them; the test's own checks connect directly.
pub async fn spawn_app_behind(proxy: &pg_proxy::PgProxy, configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with(|config| {
        config.database.database_url = proxy.url(database_name(&config.database.database_url));
        // The proxy is the path under test: no pooler beside it.
        config.database.database_pooler_url = None;
        configure(config);
    })
    .await
}

/// A port nothing listens on now, for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `count` distinct free ports (held together while they are picked).
pub fn free_ports(count: usize) -> Vec<u16> {
    let held: Vec<_> = (0..count).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|listener| listener.local_addr().unwrap().port()).collect()
}

/// The database part of a PostgreSQL URL.
pub fn database_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// A test server on a PostgreSQL of the test's own (see `own_pg`); the
/// test's own checks connect to it too.
pub async fn spawn_app_on(postgres: &own_pg::OwnPostgres, configure: impl FnOnce(&mut Config)) -> TestApp {
    init_tracing();
    let mut config = test_config();
    config.database.database_url = postgres.url(database_name(&config.database.database_url));
    configure(&mut config);
    let checks = postgres.url("").trim_end_matches('/').to_owned();
    start_checked_at(config, true, &checks).await
}

async fn start(config: Config, owns_data: bool) -> TestApp {
    start_checked_at(config, owns_data, PG).await
}

/// Starts the server; the test's checks connect to the same database on
/// the server at `checks`.
async fn start_checked_at(config: Config, owns_data: bool, checks: &str) -> TestApp {
    let server = Server::build(&config).await.expect("the test server starts");
    let address = format!("http://{}", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server.run(async move {
        stopped.await.ok();
    }));
    let db = PgPoolOptions::new()
        .max_connections(2)
        .connect(&format!("{checks}/{}", database_name(&config.database.database_url)))
        .await
        .expect("the test database is reachable");
    let client = http_client().pool_max_idle_per_host(256).timeout(Duration::from_secs(60)).build().unwrap();
    TestApp { address, client, db, config, stop: Some(stop), server: Some(server), owns_data }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
}

impl TestApp {
    /// Another server instance on the same database and Redis prefix.
    pub async fn another_instance(&self) -> TestApp {
        self.another_instance_with(|_| {}).await
    }

    /// Another instance on the same data, configured apart.
    pub async fn another_instance_with(&self, configure: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = self.config.clone();
        configure(&mut config);
        start(config, false).await
    }

    /// A connection to this shop's Redis, single or cluster.
    pub async fn redis(&self) -> RedisConn {
        RedisConn::connect(self.config.redis_target(), Duration::from_secs(5)).await.unwrap()
    }

    /// This shop's key `name` of `entity`'s slot (see `Keyspace`).
    pub fn redis_key(&self, entity: impl std::fmt::Display, name: impl std::fmt::Display) -> String {
        Keyspace::new(&self.config.redis_key_prefix).key(entity, name)
    }

    /// This shop's key of a coupon campaign's gate.
    pub fn coupon_gate_key(&self, type_id: i64, name: &str) -> String {
        Keyspace::new(&self.config.redis_key_prefix)
            .campaign_key(campaign_slot(type_id), format_args!("gate:{type_id}:{name}"))
    }

    /// Reads a field of a Redis hash.
    pub async fn redis_hash_field(&self, key: &str, field: &str) -> Option<i64> {
        redis::cmd("HGET").arg(key).arg(field).query_async(&mut self.redis().await).await.unwrap()
    }

    /// The size of a sorted set.
    pub async fn redis_zcard(&self, key: &str) -> i64 {
        redis::cmd("ZCARD").arg(key).query_async(&mut self.redis().await).await.unwrap()
    }

    /// Deletes every Redis key of this shop, as a Redis restart without
    /// persistence would (without disturbing other tests sharing Redis).
    pub async fn lose_redis_keys(&self) {
        delete_redis_keys(&self.config.redis_key_prefix).await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn request(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Response {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("the server answers")
    }

    /// The sum of a counter's series on `/metrics` (0 before its first
    /// increment); `name{label="value"}` names one series. Every instance
    /// of a test process shares its recorder.
    pub async fn metric(&self, name: &str) -> u64 {
        let metrics = self.get("/metrics", None).await.text().await.unwrap();
        metrics
            .lines()
            .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
            .filter_map(|line| line.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.request(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Response {
        self.request(Method::POST, path, token, Some(body)).await
    }

    /// A POST that carries an `Idempotency-Key`, sent.
    pub async fn post_keyed(&self, path: &str, token: &str, key: &str, body: Value) -> Response {
        self.post_with_key(path, token, key, &body).send().await.unwrap()
    }

    /// A POST that carries an `Idempotency-Key`.
    pub fn post_with_key(&self, path: &str, token: &str, key: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(token).header("Idempotency-Key", key).json(body)
    }

    pub async fn register(&self, email: &str, password: &str, name: &str) -> Response {
        self.post("/api/auth/register", None, json!({"email": email, "password": password, "name": name})).await
    }

    /// A fresh account, signed in.
    pub async fn new_user(&self) -> User {
        let email = format!("user-{}@example.com", Uuid::new_v4().simple());
        let response = self.register(&email, "password123", "Test User").await;
        assert_eq!(response.status(), StatusCode::CREATED);
        user_from(response.json().await.unwrap())
    }

    /// `count` accounts inserted in one statement, with tokens signed by the
    /// test secret: for races that need many users, without as many
    /// password hashes.
    pub async fn bulk_users(&self, count: usize) -> Vec<User> {
        bulk_users(&self.db, count).await
    }

    pub async fn admin(&self) -> User {
        let response =
            self.post("/api/auth/login", None, json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})).await;
        assert_eq!(response.status(), StatusCode::OK);
        user_from(response.json().await.unwrap())
    }

    pub async fn charge(&self, user: &User, amount: i64) -> Response {
        self.post(&format!("/api/users/{}/points", user.id), Some(&user.token), json!({"amount": amount})).await
    }

    /// The stored balance and the sum of the user's ledger.
    pub async fn balance_and_ledger_sum(&self, user_id: i64) -> (i64, i64) {
        sqlx::query_as(
            "SELECT w.balance, COALESCE((SELECT SUM(amount) FROM point_ledger l WHERE l.user_id = w.user_id), 0)::bigint
             FROM point_wallets w WHERE w.user_id = $1",
        )
        .bind(user_id)
        .fetch_one(&self.db)
        .await
        .unwrap()
    }

    /// Creates a coupon type as admin; returns its code.
    pub async fn create_coupon_type(&self, code: &str, total: i64, extra: Value) -> String {
        let admin = self.admin().await;
        let mut body = json!({"code": code, "kind": "FIXED", "value": 1000, "minOrderAmount": 0,
                              "totalQuantity": total, "validDays": 30});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let response = self.post("/api/admin/coupon-types", Some(&admin.token), body).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{}", response.text().await.unwrap());
        code.to_owned()
    }

    pub async fn issue_coupon(&self, user: &User, code: &str) -> Response {
        self.post("/api/coupons/issue", Some(&user.token), json!({"couponType": code})).await
    }

    pub async fn issue_coupon_async(&self, user: &User, code: &str) -> Response {
        self.post("/api/coupons/issue-async", Some(&user.token), json!({"couponType": code})).await
    }

    /// Follows asynchronous issue requests (each with its requester's token)
    /// until every one is final or `within` has passed; returns each one's
    /// last view.
    pub async fn await_issue_requests(&self, requests: &[(String, String)], within: Duration) -> Vec<Value> {
        await_issue_requests(&self.client, |path| self.url(path), requests, within).await
    }

    /// Adds a product as admin; returns its id.
    pub async fn create_product(&self, name: &str, price: i64, stock: i64) -> i64 {
        let admin = self.admin().await;
        let body = json!({"name": name, "price": price, "stock": stock, "category": "test"});
        let response = self.post("/api/admin/products", Some(&admin.token), body).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
    }

    /// Places an order of (product, quantity) lines. The body is built at
    /// once, so the future borrows nothing but the app.
    pub fn place_order<'a>(
        &'a self,
        user: &User,
        lines: &[(i64, i64)],
        coupon_id: Option<i64>,
    ) -> impl Future<Output = Response> + use<'a> {
        let items: Vec<Value> = lines.iter().map(|(id, q)| json!({"productId": id, "quantity": q})).collect();
        let body = json!({"items": items, "couponId": coupon_id});
        let token = user.token.clone();
        async move { self.post("/api/orders", Some(&token), body).await }
    }

    /// Places an order that must succeed; returns its id.
    pub async fn order_id(&self, user: &User, lines: &[(i64, i64)], coupon_id: Option<i64>) -> i64 {
        let response = self.place_order(user, lines, coupon_id).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{}", response.text().await.unwrap());
        response.json::<Value>().await.unwrap()["orderId"].as_i64().unwrap()
    }

    pub async fn pay(&self, user: &User, order_id: i64) -> Response {
        self.post("/api/payments", Some(&user.token), json!({"orderId": order_id})).await
    }

    pub async fn stock(&self, product_id: i64) -> i64 {
        stock_of(&self.db, product_id).await
    }

    /// Every invariant of the shop at once.
    pub async fn assert_invariants(&self) {
        invariants::all(&self.db).await;
    }

    /// Tells the server to stop taking requests and finish those in flight.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
    }

    /// Waits until the server has stopped; panics if it failed.
    pub async fn stopped(&mut self) {
        self.server.take().expect("waited once").await.unwrap().unwrap();
    }
}

pub fn user_from(body: Value) -> User {
    User {
        id: body["userId"].as_i64().expect("userId"),
        email: body["email"].as_str().expect("email").to_owned(),
        token: body["accessToken"].as_str().expect("accessToken").to_owned(),
        refresh_token: body["refreshToken"].as_str().expect("refreshToken").to_owned(),
    }
}

/// See [`TestApp::await_issue_requests`]; `url` makes a path absolute.
pub async fn await_issue_requests(
    client: &reqwest::Client,
    url: impl Fn(&str) -> String,
    requests: &[(String, String)],
    within: Duration,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    let mut views = vec![Value::Null; requests.len()];
    loop {
        let pending: Vec<usize> = (0..requests.len())
            .filter(|&i| views[i]["status"] != "ISSUED" && views[i]["status"] != "REJECTED")
            .collect();
        if pending.is_empty() || tokio::time::Instant::now() >= deadline {
            return views;
        }
        let looks = pending.iter().map(|&i| {
            let (id, token) = &requests[i];
            let request = client.get(url(&format!("/api/coupons/issue-requests/{id}"))).bearer_auth(token);
            async move { (i, request.send().await.unwrap().json::<Value>().await.unwrap()) }
        });
        for (i, view) in futures::future::join_all(looks).await {
            views[i] = view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client builder; the shop's TLS provider installed first, as the
/// shop's own HTTP client needs one chosen (whichever test runs first).
pub fn http_client() -> reqwest::ClientBuilder {
    rustls::crypto::ring::default_provider().install_default().ok();
    // The shop closes a keep-alive connection idle for 15 s; a client that
    // keeps it longer may send on one the shop is closing and read nothing
    // back (hyper's IncompleteMessage), so idle connections go first.
    reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(5))
}

/// See [`TestApp::bulk_users`].
pub async fn bulk_users(db: &PgPool, count: usize) -> Vec<User> {
    let run = Uuid::new_v4().simple().to_string();
    let ids: Vec<i64> = sqlx::query_scalar(
        "WITH new_users AS (
             INSERT INTO users (email, name, password_hash)
             SELECT 'bulk-' || $1 || '-' || n || '@example.com', 'Bulk ' || n, 'not a hash'
             FROM generate_series(1, $2) AS n
             RETURNING id
         ), wallets AS (INSERT INTO point_wallets (user_id) SELECT id FROM new_users)
         SELECT id FROM new_users ORDER BY id",
    )
    .bind(&run)
    .bind(count as i32)
    .fetch_all(db)
    .await
    .unwrap();
    ids.into_iter().map(|id| signed_in(id, Role::User)).collect()
}

/// The admin of the database `db`, signed in with the test secret.
/// A product's stock, read from the database.
pub async fn stock_of(db: &PgPool, product_id: i64) -> i64 {
    sqlx::query_scalar("SELECT stock FROM products WHERE id = $1").bind(product_id).fetch_one(db).await.unwrap()
}

pub async fn admin_of(db: &PgPool) -> User {
    let id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE role = 'admin'").fetch_one(db).await.unwrap();
    signed_in(id, Role::Admin)
}

fn signed_in(user_id: i64, role: Role) -> User {
    let tokens = shop::Tokens::new(TEST_SECRET.as_bytes(), Duration::from_secs(3600)).unwrap();
    // A login no row records: good for requests, not for a refresh.
    let pair = tokens.issue(shop::Caller { user_id, role, session: Uuid::new_v4() }).unwrap();
    User { id: user_id, email: String::new(), token: pair.access_token, refresh_token: pair.refresh_token }
}

/// Asserts a problem+json answer with this status and code; returns its body.
pub async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "status of {}", response.url());
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    body
}

/// Drops the test's database and Redis keys, whatever the outcome of the test.
impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        if !self.owns_data {
            return;
        }
        drop_test_data(&self.config.database.database_url, &self.config.redis_key_prefix);
    }
}

/// Drops a test's database and Redis keys, from a `Drop` (which cannot
/// await): on a thread of its own, waited for.
pub fn drop_test_data(database_url: &str, redis_key_prefix: &str) {
    let database = database_name(database_url).to_owned();
    let prefix = redis_key_prefix.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            if let Ok(pool) = PgPoolOptions::new().max_connections(1).connect(&format!("{PG}/postgres")).await {
                let drop = format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)");
                sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&pool).await.ok();
            }
            delete_redis_keys(&prefix).await;
        });
    })
    .join()
    .ok();
}

/// The keys matching `pattern` on the test Redis, or on every master of
/// the test cluster.
pub async fn redis_keys_matching(pattern: &str) -> Vec<String> {
    let cluster = redis_cluster_nodes();
    let nodes = if cluster.is_empty() { vec![REDIS.to_owned()] } else { cluster };
    let mut keys = std::collections::BTreeSet::new();
    for node in nodes {
        let Ok(client) = redis::Client::open(node) else {
            continue;
        };
        let Ok(mut redis) = client.get_multiplexed_async_connection().await else {
            continue;
        };
        let found: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut redis).await.unwrap_or_default();
        keys.extend(found);
    }
    keys.into_iter().collect()
}

/// Deletes the keys under `prefix` (one at a time: a cluster deletes
/// several in one command only within a slot).
async fn delete_redis_keys(prefix: &str) {
    let keys = redis_keys_matching(&format!("{prefix}*")).await;
    if keys.is_empty() {
        return;
    }
    let mut redis = test_redis().await;
    for key in keys {
        redis::cmd("DEL").arg(key).query_async::<()>(&mut redis).await.ok();
    }
}
