//! Races released together by a barrier; the invariants are then read from
//! the database.

mod coupons;
mod orders;
mod points;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::{Response, StatusCode};
use serde_json::Value;
use tokio::sync::Barrier;

/// Runs every request future at once; returns each answer's status and code.
pub async fn together<F>(requests: Vec<F>) -> Vec<(StatusCode, Option<String>)>
where
    F: Future<Output = Response>,
{
    codes(together_with_bodies(requests).await)
}

/// The answers of a rush once each request told to come back — 503, retry
/// later (a pool or a lock queue busy past the request's deadline on a
/// loaded machine), or 409 `IDEMPOTENCY_KEY_IN_USE` while the first attempt
/// still runs — was asked again by `ask(i)`, as its client would, until its
/// answer was final. A request whose retry could act twice must carry an
/// Idempotency-Key, so that the retry replays what the first attempt did.
pub async fn after_retries<F>(answers: Vec<(StatusCode, Value)>, ask: impl Fn(usize) -> F) -> Vec<(StatusCode, Value)>
where
    F: Future<Output = Response>,
{
    let come_back = |(status, body): &(StatusCode, Value)| {
        matches!(
            (*status, body["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("SERVICE_UNAVAILABLE"))
                | (StatusCode::CONFLICT, Some("IDEMPOTENCY_KEY_IN_USE"))
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answers = answers;
    for (i, answer) in answers.iter_mut().enumerate() {
        while come_back(answer) {
            assert!(Instant::now() < deadline, "request {i} still told to come back after a minute: {answer:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            let response = ask(i).await;
            *answer = (response.status(), response.json().await.unwrap_or_default());
        }
    }
    answers
}

/// Each answer's status and problem code.
pub fn codes(answers: Vec<(StatusCode, Value)>) -> Vec<(StatusCode, Option<String>)> {
    answers.into_iter().map(|(status, body)| (status, body["code"].as_str().map(str::to_owned))).collect()
}

/// Runs every request future at once; returns each answer's status and body.
pub async fn together_with_bodies<F>(requests: Vec<F>) -> Vec<(StatusCode, Value)>
where
    F: Future<Output = Response>,
{
    let gate = Arc::new(Barrier::new(requests.len()));
    let released = requests.into_iter().map(|request| {
        let gate = gate.clone();
        async move {
            gate.wait().await;
            let response = request.await;
            let status = response.status();
            (status, response.json().await.unwrap_or(Value::Null))
        }
    });
    join_all(released).await
}

pub fn count(outcomes: &[(StatusCode, Option<String>)], status: StatusCode) -> usize {
    outcomes.iter().filter(|(s, _)| *s == status).count()
}
