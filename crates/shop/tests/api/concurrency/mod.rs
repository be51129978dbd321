//! Races released together by a barrier; the invariants are then read from
//! the database.

mod coupons;
mod orders;
mod points;

use std::sync::Arc;

use futures::future::join_all;
use reqwest::{Response, StatusCode};
use serde_json::Value;
use tokio::sync::Barrier;

/// Runs every request future at once; returns each answer's status and code.
pub async fn together<F>(requests: Vec<F>) -> Vec<(StatusCode, Option<String>)>
where
    F: Future<Output = Response>,
{
    let answers = together_with_bodies(requests).await;
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
