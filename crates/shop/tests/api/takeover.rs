//! An `Idempotency-Key` whose instance looks gone is taken over by the
//! client's retry elsewhere; these are the edges of "looks gone": a live
//! instance keeps its keys however busy its pool, an instance cut off
//! mid-transaction holds no one up for long, and a request that finds its
//! key taken over answers with the retry's answer.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use shop::config::PointsStrategyKind;

use crate::support::pg_proxy::{PgProxy, Statement};
use crate::support::{PG, TestApp, database_name, spawn_app_behind, spawn_app_with};

/// Another instance on `app`'s database, reaching it directly.
async fn direct_instance(app: &TestApp) -> TestApp {
    let direct = format!("{PG}/{}", database_name(&app.config.database.database_url));
    app.another_instance_with(|config| config.database.database_url = direct).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_instance_keeps_its_keys_while_its_pool_is_busy() {
    let one = spawn_app_with(|config| config.database.database_max_connections = 2).await;
    let two = one.another_instance().await;
    let user = one.new_user().await;
    let path = format!("/api/users/{}/points", user.id);
    let body = json!({"amount": 1000});
    // The wallet is locked 6 s: both of the first instance's connections
    // wait on it, and nothing else there gets one.
    let mut holder = one.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM point_wallets WHERE user_id = $1 FOR UPDATE")
        .bind(user.id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let originals: Vec<_> =
        ["busy-1", "busy-2"].iter().map(|key| one.post_with_key(&path, &user.token, key, &body).send()).collect();
    let originals = tokio::spawn(futures::future::join_all(originals));
    tokio::time::sleep(Duration::from_millis(4500)).await;
    for key in ["busy-1", "busy-2"] {
        let retried = two.post_with_key(&path, &user.token, key, &body).send().await.unwrap();
        assert_eq!(retried.status(), StatusCode::CONFLICT, "{key}: the first instance is alive");
        assert_eq!(retried.json::<Value>().await.unwrap()["code"], "IDEMPOTENCY_KEY_IN_USE");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    holder.rollback().await.unwrap();
    for original in originals.await.unwrap() {
        assert_eq!(original.unwrap().status(), StatusCode::OK, "the originals went on");
    }
    assert_eq!(one.balance_and_ledger_sum(user.id).await, (2000, 2000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_its_instance_left_idle_holds_others_up_for_seconds_only() {
    let proxy = PgProxy::start().await;
    let cut_off = spawn_app_behind(&proxy, |config| config.points_strategy = PointsStrategyKind::Pessimistic).await;
    let other = direct_instance(&cut_off).await;
    let user = cut_off.new_user().await;
    let path = format!("/api/users/{}/points", user.id);
    // The wallet's lock is taken, and its reply held back: to PostgreSQL,
    // the first instance sits idle in its transaction, holding the lock.
    proxy.delay_reply_to(Statement::Containing("FOR UPDATE".into()), Duration::from_secs(30), 1);
    let stuck = cut_off.client.post(cut_off.url(&path)).bearer_auth(&user.token).json(&json!({"amount": 1000})).send();
    let stuck = tokio::spawn(stuck);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The other instance waits for the lock (409 when its wait runs out,
    // and the client tries again) until PostgreSQL ends the idle transaction.
    let started = Instant::now();
    loop {
        let charged = other.post(&path, Some(&user.token), json!({"amount": 2000})).await;
        if charged.status() == StatusCode::OK {
            break;
        }
        assert_eq!(charged.status(), StatusCode::CONFLICT);
        assert!(started.elapsed() < Duration::from_secs(8), "held up {:?}", started.elapsed());
    }
    stuck.abort();
    assert_eq!(other.balance_and_ledger_sum(user.id).await, (2000, 2000), "the idle transaction left nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_whose_key_was_taken_over_answers_with_the_retrys_answer() {
    let proxy = PgProxy::start().await;
    let frozen = spawn_app_behind(&proxy, |_| {}).await;
    let other = direct_instance(&frozen).await;
    let user = frozen.new_user().await;
    let path = format!("/api/users/{}/points", user.id);
    let body = json!({"amount": 1000});
    // The key is claimed, and the claim's reply held back while the first
    // instance is cut off from PostgreSQL long enough to look gone.
    proxy.delay_reply_to(Statement::Containing("INSERT INTO idempotency_keys".into()), Duration::from_secs(1), 1);
    let original = tokio::spawn(frozen.post_with_key(&path, &user.token, "frozen", &body).send());
    let claimed = async {
        loop {
            let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys WHERE key = 'frozen'")
                .fetch_one(&frozen.db)
                .await
                .unwrap();
            if claims == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), claimed).await.expect("the key is claimed");
    proxy.blackhole(true);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let retried = other.post_with_key(&path, &user.token, "frozen", &body).send().await.unwrap();
    assert_eq!(retried.status(), StatusCode::OK, "the retry took the key over");
    let answer: Value = retried.json().await.unwrap();
    proxy.blackhole(false);
    let original = original.await.unwrap().unwrap();
    assert_eq!(original.status(), StatusCode::OK, "the original answers as its retry did");
    assert_eq!(original.headers()["idempotent-replayed"], "true");
    assert_eq!(original.json::<Value>().await.unwrap(), answer);
    assert_eq!(other.balance_and_ledger_sum(user.id).await, (1000, 1000), "charged once");
}
