//! Faults of the network between the shop and PostgreSQL or Redis, made by
//! proxies (`support::pg_proxy`, `support::redis_proxy`), and clients that
//! give up mid-request. Each
//! answer must be true of the database: an effect whose COMMIT reply was lost
//! is found out, never redone; a request whose client left finishes anyway;
//! an outcome that cannot be found out is 503 and its Idempotency-Key
//! replays once it can.

use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shop::config::{CouponStrategyKind, PointsStrategyKind, StockStrategyKind};

use crate::support::pg_proxy::{PgProxy, Statement};
use crate::support::pgbouncer::PgBouncer;
use crate::support::redis_proxy::RedisProxy;
use crate::support::{TestApp, User, assert_problem, database_name, eventually, spawn_app_behind, spawn_app_with};

/// The statement of a lone charge (`atomic`, and `batch` with one charge).
const LONE_CHARGE: &str = "WITH charged AS (";
/// The ledger rows of a batch of several charges.
const BATCH_LEDGER: &str = "WITH ORDINALITY AS t(user_id, amount, balance_after, n)";
/// The orders of a batch.
const BATCH_ORDERS: &str = "INSERT INTO orders (id, user_id";

fn charge_request(app: &TestApp, user: &User, amount: i64, key: Option<&str>) -> reqwest::RequestBuilder {
    let request = app.client.post(app.url(&format!("/api/users/{}/points", user.id))).bearer_auth(&user.token);
    let request = match key {
        Some(key) => request.header("Idempotency-Key", key),
        None => request,
    };
    request.json(&json!({"amount": amount}))
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&app.db).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_batch_whose_commit_reply_is_lost_is_resolved_not_redone() {
    let proxy = PgProxy::start().await;
    let app = spawn_app_behind(&proxy, |config| {
        config.points_strategy = PointsStrategyKind::Batch;
        config.points_daily_charge_limit = 0;
        config.points_monthly_charge_limit = 0;
    })
    .await;
    let user = app.new_user().await;
    // The first charges wait on their replies, so the rest queue into one batch,
    // whose COMMIT commits and whose reply is lost.
    proxy.delay_reply_to(Statement::Containing(LONE_CHARGE.into()), Duration::from_millis(300), 2);
    let lost = proxy.lose_reply_to(Statement::CommitOf(BATCH_LEDGER.into()), 1);
    let answers = join_all((0..16).map(|_| charge_request(&app, &user, 1000, None).send())).await;
    let statuses: Vec<StatusCode> = answers.into_iter().map(|answer| answer.unwrap().status()).collect();
    assert_eq!(lost.count(), 1, "a batch's COMMIT reply was lost");
    assert!(statuses.iter().all(|status| *status == StatusCode::OK), "{statuses:?}");
    let rows = count(&app, &format!("SELECT count(*) FROM point_ledger WHERE user_id = {}", user.id)).await;
    assert_eq!(rows, 16, "each charge answered 200 was made once");
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (16_000, 16_000));
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_batch_whose_commit_reply_is_lost_is_resolved_not_redone() {
    let proxy = PgProxy::start().await;
    let app = spawn_app_behind(&proxy, |config| config.stock_strategy = StockStrategyKind::Batch).await;
    let product = app.create_product("hot", 2000, 100).await;
    let buyers = app.bulk_users(12).await;
    proxy.lose_reply_to(Statement::CommitOf(BATCH_ORDERS.into()), 1);
    let answers = join_all(buyers.iter().map(|buyer| app.place_order(buyer, &[(product, 1)], None))).await;
    let statuses: Vec<StatusCode> = answers.iter().map(reqwest::Response::status).collect();
    assert_eq!(proxy.fired(), 1);
    assert!(statuses.iter().all(|status| *status == StatusCode::CREATED), "{statuses:?}");
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 12, "no order was placed twice");
    assert_eq!(app.stock(product).await, 88);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keyed_charge_whose_commit_reply_is_lost_answers_what_happened_and_replays_it() {
    let proxy = PgProxy::start().await;
    let app = spawn_app_behind(&proxy, |config| config.points_strategy = PointsStrategyKind::Atomic).await;
    let user = app.new_user().await;
    proxy.lose_reply_to(Statement::Commit, 1);
    let first = charge_request(&app, &user, 10_000, Some("lost-reply")).send().await.unwrap();
    assert_eq!(proxy.fired(), 1);
    assert_eq!(first.status(), StatusCode::OK, "the charge committed, and the shop found out");
    let first: Value = first.json().await.unwrap();
    let retry = charge_request(&app, &user, 10_000, Some("lost-reply")).send().await.unwrap();
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.unwrap(), first);
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (10_000, 10_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_whose_commit_reply_pgbouncer_lost_is_resolved_not_redone() {
    // PgBouncer's server connection breaks mid-COMMIT: PgBouncer tells the
    // shop with an error of its own (08P01), which is no answer to the
    // COMMIT, so the shop asks PostgreSQL directly what became of it.
    let proxy = PgProxy::start().await;
    let bouncer = PgBouncer::start_before(proxy.port()).await;
    let app = spawn_app_with(|config| {
        config.points_strategy = PointsStrategyKind::Atomic;
        let database = database_name(&config.database.database_url);
        config.database.database_pooler_url = Some(format!("{}/{database}", bouncer.url()));
    })
    .await;
    let user = app.new_user().await;
    proxy.lose_reply_to(Statement::Commit, 1);
    let charged = charge_request(&app, &user, 10_000, None).send().await.unwrap();
    assert_eq!(proxy.fired(), 1);
    assert_eq!(charged.status(), StatusCode::OK, "the charge committed, and the shop found out");
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (10_000, 10_000), "charged once");
    assert!(bouncer.served(&app.db).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_whose_commit_reply_is_lost_answers_its_new_tokens() {
    let proxy = PgProxy::start().await;
    let app = spawn_app_behind(&proxy, |_| {}).await;
    let user = app.new_user().await;
    proxy.lose_reply_to(Statement::Commit, 1);
    let refreshed = app.post("/api/auth/refresh", None, json!({"refreshToken": user.refresh_token})).await;
    assert_eq!(proxy.fired(), 1);
    // Answered 503, the client would retry with the rotated token, and end
    // its own login as a reuse.
    assert_eq!(refreshed.status(), StatusCode::OK, "the rotation committed, and the shop found out");
    let refreshed: Value = refreshed.json().await.unwrap();
    let next = app.post("/api/auth/refresh", None, json!({"refreshToken": refreshed["refreshToken"]})).await;
    assert_eq!(next.status(), StatusCode::OK, "the login goes on with the new token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outcome_that_cannot_be_found_out_is_503_and_its_key_replays_once_it_can() {
    let proxy = PgProxy::start().await;
    let app = spawn_app_behind(&proxy, |config| config.points_strategy = PointsStrategyKind::Atomic).await;
    let user = app.new_user().await;
    // Connections are pooled now (several, in case a background task holds
    // one); from here on no new one gets through.
    assert_eq!(charge_request(&app, &user, 1000, Some("warm")).send().await.unwrap().status(), StatusCode::OK);
    let balance = format!("/api/users/{}/points", user.id);
    join_all((0..8).map(|_| app.get(&balance, Some(&user.token)))).await;
    proxy.lose_reply_to(Statement::Commit, 1);
    proxy.refuse_connections(true);
    let unknown = charge_request(&app, &user, 10_000, Some("unknown")).send().await.unwrap();
    assert_eq!(proxy.fired(), 1);
    assert!(unknown.headers().contains_key("retry-after"));
    assert_problem(unknown, StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE").await;
    proxy.heal();

    let retry = charge_request(&app, &user, 10_000, Some("unknown")).send().await.unwrap();
    assert_eq!(retry.status(), StatusCode::OK, "the charge had committed: its answer replays");
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (11_000, 11_000), "charged once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_lost_mid_transaction_is_503_and_changes_nothing() {
    let proxy = PgProxy::start().await;
    let app = spawn_app_behind(&proxy, |config| config.stock_strategy = StockStrategyKind::Atomic).await;
    let product = app.create_product("p", 5000, 3).await;
    let buyer = app.new_user().await;
    proxy.cut_before(Statement::Containing("INSERT INTO orders".into()), 1);
    let cut = app.place_order(&buyer, &[(product, 1)], None).await;
    assert_eq!(proxy.fired(), 1);
    assert!(cut.headers().contains_key("retry-after"));
    assert_problem(cut, StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE").await;
    assert_eq!(app.stock(product).await, 3, "the stock taken before the cut was rolled back");
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 0);
    assert_eq!(app.place_order(&buyer, &[(product, 1)], None).await.status(), StatusCode::CREATED);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coupon_request_whose_client_gives_up_is_issued_anyway() {
    let proxy = PgProxy::start().await;
    let app = spawn_app_behind(&proxy, |config| config.coupon_strategy = CouponStrategyKind::RedisGate).await;
    let code = app.create_coupon_type("GIVE_UP", 1, json!({})).await;
    let (leaver, late) = (app.new_user().await, app.new_user().await);
    proxy.delay_reply_to(Statement::Containing("INSERT INTO coupons".into()), Duration::from_millis(500), 1);
    let impatient = app
        .client
        .post(app.url("/api/coupons/issue"))
        .bearer_auth(&leaver.token)
        .timeout(Duration::from_millis(150))
        .json(&json!({"couponType": code}))
        .send()
        .await;
    assert!(impatient.is_err(), "the client gave up before the answer");
    eventually("the abandoned request's coupon", async || count(&app, "SELECT count(*) FROM coupons").await == 1).await;
    let holder: i64 = sqlx::query_scalar("SELECT user_id FROM coupons").fetch_one(&app.db).await.unwrap();
    assert_eq!(holder, leaver.id);
    assert_problem(app.issue_coupon(&late, &code).await, StatusCode::CONFLICT, "COUPON_SOLD_OUT").await;
    assert_problem(app.issue_coupon(&leaver, &code).await, StatusCode::CONFLICT, "COUPON_ALREADY_ISSUED").await;
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pending_grant_is_not_sold_out_to_others_and_comes_back_when_its_write_fails() {
    let proxy = PgProxy::start().await;
    let app = spawn_app_behind(&proxy, |config| config.coupon_strategy = CouponStrategyKind::RedisGate).await;
    let code = app.create_coupon_type("LAST_ONE", 1, json!({})).await;
    let (first, second) = (app.new_user().await, app.new_user().await);
    // The first user's write waits, then loses its connection: the unit it
    // was granted must go to the second user, who asked meanwhile.
    proxy.delay_reply_to(
        Statement::Containing("UPDATE coupon_types SET issued_quantity".into()),
        Duration::from_millis(400),
        1,
    );
    proxy.cut_before(Statement::Containing("INSERT INTO coupons".into()), 1);
    let failing = {
        let request = app.client.post(app.url("/api/coupons/issue")).bearer_auth(&first.token);
        tokio::spawn(request.json(&json!({"couponType": code})).send())
    };
    let type_id = count(&app, "SELECT id FROM coupon_types WHERE code = 'LAST_ONE'").await;
    let pending = app.coupon_gate_key(type_id, "pending");
    eventually("the first grant", async || app.redis_zcard(&pending).await == 1).await;
    let waited = app.issue_coupon(&second, &code).await;
    assert_eq!(waited.status(), StatusCode::CREATED, "{}", waited.text().await.unwrap());
    let failed = failing.await.unwrap().unwrap();
    assert_problem(failed, StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE").await;
    let holders: Vec<i64> = sqlx::query_scalar("SELECT user_id FROM coupons").fetch_all(&app.db).await.unwrap();
    assert_eq!(holders, vec![second.id]);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_sweeping_several_orders_never_deadlocks_with_a_batch() {
    let proxy = PgProxy::start().await;
    let app = spawn_app_behind(&proxy, |config| {
        config.stock_strategy = StockStrategyKind::Batch;
        config.order_payment_timeout_secs = 1;
    })
    .await;
    let (low, high) = (app.create_product("low", 3000, 10).await, app.create_product("high", 3000, 10).await);
    let buyer = app.new_user().await;
    // They expire in this order: the sweep meets the higher product first.
    let first = app.order_id(&buyer, &[(high, 1)], None).await;
    let second = app.order_id(&buyer, &[(low, 1)], None).await;
    // The sweep's first product lock stalls on its way back, with its locks
    // taken, while a batch locks both products in ascending order.
    proxy.delay_reply_to(Statement::Containing("SELECT p.id FROM products p".into()), Duration::from_millis(800), 1);
    eventually("the expiry sweep", async || proxy.fired() == 1).await;
    let both = app.place_order(&buyer, &[(low, 1), (high, 1)], None).await;
    assert_eq!(both.status(), StatusCode::CREATED, "{}", both.text().await.unwrap());
    let expired = format!("SELECT count(*) FROM orders WHERE id IN ({first}, {second}) AND status = 'EXPIRED'");
    eventually("the sweep's commit", async || count(&app, &expired).await == 2).await;
    assert_eq!(proxy.errors("40P01"), 0, "no transaction deadlocked");
    app.assert_invariants().await;
}

/// How the stock comes back while the gate is loading.
#[derive(Debug, Clone, Copy)]
enum Comeback {
    Cancel,
    Restock,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_that_comes_back_while_the_gate_loads_is_not_lost() {
    for comeback in [Comeback::Cancel, Comeback::Restock] {
        let proxy = PgProxy::start().await;
        let app = spawn_app_behind(&proxy, |config| config.stock_strategy = StockStrategyKind::RedisGate).await;
        let product = app.create_product("gated", 2000, 5).await;
        let buyer = app.new_user().await;
        let cancelled = app.order_id(&buyer, &[(product, 1)], None).await;
        // Redis forgets the counter; the next order loads it, and the load's
        // read of the stock (4) comes back late. Meanwhile a unit comes back.
        app.lose_redis_keys().await;
        proxy.delay_reply_to(
            Statement::Containing("SELECT id, stock, version FROM products".into()),
            Duration::from_millis(500),
            1,
        );
        let loading = {
            let (client, url, token) = (app.client.clone(), app.url("/api/orders"), buyer.token.clone());
            let body = json!({"items": [{"productId": product, "quantity": 1}]});
            tokio::spawn(async move { client.post(url).bearer_auth(token).json(&body).send().await.unwrap() })
        };
        eventually("the gate's load", async || proxy.fired() == 1).await;
        let came_back = match comeback {
            Comeback::Cancel => {
                let path = format!("/api/orders/{cancelled}/cancel");
                app.post(&path, Some(&buyer.token), json!({})).await
            }
            Comeback::Restock => {
                let admin = app.admin().await;
                let path = format!("/api/admin/products/{product}");
                app.request(reqwest::Method::PATCH, &path, Some(&admin.token), Some(json!({"stock": 5}))).await
            }
        };
        assert_eq!(came_back.status(), StatusCode::OK, "{comeback:?}");
        assert_eq!(loading.await.unwrap().status(), StatusCode::CREATED, "{comeback:?}");
        // Every unit PostgreSQL holds can still be sold through the gate.
        let left = app.stock(product).await;
        for _ in 0..left {
            let sold = app.place_order(&buyer, &[(product, 1)], None).await;
            assert_eq!(sold.status(), StatusCode::CREATED, "{comeback:?}: the gate refused a unit PostgreSQL has");
        }
        assert_eq!(app.stock(product).await, 0);
        let refused = app.place_order(&buyer, &[(product, 1)], None).await;
        assert_problem(refused, StatusCode::CONFLICT, "OUT_OF_STOCK").await;
        app.assert_invariants().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coupon_grant_whose_redis_reply_is_lost_is_503_and_its_unit_comes_back() {
    let redis = RedisProxy::start().await;
    let app = spawn_app_with(|config| {
        config.redis_url = redis.url();
        config.coupon_strategy = CouponStrategyKind::RedisGate;
        config.locks.gate_reconcile_after_ms = 300;
    })
    .await;
    let code = app.create_coupon_type("LOST_GRANT", 1, json!({})).await;
    let (first, second) = (app.new_user().await, app.new_user().await);
    // The gate grants the only unit to the first user; the answer is lost.
    let type_id = count(&app, "SELECT id FROM coupon_types WHERE code = 'LOST_GRANT'").await;
    redis.lose_reply_to(&format!("gate:{type_id}:state"), 1);
    let lost = app.issue_coupon(&first, &code).await;
    assert_eq!(redis.fired(), 1);
    assert!(lost.headers().contains_key("retry-after"));
    assert_problem(lost, StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE").await;
    // The grant is pending with no coupon behind it: the second user waits
    // for the reconciler, which gives the unit back, and gets it.
    let waited = app.issue_coupon(&second, &code).await;
    assert_eq!(waited.status(), StatusCode::CREATED, "{}", waited.text().await.unwrap());
    assert_problem(app.issue_coupon(&first, &code).await, StatusCode::CONFLICT, "COUPON_SOLD_OUT").await;
    let holders: Vec<i64> = sqlx::query_scalar("SELECT user_id FROM coupons").fetch_all(&app.db).await.unwrap();
    assert_eq!(holders, vec![second.id]);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn units_a_cancellation_returned_reach_the_gate_even_when_its_commit_could_not_be_confirmed() {
    let proxy = PgProxy::start().await;
    let app = spawn_app_behind(&proxy, |config| {
        config.stock_strategy = StockStrategyKind::RedisGate;
        config.locks.gate_reconcile_after_ms = 300;
    })
    .await;
    let product = app.create_product("gated", 2000, 2).await;
    let buyer = app.new_user().await;
    let order = app.order_id(&buyer, &[(product, 1)], None).await;
    // Pooled connections, for the cancellation to run on once no new one gets through.
    let placed = format!("/api/orders/{order}");
    join_all((0..8).map(|_| app.get(&placed, Some(&buyer.token)))).await;
    // The cancellation commits; its reply is lost and the database cannot
    // be asked, so this instance never tells the gate of the returned unit.
    proxy.lose_reply_to(Statement::CommitOf("RETURNING p.id AS product_id".into()), 1);
    proxy.refuse_connections(true);
    let path = format!("/api/orders/{order}/cancel");
    let unknown = app.post_with_key(&path, &buyer.token, "cancel", &json!({})).send().await.unwrap();
    assert_problem(unknown, StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE").await;
    proxy.heal();
    let replayed = app.post_with_key(&path, &buyer.token, "cancel", &json!({})).send().await.unwrap();
    assert_eq!(replayed.status(), StatusCode::OK, "the cancellation had committed");
    assert_eq!(app.stock(product).await, 2);
    // The change was recorded with it, and the reconciler passes it on: one
    // order for both units PostgreSQL holds gets through the gate.
    eventually("an order for every unit in stock", async || {
        app.place_order(&buyer, &[(product, 2)], None).await.status() == StatusCode::CREATED
    })
    .await;
    assert_eq!(app.stock(product).await, 0);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_catalogue_read_whose_connection_is_cut_is_503() {
    let proxy = PgProxy::start().await;
    let redis = RedisProxy::start().await;
    let app = spawn_app_behind(&proxy, |config| config.redis_url = redis.url()).await;
    let product = app.create_product("listed", 2000, 2).await;
    proxy.cut_before(Statement::Containing("FROM products".into()), 2);
    let list = app.get("/api/products", None).await;
    assert_problem(list, StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE").await;
    let one = app.get(&format!("/api/products/{product}"), None).await;
    assert_problem(one, StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE").await;
    redis.lose_reply_to("top-sellers:", 1);
    let top = app.get("/api/products/top-sellers", None).await;
    assert_problem(top, StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE").await;
    assert_eq!(app.get("/api/products", None).await.status(), StatusCode::OK, "it recovers by itself");
}

#[tokio::test]
async fn database_failures_are_lost_races_or_unavailable_never_internal() {
    let app = crate::support::spawn_app().await;
    for (sqlstate, status) in [
        ("40P01", StatusCode::CONFLICT),              // deadlock_detected
        ("40001", StatusCode::CONFLICT),              // serialization_failure
        ("55P03", StatusCode::CONFLICT),              // lock_not_available
        ("08006", StatusCode::SERVICE_UNAVAILABLE),   // connection_failure
        ("53300", StatusCode::SERVICE_UNAVAILABLE),   // too_many_connections
        ("53200", StatusCode::SERVICE_UNAVAILABLE),   // out_of_memory
        ("57P01", StatusCode::SERVICE_UNAVAILABLE),   // admin_shutdown
        ("57014", StatusCode::SERVICE_UNAVAILABLE),   // query_canceled
        ("25P03", StatusCode::SERVICE_UNAVAILABLE),   // idle_in_transaction_session_timeout
        ("23505", StatusCode::INTERNAL_SERVER_ERROR), // a unique violation no query expected
    ] {
        let raise = format!("DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{sqlstate}'; END $$");
        let error = sqlx::query(sqlx::AssertSqlSafe(raise)).execute(&app.db).await.unwrap_err();
        let answer = shop::error::AppError::from(error);
        assert_eq!(answer.status(), status, "{sqlstate}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stock_change_passed_on_twice_counts_once() {
    let redis = RedisProxy::start().await;
    let app = spawn_app_with(|config| {
        config.redis_url = redis.url();
        config.stock_strategy = StockStrategyKind::RedisGate;
        config.locks.gate_reconcile_after_ms = 300;
    })
    .await;
    let product = app.create_product("restocked", 2000, 10).await;
    let buyer = app.new_user().await;
    app.order_id(&buyer, &[(product, 1)], None).await;
    let admin = app.admin().await;
    let path = format!("/api/admin/products/{product}");
    let restock = async |stock: i64| {
        let body = json!({"stock": stock});
        app.request(reqwest::Method::PATCH, &path, Some(&admin.token), Some(body)).await.status()
    };
    assert_eq!(restock(10).await, StatusCode::OK);
    // The admin lowers the stock from 10 to 3. The gate applies the change
    // but its answer is lost, so the reconciler passes the change on again.
    redis.lose_reply_to("gate:applied", 1);
    assert_eq!(restock(3).await, StatusCode::OK);
    assert_eq!(redis.fired(), 1);
    eventually("the reconciler passing the change on", async || {
        count(&app, "SELECT count(*) FROM stock_gate_changes").await == 0
    })
    .await;
    // Counted twice, -7 would leave the gate at -4, refusing what is there.
    let all_three = app.place_order(&buyer, &[(product, 3)], None).await;
    assert_eq!(all_three.status(), StatusCode::CREATED, "{}", all_three.text().await.unwrap());
    assert_eq!(app.stock(product).await, 0);
    app.assert_invariants().await;
}
