//! Requests held mid-operation: shutdown, idempotency keys in use, and an
//! optimistic write that loses its race.

use reqwest::StatusCode;
use serde_json::Value;
use shop::config::PointsStrategyKind;

use crate::support::{assert_problem, spawn_app_with};
use crate::{Hold, charge_in_background};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_stops_taking_requests_and_finishes_those_in_flight() {
    let scenario = fail::FailScenario::setup();
    let mut app = spawn_app_with(|config| config.points_strategy = PointsStrategyKind::Pessimistic).await;
    let user = app.new_user().await;
    let mut hold = Hold::first_at("points::charge::read");
    let in_flight = charge_in_background(&app, &user, 3000, None);
    hold.reached().await;

    app.begin_shutdown();
    // New connections are refused once the drain (a tenth of the grace,
    // at most 2 s) is over and the listener has closed.
    let fresh = crate::support::http_client().pool_max_idle_per_host(0).build().unwrap();
    let mut refused = false;
    for _ in 0..200 {
        if fresh.get(app.url("/health/live")).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(refused, "the server stops taking connections");

    hold.release();
    let finished = in_flight.await.unwrap();
    assert_eq!(finished.status(), StatusCode::OK);
    app.stopped().await;
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (3000, 3000));
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_is_in_use_while_its_first_request_runs() {
    let scenario = fail::FailScenario::setup();
    let app = spawn_app_with(|config| config.points_strategy = PointsStrategyKind::Pessimistic).await;
    let user = app.new_user().await;
    let mut hold = Hold::first_at("points::charge::read");
    let first = charge_in_background(&app, &user, 4000, Some("k"));
    hold.reached().await;

    let meanwhile = charge_in_background(&app, &user, 4000, Some("k")).await.unwrap();
    assert_problem(meanwhile, StatusCode::CONFLICT, "IDEMPOTENCY_KEY_IN_USE").await;
    hold.release();
    let first = first.await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();

    let replay = charge_in_background(&app, &user, 4000, Some("k")).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), first);
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (4000, 4000));
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_optimistic_write_that_lost_its_race_retries_from_a_fresh_read() {
    let scenario = fail::FailScenario::setup();
    let app = spawn_app_with(|config| config.points_strategy = PointsStrategyKind::Optimistic).await;
    let user = app.new_user().await;
    let mut hold = Hold::first_at("points::charge::read");
    let first = charge_in_background(&app, &user, 1000, None);
    hold.reached().await;
    // The held request read balance 0; this one commits 5,000 meanwhile.
    assert_eq!(app.charge(&user, 5000).await.status(), StatusCode::OK);
    hold.release();

    let first = first.await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.json::<Value>().await.unwrap()["balance"], 6000, "the retry saw the other charge");
    assert_eq!(app.balance_and_ledger_sum(user.id).await, (6000, 6000));
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(metrics.contains("shop_optimistic_retries_total"), "{metrics}");
    scenario.teardown();
}
