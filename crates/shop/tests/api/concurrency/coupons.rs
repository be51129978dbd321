//! First-come coupons under every strategy: never over-issued, never two of a
//! type to one user, and under `redis-gate` not even when Redis loses its keys.

use reqwest::StatusCode;
use serde_json::json;
use shop::config::CouponStrategyKind;

use std::time::Duration;

use super::{after_retries, codes, count, together, together_with_bodies};
use crate::support::{TestApp, User, spawn_app_with};

async fn app_with(strategy: CouponStrategyKind) -> TestApp {
    spawn_app_with(|config| {
        config.coupon_strategy = strategy;
        // A rush queues hundreds of requests on one lease under `redis-lock`:
        // on a busy machine the last waits longer than the default 5 s,
        // which these tests of the count are not about.
        config.locks.redis_lock_wait_ms = 30_000;
    })
    .await
}

async fn issued_rows(app: &TestApp, code: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(DISTINCT c.user_id) FROM coupons c
         JOIN coupon_types t ON t.id = c.coupon_type_id WHERE t.code = $1",
    )
    .bind(code)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

async fn four_hundred_users_race_for_a_hundred(strategy: CouponStrategyKind) {
    let app = app_with(strategy).await;
    let code = app.create_coupon_type("RUSH", 100, json!({})).await;
    // Four times the coupons: under `pessimistic` every request until the
    // hundredth coupon queues on the campaign's row, and on a loaded 2-core
    // machine a thousand took over a minute.
    let users = app.bulk_users(400).await;
    let ask = |i: usize| app.post_keyed("/api/coupons/issue", &users[i].token, "rush", json!({"couponType": code}));
    let answers = together_with_bodies((0..users.len()).map(ask).collect()).await;
    let outcomes = codes(after_retries(answers, ask).await);
    assert_eq!(count(&outcomes, StatusCode::CREATED), 100, "{strategy:?}");
    for (status, code) in outcomes.iter().filter(|(status, _)| *status != StatusCode::CREATED) {
        assert_eq!((*status, code.as_deref()), (StatusCode::CONFLICT, Some("COUPON_SOLD_OUT")));
    }
    assert_eq!(issued_rows(&app, &code).await, (100, 100));
    app.assert_invariants().await;
}

async fn one_user_firing_fifty_gets_one(strategy: CouponStrategyKind) {
    let app = app_with(strategy).await;
    let code = app.create_coupon_type("ONE_EACH", 10, json!({})).await;
    let user = app.new_user().await;
    let outcomes = together((0..50).map(|_| app.issue_coupon(&user, &code)).collect()).await;
    assert_eq!(count(&outcomes, StatusCode::CREATED), 1, "{strategy:?}");
    for (status, code) in outcomes.iter().filter(|(status, _)| *status != StatusCode::CREATED) {
        assert_eq!((*status, code.as_deref()), (StatusCode::CONFLICT, Some("COUPON_ALREADY_ISSUED")));
    }
    assert_eq!(issued_rows(&app, &code).await, (1, 1));
    app.assert_invariants().await;
}

/// A rush where every third user asks synchronously and the others
/// asynchronously: the two paths together issue exactly the total, and
/// every accepted request becomes final. A request told to come back (its
/// campaign's grants still pending, or the pool busy past its wait on a
/// loaded machine) is asked again with its Idempotency-Key after the rush
/// and must then get a final answer.
pub async fn a_mixed_rush_issues_exactly_the_total(strategy: CouponStrategyKind) {
    let app = app_with(strategy).await;
    let code = app.create_coupon_type("MIXED", 100, json!({})).await;
    let users = app.bulk_users(400).await;
    let ask = |i: usize| {
        let path = if i.is_multiple_of(3) { "/api/coupons/issue" } else { "/api/coupons/issue-async" };
        app.post_keyed(path, &users[i].token, "rush", json!({"couponType": code}))
    };
    let answers = together_with_bodies((0..users.len()).map(ask).collect()).await;
    let answers = after_retries(answers, ask).await;
    let mut accepted = Vec::new();
    let mut issued_at_once = 0;
    for ((status, body), user) in answers.iter().zip(&users) {
        match (*status, body["code"].as_str()) {
            (StatusCode::ACCEPTED, _) => {
                assert_eq!(body["status"], "PENDING");
                accepted.push((body["requestId"].as_str().unwrap().to_owned(), user.token.clone()));
            }
            (StatusCode::CREATED, _) => issued_at_once += 1,
            answer => assert_eq!(answer, (StatusCode::CONFLICT, Some("COUPON_SOLD_OUT"))),
        }
    }
    let views = app.await_issue_requests(&accepted, Duration::from_secs(15)).await;
    let mut issued_later = 0;
    for view in &views {
        match view["status"].as_str() {
            Some("ISSUED") => issued_later += 1,
            Some("REJECTED") => assert_eq!(view["reason"], "SOLD_OUT", "{view}"),
            _ => panic!("{strategy:?}: a request still not final after 15 s: {view}"),
        }
    }
    assert_eq!(issued_at_once + issued_later, 100, "{strategy:?}: {issued_at_once} at once, {issued_later} later");
    assert_eq!(issued_rows(&app, &code).await, (100, 100));
    app.assert_invariants().await;
}

