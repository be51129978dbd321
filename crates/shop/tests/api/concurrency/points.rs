//! Races on one wallet, under every points strategy.

use reqwest::StatusCode;
use shop::config::PointsStrategyKind;

use super::together;
use crate::support::{TestApp, User, spawn_app_with};

async fn charge_together(app: &TestApp, user: &User, count: usize) -> Vec<(StatusCode, Option<String>)> {
    together((0..count).map(|_| app.charge(user, 1000)).collect()).await
}

async fn two_hundred_charges_lose_no_update(strategy: PointsStrategyKind) {
    let app = spawn_app_with(|config| {
        config.points_strategy = strategy;
        config.points_daily_charge_limit = 0;
        config.points_monthly_charge_limit = 0;
    })
    .await;
    let user = app.new_user().await;
    let initial = 5000;
    app.charge(&user, initial).await;

    let outcomes = charge_together(&app, &user, 200).await;
    let successes = outcomes.iter().filter(|(status, _)| *status == StatusCode::OK).count() as i64;
    let failures: Vec<_> = outcomes.iter().filter(|(status, _)| *status != StatusCode::OK).collect();
    for (status, code) in &failures {
        assert_eq!((*status, code.as_deref()), (StatusCode::CONFLICT, Some("CONCURRENCY_CONFLICT")));
    }
    if matches!(
        strategy,
        PointsStrategyKind::Atomic
            | PointsStrategyKind::Pessimistic
            | PointsStrategyKind::Batch
            | PointsStrategyKind::Adaptive
    ) {
        assert!(failures.is_empty(), "{strategy:?} should queue, not fail: {} failures", failures.len());
    }
    assert!(successes > 0);
    eprintln!("{strategy:?}: {successes} of 200 charged, {} CONCURRENCY_CONFLICT", failures.len());
    let (balance, ledger_sum) = app.balance_and_ledger_sum(user.id).await;
    assert_eq!(balance, initial + 1000 * successes, "every success and nothing else is in the balance");
    assert_eq!(ledger_sum, balance);
    // Read in id order, the ledger is a running sum: every row's balance
    // after is the one before it plus its amount.
    let broken_links: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT amount, balance_after,
                                      lag(balance_after, 1, 0::bigint) OVER (ORDER BY id) AS before
                               FROM point_ledger WHERE user_id = $1) AS rows
         WHERE balance_after <> before + amount",
    )
    .bind(user.id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(broken_links, 0, "{strategy:?}");
    app.assert_invariants().await;
}

async fn ten_charges_under_a_daily_limit_of_three_give_three(strategy: PointsStrategyKind) {
    let app = spawn_app_with(|config| config.points_strategy = strategy).await;
    let user = app.new_user().await;
    let outcomes = charge_together(&app, &user, 10).await;
    let successes = outcomes.iter().filter(|(status, _)| *status == StatusCode::OK).count();
    assert_eq!(successes, 3, "{outcomes:?}");
    for (status, code) in outcomes.iter().filter(|(status, _)| *status != StatusCode::OK) {
        assert_eq!((*status, code.as_deref()), (StatusCode::CONFLICT, Some("CHARGE_LIMIT_EXCEEDED")));
    }
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (3000, 3000));
    let counted: i32 = sqlx::query_scalar("SELECT charges_on_day FROM point_wallets WHERE user_id = $1")
        .bind(user.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(counted, 3);
}

/// Under `adaptive`, a wallet charged from many tabs at once goes to the
/// batch while wallets charged once in the same moment are written alone:
/// both routes write side by side, and no charge is lost on either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adaptive_batches_a_hot_wallet_beside_quiet_ones_written_alone() {
    let app = spawn_app_with(|config| {
        config.points_strategy = PointsStrategyKind::Adaptive;
        config.points_daily_charge_limit = 0;
        config.points_monthly_charge_limit = 0;
    })
    .await;
    let hot = app.new_user().await;
    let quiet = app.bulk_users(20).await;
    let mut charges: Vec<_> = (0..100).map(|_| app.charge(&hot, 1000)).collect();
    charges.extend(quiet.iter().map(|user| app.charge(user, 1000)));
    let before = (routed(&app, "alone").await, routed(&app, "together").await);

    let outcomes = together(charges).await;
    assert!(outcomes.iter().all(|(status, _)| *status == StatusCode::OK), "{outcomes:?}");
    assert_eq!(app.balance_and_ledger_sum(hot.id).await, (100_000, 100_000));
    for user in &quiet {
        assert_eq!(app.balance_and_ledger_sum(user.id).await, (1000, 1000));
    }
    let (alone, batched) = (routed(&app, "alone").await - before.0, routed(&app, "together").await - before.1);
    assert!(alone > 0.0 && batched > 0.0, "both routes wrote: {alone} alone, {batched} batched");
    assert_eq!(alone + batched, 120.0);
    app.assert_invariants().await;
}

/// Charges the adaptive strategy has sent by `route` since the process began.
async fn routed(app: &TestApp, route: &str) -> f64 {
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    let route = format!(r#"route="{route}""#);
    metrics
        .lines()
        .filter(|line| line.starts_with("shop_adaptive_writes_total{") && line.contains(r#"rows="wallets""#))
        .filter(|line| line.contains(&route))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

macro_rules! for_each_points_strategy {
    ($($module:ident => $strategy:ident),* $(,)?) => {
        $(
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn two_hundred_concurrent_charges_lose_no_update() {
                two_hundred_charges_lose_no_update(PointsStrategyKind::$strategy).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn ten_concurrent_charges_under_a_daily_limit_of_three_give_exactly_three() {
                ten_charges_under_a_daily_limit_of_three_give_three(PointsStrategyKind::$strategy).await;
            }
        }
        )*

        // A strategy config offers but this list lacks fails to compile.
        const _: fn(PointsStrategyKind) = |kind| match kind {
            $(PointsStrategyKind::$strategy => {})*
            #[cfg(feature = "naive")]
            PointsStrategyKind::Naive => {}
        };
    };
}

for_each_points_strategy! {
    optimistic => Optimistic,
    pessimistic => Pessimistic,
    atomic => Atomic,
    redis_lock => RedisLock,
    batch => Batch,
    adaptive => Adaptive,
}
