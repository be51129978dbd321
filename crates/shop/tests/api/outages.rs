//! Whole outages of a dependency, made on a server of the test's own (never
//! the shared one): during the fault every answer is a success or a 503 or
//! 409 problem within `REQUEST_TIMEOUT_MS`; after it the shop serves again
//! within 5 s without a restart; and every request that succeeded left its
//! record once, every one refused left none.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use shop::config::{CouponStrategyKind, PointsStrategyKind, StockStrategyKind};

use crate::support::own_pg::OwnPostgres;
use crate::support::own_redis::OwnRedis;
use crate::support::pg_proxy::PgProxy;
use crate::support::redis_proxy::RedisProxy;
use crate::support::{TestApp, User, spawn_app_behind, spawn_app_on, spawn_app_with};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Coupons under row locks, and the outage tests' deadline.
fn pessimistic_coupons_with_deadline(config: &mut shop::config::Config) {
    config.coupon_strategy = CouponStrategyKind::Pessimistic;
    config.request_timeout_ms = REQUEST_TIMEOUT.as_millis() as u64;
}

/// Coupons through the Redis gate at `url`, and the outage tests' deadline.
fn gated_coupons_with_deadline(config: &mut shop::config::Config, url: String) {
    config.redis_url = url;
    config.coupon_strategy = CouponStrategyKind::RedisGate;
    config.request_timeout_ms = REQUEST_TIMEOUT.as_millis() as u64;
}

/// No charge limits, and the outage tests' deadline.
fn unlimited_charges_with_deadline(config: &mut shop::config::Config) {
    config.points_daily_charge_limit = 0;
    config.points_monthly_charge_limit = 0;
    config.request_timeout_ms = REQUEST_TIMEOUT.as_millis() as u64;
}

/// Charges `user` again and again, each with a key of its own, until
/// `stop`; each key with the answer it got.
async fn charge_storm(app: &TestApp, user: &User, stop: &AtomicBool) -> Vec<(String, StatusCode)> {
    let path = format!("/api/users/{}/points", user.id);
    let body = json!({"amount": 1000});
    let mut answers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let key = format!("storm-{}-{}", user.id, answers.len());
        let started = Instant::now();
        let status =
            app.post_with_key(&path, &user.token, &key, &body).send().await.expect("the shop answers").status();
        assert!(
            started.elapsed() < REQUEST_TIMEOUT + Duration::from_secs(1),
            "answered in time: {:?}",
            started.elapsed()
        );
        assert!(
            [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE, StatusCode::CONFLICT].contains(&status),
            "a success, 503 or 409: {status}"
        );
        if status != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answers.push((key, status));
    }
    answers
}