macro_rules! for_each_coupon_strategy {
    ($($module:ident => $strategy:ident),* $(,)?) => {
        $(
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn four_hundred_users_racing_for_a_hundred_get_exactly_a_hundred() {
                four_hundred_users_race_for_a_hundred(CouponStrategyKind::$strategy).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn one_user_firing_fifty_requests_gets_exactly_one() {
                one_user_firing_fifty_gets_one(CouponStrategyKind::$strategy).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sync_and_async_requests_together_issue_exactly_the_total() {
                a_mixed_rush_issues_exactly_the_total(CouponStrategyKind::$strategy).await;
            }
        }
        )*

        // A strategy config offers but this list lacks fails to compile.
        const _: fn(CouponStrategyKind) = |kind| match kind {
            $(CouponStrategyKind::$strategy => {})*
            #[cfg(feature = "naive")]
            CouponStrategyKind::Naive => {}
        };
    };
}

for_each_coupon_strategy! {
    pessimistic => Pessimistic,
    atomic => Atomic,
    redis_lock => RedisLock,
    redis_gate => RedisGate,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gate_never_over_issues_when_redis_loses_its_keys_mid_rush() {
    let app = app_with(CouponStrategyKind::RedisGate).await;
    let code = app.create_coupon_type("FLUSHED", 100, json!({})).await;
    let users = app.bulk_users(1000).await;
    let rush = together(users.iter().map(|user| app.issue_coupon(user, &code)).collect());
    let loss = async {
        // Once the rush has written some coupons, Redis forgets everything.
        loop {
            let (issued, _) = issued_rows(&app, &code).await;
            if issued >= 20 {
                app.lose_redis_keys().await;
                return issued;
            }
            tokio::task::yield_now().await;
        }
    };
    let (outcomes, issued_at_loss) = tokio::join!(rush, loss);
    assert!(issued_at_loss < 400, "the keys were lost mid-rush");
    assert_eq!(count(&outcomes, StatusCode::CREATED), 100);
    assert_eq!(issued_rows(&app, &code).await, (100, 100));
    app.assert_invariants().await;
}

/// Redis forgets everything mid-rush — the queue, its consumer group, the
/// gate — while asynchronous requests wait: those still pending in
/// PostgreSQL are queued again and finish, and nothing is issued twice.
async fn queued_requests_survive_redis_losing_its_keys(strategy: CouponStrategyKind) {
    let app = spawn_app_with(|config| {
        config.coupon_strategy = strategy;
        config.locks.async_issue_requeue_after_ms = 1_000;
    })
    .await;
    let code = app.create_coupon_type("LOST_QUEUE", 400, json!({})).await;
    let users = app.bulk_users(800).await;
    let rush = together_with_bodies(users.iter().map(|user| app.issue_coupon_async(user, &code)).collect());
    let loss = async {
        // Once requests are accepted and waiting, Redis forgets everything.
        loop {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM coupon_issue_requests WHERE status = 'PENDING'")
                    .fetch_one(&app.db)
                    .await
                    .unwrap();
            if pending >= 5 {
                app.lose_redis_keys().await;
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    let (answers, ()) = tokio::join!(rush, loss);
    let accepted: Vec<(String, String)> = answers
        .iter()
        .zip(&users)
        .filter(|((status, _), _)| *status == StatusCode::ACCEPTED)
        .map(|((_, body), user)| (body["requestId"].as_str().unwrap().to_owned(), user.token.clone()))
        .collect();
    let views = app.await_issue_requests(&accepted, Duration::from_secs(20)).await;
    let issued = views.iter().filter(|view| view["status"] == "ISSUED").count();
    assert!(
        views.iter().all(|view| view["status"] == "ISSUED" || view["reason"] == "SOLD_OUT"),
        "{strategy:?}: all final"
    );
    assert_eq!(issued, 400, "{strategy:?}");
    assert_eq!(issued_rows(&app, &code).await, (400, 400));
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_requests_survive_redis_losing_its_keys_under_the_gate() {
    queued_requests_survive_redis_losing_its_keys(CouponStrategyKind::RedisGate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_requests_survive_redis_losing_its_keys_under_atomic() {
    queued_requests_survive_redis_losing_its_keys(CouponStrategyKind::Atomic).await;
}

/// Gives `user` a coupon of `code` written to PostgreSQL alone, as one
/// issued while Redis was away: the gate does not know of it.
async fn coupon_behind_the_gates_back(app: &TestApp, code: &str, user: &User) {
    sqlx::query(
        "WITH counted AS (UPDATE coupon_types SET issued_quantity = issued_quantity + 1 WHERE code = $2 RETURNING id)
         INSERT INTO coupons (coupon_type_id, user_id, expires_at) SELECT id, $1, now() + interval '1 day' FROM counted",
    )
    .bind(user.id)
    .bind(code)
    .execute(&app.db)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_failed_write_gives_the_unit_back() {
    let app = app_with(CouponStrategyKind::RedisGate).await;
    let code = app.create_coupon_type("GIVE_BACK", 3, json!({})).await;
    let (early, holder, late) = (app.new_user().await, app.new_user().await, app.new_user().await);
    assert_eq!(app.issue_coupon(&early, &code).await.status(), StatusCode::CREATED);
    // The holder got a coupon the gate does not know of (written while Redis
    // was away), so the gate will hand them a unit the database then refuses.
    coupon_behind_the_gates_back(&app, &code, &holder).await;
    let type_id: i64 =
        sqlx::query_scalar("SELECT id FROM coupon_types WHERE code = $1").bind(&code).fetch_one(&app.db).await.unwrap();
    let left = app.coupon_gate_key(type_id, "state");
    assert_eq!(app.redis_hash_field(&left, "left").await, Some(2));

    let refused = app.issue_coupon(&holder, &code).await;
    crate::support::assert_problem(refused, StatusCode::CONFLICT, "COUPON_ALREADY_ISSUED").await;
    assert_eq!(app.redis_hash_field(&left, "left").await, Some(2), "the unit came back");
    assert_eq!(app.issue_coupon(&late, &code).await.status(), StatusCode::CREATED);
    assert_eq!(app.redis_hash_field(&left, "left").await, Some(1));
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grants_the_database_cannot_cover_are_each_answered_what_it_has() {
    let app = app_with(CouponStrategyKind::RedisGate).await;
    let code = app.create_coupon_type("SHORT", 10, json!({})).await;
    assert_eq!(app.issue_coupon(&app.new_user().await, &code).await.status(), StatusCode::CREATED);
    // Three coupons the gate does not know of (as if taken while Redis was
    // away): the gate will grant nine units where the database has six.
    let holders = app.bulk_users(3).await;
    for holder in &holders {
        coupon_behind_the_gates_back(&app, &code, holder).await;
    }
    let mut rush = app.bulk_users(9).await;
    rush.push(holders[0].clone());
    let outcomes = together(rush.iter().map(|user| app.issue_coupon(user, &code)).collect()).await;

    assert_eq!(count(&outcomes, StatusCode::CREATED), 6, "{outcomes:?}");
    for (status, code) in outcomes.iter().filter(|(status, _)| *status != StatusCode::CREATED) {
        assert_eq!(*status, StatusCode::CONFLICT, "{outcomes:?}");
        assert!(matches!(code.as_deref(), Some("COUPON_SOLD_OUT" | "COUPON_ALREADY_ISSUED")), "{outcomes:?}");
    }
    let holders_answer = &outcomes.last().unwrap().1;
    assert!(matches!(holders_answer.as_deref(), Some("COUPON_ALREADY_ISSUED" | "COUPON_SOLD_OUT")));
    assert_eq!(issued_rows(&app, &code).await, (10, 10));
    // Every grant was settled by its request, none left to the reconciler.
    let type_id: i64 =
        sqlx::query_scalar("SELECT id FROM coupon_types WHERE code = $1").bind(&code).fetch_one(&app.db).await.unwrap();
    assert_eq!(app.redis_zcard(&app.coupon_gate_key(type_id, "pending")).await, 0);
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_sent_again_after_its_reply_was_lost_takes_one_unit_and_answers_it() {
    let app = app_with(CouponStrategyKind::RedisGate).await;
    let code = app.create_coupon_type("SENT_TWICE", 3, json!({})).await;
    let (early, user) = (app.new_user().await, app.new_user().await);
    // Loads the gate.
    assert_eq!(app.issue_coupon(&early, &code).await.status(), StatusCode::CREATED);
    let type_id: i64 =
        sqlx::query_scalar("SELECT id FROM coupon_types WHERE code = $1").bind(&code).fetch_one(&app.db).await.unwrap();
    let keys = ["state", "holders", "pending"].map(|name| app.coupon_gate_key(type_id, name));
    let grant_lua = redis::Script::new(shop::GRANT_LUA);
    let grant = async |token: &str| -> String {
        let mut script = grant_lua.key(&keys[0]);
        script.key(&keys[1]).key(&keys[2]).arg(user.id).arg(token);
        script.invoke_async(&mut app.redis().await).await.unwrap()
    };
    // The cluster client re-sends a script whose reply it lost: the same
    // attempt is answered its own grant, another attempt waits for it.
    let first = grant("attempt-1").await;
    assert!(first.starts_with("GRANTED:"), "{first}");
    assert_eq!(grant("attempt-1").await, first);
    assert_eq!(grant("attempt-2").await, "HOLDER_PENDING");
    assert_eq!(app.redis_hash_field(&keys[0], "left").await, Some(1), "one unit taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_gate_is_rebuilt_once_across_instances() {
    let first = app_with(CouponStrategyKind::RedisGate).await;
    let second = first.another_instance().await;
    let code = first.create_coupon_type("REBUILT", 50, json!({})).await;
    let users = first.bulk_users(40).await;
    for user in &users[..10] {
        assert_eq!(first.issue_coupon(user, &code).await.status(), StatusCode::CREATED);
    }
    let loads_before = first.metric("shop_coupon_gate_loads_total").await;
    first.lose_redis_keys().await;
    let outcomes = together(
        users[10..]
            .iter()
            .enumerate()
            .map(
                |(i, user)| {
                    if i % 2 == 0 { first.issue_coupon(user, &code) } else { second.issue_coupon(user, &code) }
                },
            )
            .collect(),
    )
    .await;
    assert_eq!(count(&outcomes, StatusCode::CREATED), 30);
    // Both instances share this process's metrics recorder.
    assert_eq!(first.metric("shop_coupon_gate_loads_total").await - loads_before, 1, "loaded once");
    // The rebuilt gate remembers the earlier holders.
    let again = first.issue_coupon(&users[0], &code).await;
    crate::support::assert_problem(again, StatusCode::CONFLICT, "COUPON_ALREADY_ISSUED").await;
    first.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_campaign_sold_out_for_good_is_answered_without_the_gate_holders_first() {
    let app = app_with(CouponStrategyKind::RedisGate).await;
    let code = app.create_coupon_type("GONE", 3, json!({})).await;
    let open = app.create_coupon_type("STILL_OPEN", 10, json!({})).await;
    let users = app.bulk_users(7).await;
    let (holders, others) = users.split_at(3);
    for holder in &holders[..2] {
        assert_eq!(app.issue_coupon(holder, &code).await.status(), StatusCode::CREATED);
    }
    // The last coupon was written while Redis was away: the gate grants its
    // unit again, the database refuses it, and the gate closes.
    coupon_behind_the_gates_back(&app, &code, &holders[2]).await;
    let refused = app.issue_coupon(&others[0], &code).await;
    crate::support::assert_problem(refused, StatusCode::CONFLICT, "COUPON_SOLD_OUT").await;
    // The gate's `SOLD_OUT` has the instance read the holders.
    crate::support::eventually("the sold-out campaign remembered", async || {
        let before = app.metric("shop_coupon_gate_remembered_total").await;
        let answer = app.issue_coupon(&others[1], &code).await;
        assert_eq!(answer.status(), StatusCode::CONFLICT);
        app.metric("shop_coupon_gate_remembered_total").await > before
    })
    .await;

    let (gate_answers, remembered) =
        (app.metric("shop_coupon_gate_total").await, app.metric("shop_coupon_gate_remembered_total").await);
    // Holders first, the one the gate never saw too; synchronous or not.
    for holder in holders {
        let again = app.issue_coupon(holder, &code).await;
        crate::support::assert_problem(again, StatusCode::CONFLICT, "COUPON_ALREADY_ISSUED").await;
    }
    for other in others {
        let refused = app.issue_coupon(other, &code).await;
        crate::support::assert_problem(refused, StatusCode::CONFLICT, "COUPON_SOLD_OUT").await;
    }
    let queued = app.issue_coupon_async(&others[3], &code).await;
    crate::support::assert_problem(queued, StatusCode::CONFLICT, "COUPON_SOLD_OUT").await;
    let queued = app.issue_coupon_async(&holders[0], &code).await;
    crate::support::assert_problem(queued, StatusCode::CONFLICT, "COUPON_ALREADY_ISSUED").await;
    assert_eq!(app.metric("shop_coupon_gate_total").await, gate_answers, "Redis was not asked");
    assert_eq!(app.metric("shop_coupon_gate_remembered_total").await, remembered + 9);

    // Another campaign of the instance is the gate's still.
    for user in &users[..2] {
        assert_eq!(app.issue_coupon(user, &open).await.status(), StatusCode::CREATED);
    }
    assert_eq!(issued_rows(&app, &code).await, (3, 3));
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gate_that_says_sold_out_while_the_database_has_units_left_is_not_remembered() {
    let app = app_with(CouponStrategyKind::RedisGate).await;
    let code = app.create_coupon_type("NOT_GONE", 3, json!({})).await;
    let users = app.bulk_users(3).await;
    assert_eq!(app.issue_coupon(&users[0], &code).await.status(), StatusCode::CREATED);
    let type_id: i64 =
        sqlx::query_scalar("SELECT id FROM coupon_types WHERE code = $1").bind(&code).fetch_one(&app.db).await.unwrap();
    let state = app.coupon_gate_key(type_id, "state");
    let set_left = async |left: i64| {
        let _: i64 =
            redis::cmd("HSET").arg(&state).arg("left").arg(left).query_async(&mut app.redis().await).await.unwrap();
    };
    // A gate wrong the other way round, which the gate never is: sold out
    // in Redis while PostgreSQL has two units left.
    set_left(0).await;
    let refused = app.issue_coupon(&users[1], &code).await;
    crate::support::assert_problem(refused, StatusCode::CONFLICT, "COUPON_SOLD_OUT").await;
    // The read finds units left, and nothing is remembered.
    crate::support::eventually("the holders read", async || {
        app.metric("shop_coupon_gate_holders_reads_total").await > 0
    })
    .await;
    assert!(app.metric("shop_coupon_gate_holders_reads_total{outcome=\"units_left\"}").await > 0);
    let refused = app.issue_coupon(&users[1], &code).await;
    crate::support::assert_problem(refused, StatusCode::CONFLICT, "COUPON_SOLD_OUT").await;
    assert_eq!(app.metric("shop_coupon_gate_remembered_total").await, 0);
    set_left(2).await;
    assert_eq!(app.issue_coupon(&users[2], &code).await.status(), StatusCode::CREATED);
    assert_eq!(issued_rows(&app, &code).await, (2, 2));
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconciler_that_runs_every_few_milliseconds_never_makes_the_gate_answer_a_conflict() {
    // Grants are reconciled after 40 ms, while their writes may still run:
    // the reconciler gives units back under live writers, and the database
    // has the last word.
    let app = spawn_app_with(|config| {
        config.coupon_strategy = CouponStrategyKind::RedisGate;
        config.locks.gate_reconcile_after_ms = 40;
    })
    .await;
    let code = app.create_coupon_type("HURRIED", 100, json!({})).await;
    let users = app.bulk_users(600).await;
    let outcomes = together(users.iter().map(|user| app.issue_coupon(user, &code)).collect()).await;
    assert_eq!(count(&outcomes, StatusCode::CREATED), 100);
    for (status, code) in outcomes.iter().filter(|(status, _)| *status != StatusCode::CREATED) {
        assert_eq!((*status, code.as_deref()), (StatusCode::CONFLICT, Some("COUPON_SOLD_OUT")));
    }
    assert_eq!(issued_rows(&app, &code).await, (100, 100));
    app.assert_invariants().await;
}