/// Sends each refused key again until it succeeds: a key whose request did
/// happen replays its answer, one whose request did not runs it now.
async fn settle_keys(app: &TestApp, user: &User, answers: &[(String, StatusCode)]) {
    let path = format!("/api/users/{}/points", user.id);
    let body = json!({"amount": 1000});
    for (key, _) in answers.iter().filter(|(_, status)| *status != StatusCode::OK) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = app.post_with_key(&path, &user.token, key, &body).send().await.unwrap().status();
            if status == StatusCode::OK {
                break;
            }
            assert!(Instant::now() < deadline, "key {key} still answers {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sixteen users charge with keys while `fault` runs; then the shop must
/// serve a charge within 5 s (without a restart), and once every refused
/// key is sent again each key must have charged exactly once.
async fn charge_storm_through(app: &TestApp, fault: impl std::future::Future<Output = ()>) {
    let users = app.bulk_users(16).await;
    let probe = app.bulk_users(1).await.remove(0);
    let stop = Arc::new(AtomicBool::new(false));
    let storm = join_all(users.iter().map(|user| charge_storm(app, user, &stop)));
    let faulted = async {
        fault.await;
        let over = Instant::now();
        let path = format!("/api/users/{}/points", probe.id);
        while app.post(&path, Some(&probe.token), json!({"amount": 1000})).await.status() != StatusCode::OK {
            assert!(over.elapsed() < Duration::from_secs(5), "still refusing 5 s after the fault");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let served_again = over.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        served_again
    };
    let (answers, served_again) = tokio::join!(storm, faulted);
    let count = |wanted: StatusCode| answers.iter().flatten().filter(|(_, status)| *status == wanted).count();
    let refused = count(StatusCode::SERVICE_UNAVAILABLE) + count(StatusCode::CONFLICT);
    eprintln!(
        "charge storm: {} answers: {} 200, {} 503, {} 409; served again {served_again:?} after the fault",
        answers.iter().flatten().count(),
        count(StatusCode::OK),
        count(StatusCode::SERVICE_UNAVAILABLE),
        count(StatusCode::CONFLICT),
    );
    assert!(refused > 0, "the fault was felt");

    for (user, answers) in users.iter().zip(&answers) {
        settle_keys(app, user, answers).await;
    }
    // Every key charged exactly once: nothing lost, nothing doubled.
    let rows: HashMap<i64, i64> = sqlx::query_as("SELECT user_id, count(*) FROM point_ledger GROUP BY user_id")
        .fetch_all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .collect();
    for (user, answers) in users.iter().zip(&answers) {
        assert_eq!(rows.get(&user.id).copied().unwrap_or(0), answers.len() as i64, "user {}", user.id);
    }
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_storm_rides_out_a_postgres_restart() {
    let postgres = OwnPostgres::start().await;
    let app = spawn_app_on(&postgres, unlimited_charges_with_deadline).await;
    charge_storm_through(&app, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        postgres.restart().await;
    })
    .await;
}

/// A user's final answer in a coupon drop: whether they hold the coupon,
/// and when they were told.
struct Told {
    user_id: i64,
    holds: bool,
    at: Instant,
}

/// Twenty clients, each asking for its users in turn until a final answer
/// (issued, already issued by an earlier try whose answer came too late,
/// or sold out), retrying 503s and 409s; every answer in time. The answers,
/// and the slowest.
async fn coupon_drop(app: &TestApp, code: &str, users: &[User]) -> (Vec<Told>, Duration) {
    let clients = join_all(users.chunks(users.len().div_ceil(20)).map(|users| async move {
        let (mut told, mut slowest) = (Vec::new(), Duration::ZERO);
        for user in users {
            loop {
                let started = Instant::now();
                let answer = app.issue_coupon(user, code).await;
                slowest = slowest.max(started.elapsed());
                assert!(started.elapsed() < REQUEST_TIMEOUT + Duration::from_secs(1), "{:?}", started.elapsed());
                let status = answer.status();
                let body: serde_json::Value = answer.json().await.unwrap();
                let holds = match (status, body["code"].as_str()) {
                    (StatusCode::CREATED, _) | (StatusCode::CONFLICT, Some("COUPON_ALREADY_ISSUED")) => true,
                    (StatusCode::CONFLICT, Some("COUPON_SOLD_OUT")) => false,
                    (StatusCode::SERVICE_UNAVAILABLE | StatusCode::CONFLICT, _) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    other => panic!("neither a final answer nor one to retry: {other:?} {body}"),
                };
                told.push(Told { user_id: user.id, holds, at: Instant::now() });
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (told, slowest)
    }))
    .await;
    let slowest = clients.iter().map(|(_, slowest)| *slowest).max().unwrap_or_default();
    let told: Vec<Told> = clients.into_iter().flat_map(|(told, _)| told).collect();
    eprintln!(
        "coupon drop: {} users told, {} hold one; slowest answer {slowest:?}",
        told.len(),
        told.iter().filter(|told| told.holds).count()
    );
    (told, slowest)
}

/// Every user was told, exactly `total` were told they hold the coupon,
/// and those are exactly the holders in the database.
async fn assert_drop_is_exact(app: &TestApp, code: &str, users: &[User], told: &[Told], total: usize) {
    assert_eq!(told.len(), users.len(), "every user got a final answer");
    let mut holding: Vec<i64> = told.iter().filter(|told| told.holds).map(|told| told.user_id).collect();
    holding.sort();
    assert_eq!(holding.len(), total, "exactly the campaign's total");
    let holders: Vec<i64> = sqlx::query_scalar(
        "SELECT c.user_id FROM coupons c JOIN coupon_types t ON t.id = c.coupon_type_id WHERE t.code = $1 ORDER BY 1",
    )
    .bind(code)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(holders, holding, "each user told they hold one has it, and no one else");
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coupon_drop_rides_out_redis_restarting_empty() {
    let mut redis = OwnRedis::start().await;
    let url = redis.url();
    let app = spawn_app_with(|config| gated_coupons_with_deadline(config, url)).await;
    let code = app.create_coupon_type("DROP", 100, json!({})).await;
    let users = app.bulk_users(400).await;
    let probe_campaign = app.create_coupon_type("PROBE", 1000, json!({})).await;
    let probes = app.bulk_users(100).await;
    let restart = std::sync::OnceLock::new();
    let fault = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        restart.set(Instant::now()).unwrap();
        redis.restart_empty().await;
        // Served again within 5 s, without restarting the shop (another
        // campaign, so the drop's count is untouched).
        let restarted = Instant::now();
        for probe in &probes {
            if app.issue_coupon(probe, &probe_campaign).await.status() == StatusCode::CREATED {
                break;
            }
            assert!(restarted.elapsed() < Duration::from_secs(5), "still refusing 5 s after the restart");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let ((told, _), ()) = tokio::join!(coupon_drop(&app, &code, &users), fault);
    let restart = *restart.get().unwrap();
    assert!(told.iter().any(|told| told.at < restart) && told.iter().any(|told| told.at > restart), "mid-drop");
    assert_drop_is_exact(&app, &code, &users, &told, 100).await;
    let late = app.bulk_users(1).await.remove(0);
    assert_eq!(app.issue_coupon(&late, &code).await.status(), StatusCode::CONFLICT, "sold out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_storm_rides_out_postgres_unreachable_for_ten_seconds() {
    let proxy = PgProxy::start().await;
    let app = spawn_app_behind(&proxy, unlimited_charges_with_deadline).await;
    charge_storm_through(&app, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Packets dropped, not refused: requests hang until their deadline.
        proxy.blackhole(true);
        tokio::time::sleep(Duration::from_secs(10)).await;
        proxy.blackhole(false);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coupon_drop_rides_out_redis_answering_after_two_seconds() {
    let redis = RedisProxy::start().await;
    let url = redis.url();
    let app = spawn_app_with(|config| gated_coupons_with_deadline(config, url)).await;
    let code = app.create_coupon_type("SLOW", 100, json!({})).await;
    let users = app.bulk_users(300).await;
    let fault = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        redis.delay_replies(Duration::from_secs(2));
        tokio::time::sleep(Duration::from_secs(4)).await;
        redis.delay_replies(Duration::ZERO);
    };
    let ((told, slowest), ()) = tokio::join!(coupon_drop(&app, &code, &users), fault);
    assert!(slowest >= Duration::from_secs(2), "Redis was slow mid-drop: {slowest:?}");
    assert_drop_is_exact(&app, &code, &users, &told, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coupon_drop_rides_out_a_postgres_restart() {
    let postgres = OwnPostgres::start().await;
    let app = spawn_app_on(&postgres, pessimistic_coupons_with_deadline).await;
    let code = app.create_coupon_type("PGDROP", 100, json!({})).await;
    let users = app.bulk_users(300).await;
    let restart = std::sync::OnceLock::new();
    let fault = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        restart.set(Instant::now()).unwrap();
        postgres.restart().await;
    };
    let ((told, _), ()) = tokio::join!(coupon_drop(&app, &code, &users), fault);
    let restart = *restart.get().unwrap();
    assert!(told.iter().any(|told| told.at < restart) && told.iter().any(|told| told.at > restart), "mid-drop");
    assert_drop_is_exact(&app, &code, &users, &told, 100).await;
}

/// Sends a keyed request again, as a client would, until its answer is
/// final (not 503 or 409); each answer in time and one of those three.
/// The final answer, how many were not, and the slowest answer.
async fn until_final(
    app: &TestApp,
    path: &str,
    user: &User,
    key: &str,
    body: &serde_json::Value,
) -> (serde_json::Value, usize, Duration) {
    let (mut retried, mut slowest) = (0, Duration::ZERO);
    loop {
        let started = Instant::now();
        let answer = app.post_with_key(path, &user.token, key, body).send().await.expect("the shop answers");
        slowest = slowest.max(started.elapsed());
        assert!(started.elapsed() < REQUEST_TIMEOUT + Duration::from_secs(1), "answered in time: {slowest:?}");
        let status = answer.status();
        match status {
            StatusCode::OK | StatusCode::CREATED => return (answer.json().await.unwrap(), retried, slowest),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::CONFLICT => {
                retried += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{path}: {other} {}", answer.text().await.unwrap()),
        }
    }
}

/// Twelve users each order a mug and pay for it, again and again, with
/// keys and a client's retries, while `fault` runs and a second after it:
/// the fault must be felt (a refusal, or an answer held ≥ 2 s), and every
/// order must be placed once and paid once, stock and ledger exact.
async fn shopping_through(app: &TestApp, fault: impl std::future::Future<Output = ()>) {
    let product = app.create_product("mug", 1000, 100_000).await;
    let users = app.bulk_users(12).await;
    for user in &users {
        assert_eq!(app.charge(user, 1_000_000).await.status(), StatusCode::OK);
    }
    let stop = AtomicBool::new(false);
    let shoppers = join_all(users.iter().map(|user| {
        let (app, stop) = (&app, &stop);
        async move {
            let (mut paid, mut retried, mut slowest) = (0, 0, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let order = json!({"items": [{"productId": product, "quantity": 1}]});
                let (placed, again, slow) =
                    until_final(app, "/api/orders", user, &format!("order-{}-{paid}", user.id), &order).await;
                let payment = json!({"orderId": placed["orderId"]});
                let (_, then, late) =
                    until_final(app, "/api/payments", user, &format!("pay-{}-{paid}", user.id), &payment).await;
                (paid, retried, slowest) = (paid + 1, retried + again + then, slowest.max(slow).max(late));
            }
            (paid, retried, slowest)
        }
    }));
    let faulted = async {
        fault.await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
    };
    let (shopped, ()) = tokio::join!(shoppers, faulted);
    eprintln!(
        "shopping: {} orders placed and paid, {} answers 503 or 409 retried, slowest answer {:?}",
        shopped.iter().map(|(paid, _, _)| paid).sum::<i64>(),
        shopped.iter().map(|(_, retried, _)| retried).sum::<usize>(),
        shopped.iter().map(|(_, _, slowest)| *slowest).max().unwrap_or_default()
    );
    assert!(
        shopped.iter().any(|(_, retried, slowest)| *retried > 0 || *slowest >= Duration::from_secs(2)),
        "the fault was felt"
    );
    // Each order once, each paid once, whatever the retries met.
    for (user, (paid, _, _)) in users.iter().zip(shopped) {
        let (orders, payments): (i64, i64) = sqlx::query_as(
            "SELECT count(DISTINCT o.id), count(p.id) FROM orders o LEFT JOIN payments p ON p.order_id = o.id
             WHERE o.user_id = $1",
        )
        .bind(user.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
        assert_eq!((orders, payments), (paid, paid), "user {}", user.id);
    }
    let sold: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&app.db).await.unwrap();
    assert_eq!(app.stock(product).await, 100_000 - sold);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_and_payments_ride_out_a_postgres_restart() {
    let postgres = OwnPostgres::start().await;
    let app = spawn_app_on(&postgres, unlimited_charges_with_deadline).await;
    shopping_through(&app, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        postgres.restart().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_and_payments_ride_out_postgres_unreachable_for_ten_seconds() {
    let proxy = PgProxy::start().await;
    let app = spawn_app_behind(&proxy, unlimited_charges_with_deadline).await;
    shopping_through(&app, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        proxy.blackhole(true);
        tokio::time::sleep(Duration::from_secs(10)).await;
        proxy.blackhole(false);
    })
    .await;
}

/// Stock held by the Redis gate and wallets under Redis leases, so that
/// both orders and payments go through Redis.
fn through_redis(config: &mut shop::config::Config, url: String) {
    unlimited_charges_with_deadline(config);
    config.redis_url = url;
    config.stock_strategy = StockStrategyKind::RedisGate;
    config.points_strategy = PointsStrategyKind::RedisLock;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_and_payments_ride_out_redis_restarting_empty() {
    let mut redis = OwnRedis::start().await;
    let url = redis.url();
    let app = spawn_app_with(|config| through_redis(config, url)).await;
    shopping_through(&app, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        redis.restart_empty().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_and_payments_ride_out_redis_answering_after_two_seconds() {
    let redis = RedisProxy::start().await;
    let url = redis.url();
    let app = spawn_app_with(|config| through_redis(config, url)).await;
    shopping_through(&app, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        redis.delay_replies(Duration::from_secs(2));
        tokio::time::sleep(Duration::from_secs(4)).await;
        redis.delay_replies(Duration::ZERO);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coupon_drop_rides_out_postgres_unreachable_for_ten_seconds() {
    let proxy = PgProxy::start().await;
    let app = spawn_app_behind(&proxy, pessimistic_coupons_with_deadline).await;
    let code = app.create_coupon_type("HOLE", 100, json!({})).await;
    let users = app.bulk_users(300).await;
    let healed = std::sync::OnceLock::new();
    let fault = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.blackhole(true);
        tokio::time::sleep(Duration::from_secs(10)).await;
        proxy.blackhole(false);
        healed.set(Instant::now()).unwrap();
    };
    let ((told, slowest), ()) = tokio::join!(coupon_drop(&app, &code, &users), fault);
    assert!(slowest >= REQUEST_TIMEOUT, "requests met the outage: {slowest:?}");
    // Served again within 5 s of the network healing.
    let healed = *healed.get().unwrap();
    let first_after = told.iter().map(|told| told.at).filter(|at| *at > healed).min().expect("answers after healing");
    assert!(first_after - healed < Duration::from_secs(5), "{:?}", first_after - healed);
    assert_drop_is_exact(&app, &code, &users, &told, 100).await;
}
